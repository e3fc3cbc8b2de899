"""Activate and Deactivate through a real gRPC client against the in-process Marketo sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from tests.harness import (
    ENDPOINT,
    STANDARD_MAPPINGS,
    Service,
    running_service,
    sandbox_token,
    spec,
    violations,
)


async def destination(service: Service, **changes: object) -> str:
    answer = await service.stub.Configure(pb.ConfigureRequest(spec=spec(**changes)))
    return answer.destination.id


async def activate_error(service: Service, request: pb.ActivateRequest) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Activate(request)
    return caught.value


def audience(audience_id: str, **changes: object) -> pb.Audience:
    values: dict[str, object] = {"id": audience_id, "name": f"CDP {audience_id}"}
    values.update(changes)
    return pb.Audience(**values)  # type: ignore[arg-type]


async def activated_with_two_audiences(service: Service) -> tuple[str, pb.ActivateResponse]:
    """A new destination with audiences a1 and a2 activated: its id and the Activate answer."""
    destination_id = await destination(service)
    answer = await service.stub.Activate(
        pb.ActivateRequest(
            destination_id=destination_id,
            audiences=[audience("a1"), audience("a2")],
            mappings=STANDARD_MAPPINGS,
        )
    )
    return destination_id, answer


async def test_activation_creates_one_list_per_audience_in_the_folder(service: Service) -> None:
    destination_id, answer = await activated_with_two_audiences(service)
    assert [a.list_action for a in answer.audiences] == [pb.LIST_ACTION_CREATED] * 2
    lists = await service.lists()
    assert {a.marketo_list_id for a in answer.audiences} == set(lists)
    dump = await service.control("GET", "lists")
    names = {item["id"]: item["name"] for item in dump["lists"]}
    assert names[answer.audiences[0].marketo_list_id] == "CDP a1"

    again = await service.stub.Activate(
        pb.ActivateRequest(
            destination_id=destination_id, audiences=[audience("a1")], mappings=STANDARD_MAPPINGS
        )
    )
    assert again.audiences[0].list_action == pb.LIST_ACTION_UNCHANGED
    assert again.audiences[0].marketo_list_id == answer.audiences[0].marketo_list_id
    assert len(await service.lists()) == 2

    fetched = (
        await service.stub.GetDestination(pb.GetDestinationRequest(destination_id=destination_id))
    ).destination
    assert {a.audience_id for a in fetched.audiences} == {"a1", "a2"}
    assert [m.target for m in fetched.mappings] == [m.target for m in STANDARD_MAPPINGS]
    (listed,) = (await service.stub.ListDestinations(pb.ListDestinationsRequest())).destinations
    assert listed == fetched


async def test_a_listed_destination_shows_only_its_active_audiences(service: Service) -> None:
    destination_id, _ = await activated_with_two_audiences(service)
    await destination(service, name="Other")
    await service.stub.Deactivate(
        pb.DeactivateRequest(destination_id=destination_id, audience_ids=["a1"])
    )
    listed = (await service.stub.ListDestinations(pb.ListDestinationsRequest())).destinations
    assert [[a.audience_id for a in d.audiences] for d in listed] == [["a2"], []]


async def test_a_taken_list_name_is_already_exists_unless_linked(service: Service) -> None:
    destination_id = await destination(service)
    first = await service.stub.Activate(
        pb.ActivateRequest(
            destination_id=destination_id, audiences=[audience("a1")], mappings=STANDARD_MAPPINGS
        )
    )
    other = await destination(service, name="Other")
    error = await activate_error(
        service,
        pb.ActivateRequest(
            destination_id=other, audiences=[audience("a1")], mappings=STANDARD_MAPPINGS
        ),
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "link_existing_list" in (error.details() or "")
    linked = await service.stub.Activate(
        pb.ActivateRequest(
            destination_id=other,
            audiences=[audience("a1", link_existing_list=True)],
            mappings=STANDARD_MAPPINGS,
        )
    )
    assert linked.audiences[0].list_action == pb.LIST_ACTION_LINKED
    assert linked.audiences[0].marketo_list_id == first.audiences[0].marketo_list_id


async def test_an_existing_list_id_is_linked_and_an_unknown_one_is_not_found(
    service: Service,
) -> None:
    destination_id = await destination(service)
    first = await service.stub.Activate(
        pb.ActivateRequest(
            destination_id=destination_id, audiences=[audience("a1")], mappings=STANDARD_MAPPINGS
        )
    )
    list_id = first.audiences[0].marketo_list_id
    linked = await service.stub.Activate(
        pb.ActivateRequest(
            destination_id=destination_id,
            audiences=[audience("a2", name="", marketo_list_id=list_id)],
            mappings=STANDARD_MAPPINGS,
        )
    )
    assert linked.audiences[0].list_action == pb.LIST_ACTION_LINKED
    error = await activate_error(
        service,
        pb.ActivateRequest(
            destination_id=destination_id,
            audiences=[audience("a3", marketo_list_id=987654)],
            mappings=STANDARD_MAPPINGS,
        ),
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_dry_run_reports_without_writing(service: Service) -> None:
    destination_id = await destination(service)
    answer = await service.stub.Activate(
        pb.ActivateRequest(
            destination_id=destination_id,
            audiences=[audience("a1")],
            mappings=STANDARD_MAPPINGS,
            dry_run=True,
        )
    )
    assert answer.audiences[0].list_action == pb.LIST_ACTION_CREATED
    assert answer.audiences[0].marketo_list_id == 0
    assert await service.lists() == {}
    fetched = (
        await service.stub.GetDestination(pb.GetDestinationRequest(destination_id=destination_id))
    ).destination
    assert not fetched.audiences
    assert not fetched.mappings


@pytest.mark.parametrize(
    ("mappings", "field", "words"),
    [
        (STANDARD_MAPPINGS[1:], "mappings", "DedupeField"),
        (
            [*STANDARD_MAPPINGS, pb.FieldMapping(source="x", target="DedupeField")],
            "mappings[3].target",
            "more than once",
        ),
        (STANDARD_MAPPINGS[:2], "mappings", "lastName"),
        (
            [*STANDARD_MAPPINGS, pb.FieldMapping(source="person.x", target="noSuchField")],
            "mappings[3].target",
            "not a field",
        ),
        (
            [*STANDARD_MAPPINGS, pb.FieldMapping(source="person.x", target="createdAt")],
            "mappings[3].target",
            "read-only",
        ),
        (
            [*STANDARD_MAPPINGS, pb.FieldMapping(source="x", target="title", transform="nope")],
            "mappings[3].transform",
            "unknown transform",
        ),
        (
            [*STANDARD_MAPPINGS, pb.FieldMapping(source="items[*]", target="title")],
            "mappings[3].source",
            "array",
        ),
        (
            [*STANDARD_MAPPINGS, pb.FieldMapping(source="person.nick", target="firstName")],
            "mappings[3].target",
            "more than once",
        ),
        (
            [*STANDARD_MAPPINGS, pb.FieldMapping(source="person.email", target="email")],
            "mappings[3].target",
            "more than once",
        ),
        (
            [*STANDARD_MAPPINGS, pb.FieldMapping(source="person..title", target="title")],
            "mappings[3].source",
            "invalid source path",
        ),
        (
            [*STANDARD_MAPPINGS, pb.FieldMapping(source="x", target="title", options={"a": "b"})],
            "mappings[3].options",
            "without a transform",
        ),
        (
            [
                *STANDARD_MAPPINGS,
                pb.FieldMapping(source="x", target="title", transform="trim", options={"a": "b"}),
            ],
            "mappings[3].options",
            "has no option(s) a",
        ),
    ],
)
async def test_mapping_rules(
    service: Service, mappings: list[pb.FieldMapping], field: str, words: str
) -> None:
    destination_id = await destination(service)
    found = violations(
        await activate_error(
            service,
            pb.ActivateRequest(
                destination_id=destination_id, audiences=[audience("a1")], mappings=mappings
            ),
        )
    )
    assert field in found, found
    assert words in found[field]
    assert await service.lists() == {}


async def test_email_must_be_mapped_when_another_field_is_the_dedupe_field(
    service: Service,
) -> None:
    destination_id = await destination(service, dedupe_field="customerId")
    mappings = [
        pb.FieldMapping(source="person.id", target="DedupeField"),
        pb.FieldMapping(source="person.firstName", target="firstName"),
        pb.FieldMapping(source="person.lastName", target="lastName"),
    ]
    found = violations(
        await activate_error(
            service, pb.ActivateRequest(destination_id=destination_id, mappings=mappings)
        )
    )
    assert "email" in found["mappings"]
    mappings.append(pb.FieldMapping(source="person.email", target="email"))
    await service.stub.Activate(
        pb.ActivateRequest(destination_id=destination_id, mappings=mappings)
    )


@pytest.mark.parametrize(
    ("sync_type", "person_action"),
    [
        (pb.SYNC_TYPE_AUDIENCE_ONLY, pb.PERSON_ACTION_UNSPECIFIED),
        (pb.SYNC_TYPE_PROFILE_ONLY, pb.PERSON_ACTION_UPDATE_EXISTING_AND_CREATE_NEW),
        (pb.SYNC_TYPE_AUDIENCE_AND_PROFILE, pb.PERSON_ACTION_UPDATE_EXISTING_AND_CREATE_NEW),
    ],
)
async def test_an_activate_with_no_audiences_only_replaces_the_mapping(
    service: Service, sync_type: int, person_action: int
) -> None:
    destination_id = await destination(service, sync_type=sync_type, person_action=person_action)
    answer = await service.stub.Activate(
        pb.ActivateRequest(destination_id=destination_id, mappings=STANDARD_MAPPINGS)
    )
    assert list(answer.audiences) == []
    fetched = (
        await service.stub.GetDestination(pb.GetDestinationRequest(destination_id=destination_id))
    ).destination
    assert (list(fetched.audiences), len(fetched.mappings)) == ([], len(STANDARD_MAPPINGS))
    assert await service.lists() == {}


async def test_update_only_destinations_need_no_name_mappings(service: Service) -> None:
    destination_id = await destination(service, person_action=pb.PERSON_ACTION_UPDATE_EXISTING_ONLY)
    await service.stub.Activate(
        pb.ActivateRequest(
            destination_id=destination_id,
            mappings=[pb.FieldMapping(source="person.email", target="DedupeField")],
        )
    )


@pytest.mark.parametrize(
    "kind", [pb.AUDIENCE_TYPE_ACCOUNT, pb.AUDIENCE_TYPE_PROSPECT, pb.AUDIENCE_TYPE_DATASET]
)
async def test_only_people_audiences(service: Service, kind: int) -> None:
    destination_id = await destination(service)
    found = violations(
        await activate_error(
            service,
            pb.ActivateRequest(
                destination_id=destination_id,
                audiences=[audience("a1", type=kind)],
                mappings=STANDARD_MAPPINGS,
            ),
        )
    )
    assert "only people audiences" in found["audiences[0].type"]


async def test_people_audiences_of_any_origin(service: Service) -> None:
    destination_id = await destination(service)
    origins = ["segmentation_service", "custom_upload", "lookalike", "federated", "ajo"]
    answer = await service.stub.Activate(
        pb.ActivateRequest(
            destination_id=destination_id,
            audiences=[audience(f"a{i}", origin=o) for i, o in enumerate(origins)],
            mappings=STANDARD_MAPPINGS,
        )
    )
    assert len(answer.audiences) == len(origins)


async def test_data_usage_policies_are_enforced(tmp_path: Path) -> None:
    policies = tmp_path / "policies.json"
    policies.write_text(
        json.dumps(
            [{"name": "No health data in email", "marketing_action": "email", "labels": ["S2"]}]
        )
    )
    async with running_service(tmp_path, policies_file=policies) as service:
        destination_id = await destination(service, marketing_actions=["email"])
        labelled = [
            *STANDARD_MAPPINGS,
            pb.FieldMapping(source="person.condition", target="title", labels=["S2"]),
        ]
        found = violations(
            await activate_error(
                service, pb.ActivateRequest(destination_id=destination_id, mappings=labelled)
            )
        )
        message = found["mappings[3].labels"]
        assert "S2" in message
        assert "No health data in email" in message
        assert "person.condition" in message
        other = await destination(service, name="Other", marketing_actions=["analytics"])
        await service.stub.Activate(pb.ActivateRequest(destination_id=other, mappings=labelled))


async def test_deactivate_keeps_or_deletes_the_list(service: Service) -> None:
    destination_id, answer = await activated_with_two_audiences(service)
    kept, deleted = (a.marketo_list_id for a in answer.audiences)
    await service.stub.Deactivate(
        pb.DeactivateRequest(destination_id=destination_id, audience_ids=["a1"])
    )
    await service.stub.Deactivate(
        pb.DeactivateRequest(destination_id=destination_id, audience_ids=["a2"], delete_lists=True)
    )
    assert set(await service.lists()) == {kept}
    fetched = (
        await service.stub.GetDestination(pb.GetDestinationRequest(destination_id=destination_id))
    ).destination
    assert not fetched.audiences
    assert deleted not in await service.lists()


async def test_deactivate_again_is_answered_as_the_first_one(service: Service) -> None:
    """A retry after a lost answer is no failure; an audience never activated is NOT_FOUND."""
    destination_id, answer = await activated_with_two_audiences(service)
    kept = answer.audiences[0].marketo_list_id
    request = pb.DeactivateRequest(destination_id=destination_id, audience_ids=["a1"])
    assert list((await service.stub.Deactivate(request)).audience_ids) == ["a1"]
    assert list((await service.stub.Deactivate(request)).audience_ids) == ["a1"]
    assert kept in await service.lists()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Deactivate(
            pb.DeactivateRequest(destination_id=destination_id, audience_ids=["a1", "a9"])
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "a9" in (caught.value.details() or "")

    # Asked later with delete_lists, the kept list of the inactive audience is deleted.
    request.delete_lists = True
    assert list((await service.stub.Deactivate(request)).audience_ids) == ["a1"]
    assert kept not in await service.lists()
    fetched = (
        await service.stub.GetDestination(pb.GetDestinationRequest(destination_id=destination_id))
    ).destination
    assert [a.audience_id for a in fetched.audiences] == ["a2"]


def retry_delay(error: grpc.aio.AioRpcError) -> float:
    """The RetryInfo delay of an UNAVAILABLE answer, in seconds."""
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.ToTimedelta().total_seconds()
    raise AssertionError("no RetryInfo detail")


async def list_names(service: Service) -> dict[int, str]:
    """The sandbox's static lists: id → name."""
    dump = await service.control("GET", "lists")
    return {item["id"]: item["name"] for item in dump["lists"]}


THREE = [audience("a1"), audience("a2"), audience("a3")]


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        ({"http_status": 503}, grpc.StatusCode.UNAVAILABLE),
        ({"code": "608"}, grpc.StatusCode.UNAVAILABLE),
        ({"code": "603"}, grpc.StatusCode.PERMISSION_DENIED),
    ],
)
async def test_an_activate_that_fails_on_the_second_list_resumes_on_retry(
    service: Service, fault: dict[str, object], status: grpc.StatusCode
) -> None:
    destination_id = await destination(service)
    await service.control(
        "POST", "faults", [{"path_prefix": "/rest/asset/v1/staticLists.json", "skip": 1, **fault}]
    )
    request = pb.ActivateRequest(
        destination_id=destination_id, audiences=THREE, mappings=STANDARD_MAPPINGS
    )
    error = await activate_error(service, request)
    assert error.code() == status, error.details()
    if status == grpc.StatusCode.UNAVAILABLE:
        assert retry_delay(error) > 0
    made = await list_names(service)
    assert sorted(made.values()) == ["CDP a1"]
    fetched = (
        await service.stub.GetDestination(pb.GetDestinationRequest(destination_id=destination_id))
    ).destination
    assert not fetched.audiences, "nothing is active until an Activate completes"

    await service.control("DELETE", "faults")
    answer = await service.stub.Activate(request)
    assert [a.list_action for a in answer.audiences] == [
        pb.LIST_ACTION_UNCHANGED,
        pb.LIST_ACTION_CREATED,
        pb.LIST_ACTION_CREATED,
    ]
    names = await list_names(service)
    assert sorted(names.values()) == ["CDP a1", "CDP a2", "CDP a3"]
    assert answer.audiences[0].marketo_list_id == next(iter(made))
    assert {a.marketo_list_id: a.list_name for a in answer.audiences} == names


async def test_a_list_created_without_an_answer_is_adopted_on_retry(service: Service) -> None:
    """Marketo creates the list but the answer is lost: the retry finds the list by its name
    in the service's folder and keeps it as the service's own (no ALREADY_EXISTS, no second
    list), and Deactivate with delete_lists deletes it."""
    destination_id = await destination(service)
    await service.control(
        "POST",
        "faults",
        [{"path_prefix": "/rest/asset/v1/staticLists.json", "drop": "after", "count": 1}],
    )
    request = pb.ActivateRequest(
        destination_id=destination_id, audiences=[audience("a1")], mappings=STANDARD_MAPPINGS
    )
    error = await activate_error(service, request)
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
    assert retry_delay(error) > 0
    made = await list_names(service)
    assert sorted(made.values()) == ["CDP a1"], "the create was carried out"

    answer = await service.stub.Activate(request)
    assert [a.list_action for a in answer.audiences] == [pb.LIST_ACTION_CREATED]
    assert answer.audiences[0].marketo_list_id == next(iter(made))
    assert await list_names(service) == made

    await service.stub.Deactivate(
        pb.DeactivateRequest(destination_id=destination_id, audience_ids=["a1"], delete_lists=True)
    )
    assert await list_names(service) == {}


async def test_a_same_named_list_is_still_refused_without_a_lost_create(service: Service) -> None:
    """Only a create of our own whose answer was lost lets a list of that name be adopted."""
    destination_id = await destination(service)
    request = pb.ActivateRequest(
        destination_id=destination_id, audiences=[audience("a1")], mappings=STANDARD_MAPPINGS
    )
    await service.stub.Activate(request)
    other = await destination(service)
    error = await activate_error(
        service,
        pb.ActivateRequest(
            destination_id=other, audiences=[audience("a1")], mappings=STANDARD_MAPPINGS
        ),
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS, error.details()


async def test_marketo_unreachable_during_activate_is_unavailable_with_retry_info(
    service: Service,
) -> None:
    destination_id = await destination(service)
    await service.control("POST", "faults", [{"path_prefix": "/rest", "http_status": 503}])
    error = await activate_error(
        service,
        pb.ActivateRequest(
            destination_id=destination_id, audiences=THREE, mappings=STANDARD_MAPPINGS
        ),
    )
    assert retry_delay(error) > 0
    assert "try again later" in (error.details() or "")


async def test_reactivating_an_audience_whose_list_was_kept_reuses_it(service: Service) -> None:
    destination_id, answer = await activated_with_two_audiences(service)
    kept = answer.audiences[0].marketo_list_id
    await service.stub.Deactivate(
        pb.DeactivateRequest(destination_id=destination_id, audience_ids=["a1"])
    )
    again = await service.stub.Activate(
        pb.ActivateRequest(
            destination_id=destination_id, audiences=[audience("a1")], mappings=STANDARD_MAPPINGS
        )
    )
    assert [(a.marketo_list_id, a.list_action) for a in again.audiences] == [
        (kept, pb.LIST_ACTION_UNCHANGED)
    ]
    assert sorted((await list_names(service)).values()) == ["CDP a1", "CDP a2"]
    fetched = (
        await service.stub.GetDestination(pb.GetDestinationRequest(destination_id=destination_id))
    ).destination
    assert {a.audience_id: a.marketo_list_id for a in fetched.audiences}["a1"] == kept


async def test_a_kept_list_deleted_in_marketo_is_created_again(service: Service) -> None:
    destination_id, answer = await activated_with_two_audiences(service)
    await service.stub.Deactivate(
        pb.DeactivateRequest(destination_id=destination_id, audience_ids=["a1"])
    )
    response = await service.http.post(
        f"{ENDPOINT}/rest/asset/v1/staticList/{answer.audiences[0].marketo_list_id}/delete.json",
        headers={"Authorization": f"Bearer {await sandbox_token(service)}"},
    )
    assert response.json()["success"] is True
    again = await service.stub.Activate(
        pb.ActivateRequest(
            destination_id=destination_id, audiences=[audience("a1")], mappings=STANDARD_MAPPINGS
        )
    )
    assert again.audiences[0].list_action == pb.LIST_ACTION_CREATED
    names = await list_names(service)
    assert sorted(names.values()) == ["CDP a1", "CDP a2"]
    assert again.audiences[0].marketo_list_id in names
    assert again.audiences[0].marketo_list_id != answer.audiences[0].marketo_list_id


async def test_delete_lists_deletes_only_lists_the_service_created(service: Service) -> None:
    other = await destination(service, name="Other")
    owned = await service.stub.Activate(
        pb.ActivateRequest(
            destination_id=other, audiences=[audience("x")], mappings=STANDARD_MAPPINGS
        )
    )
    foreign = owned.audiences[0].marketo_list_id
    destination_id = await destination(service)
    answer = await service.stub.Activate(
        pb.ActivateRequest(
            destination_id=destination_id,
            audiences=[audience("a1"), audience("a2", name="", marketo_list_id=foreign)],
            mappings=STANDARD_MAPPINGS,
        )
    )
    assert [a.list_action for a in answer.audiences] == [
        pb.LIST_ACTION_CREATED,
        pb.LIST_ACTION_LINKED,
    ]
    deactivated = await service.stub.Deactivate(
        pb.DeactivateRequest(
            destination_id=destination_id, audience_ids=["a1", "a2"], delete_lists=True
        )
    )
    assert list(deactivated.audience_ids) == ["a1", "a2"]
    assert await list_names(service) == {foreign: "CDP x"}

    # The deleted list is forgotten: activating a1 again creates a new one.
    again = await service.stub.Activate(
        pb.ActivateRequest(
            destination_id=destination_id, audiences=[audience("a1")], mappings=STANDARD_MAPPINGS
        )
    )
    assert again.audiences[0].list_action == pb.LIST_ACTION_CREATED
    assert sorted((await list_names(service)).values()) == ["CDP a1", "CDP x"]


async def test_a_deactivate_that_fails_midway_deletes_the_rest_on_retry(service: Service) -> None:
    destination_id = await destination(service)
    answer = await service.stub.Activate(
        pb.ActivateRequest(
            destination_id=destination_id, audiences=THREE, mappings=STANDARD_MAPPINGS
        )
    )
    await service.control(
        "POST",
        "faults",
        [{"path_prefix": "/rest/asset/v1/staticList/", "http_status": 503, "skip": 1}],
    )
    request = pb.DeactivateRequest(
        destination_id=destination_id, audience_ids=["a1", "a2", "a3"], delete_lists=True
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Deactivate(request)
    assert retry_delay(caught.value) > 0
    first = answer.audiences[0].marketo_list_id
    assert first not in await list_names(service)
    await service.control("DELETE", "faults")
    assert list((await service.stub.Deactivate(request)).audience_ids) == ["a1", "a2", "a3"]
    assert await list_names(service) == {}
