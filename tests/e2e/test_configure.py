"""Configure, GetDestination, ListDestinations, DeleteDestination and DescribeMarketo through a
real gRPC client against the in-process Marketo sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from service.domain import (
    AlertSubscription,
    AlertType,
    DestinationSpec,
    FieldViolation,
    MarketoConnection,
    SyncType,
)
from service.usecases.destinations import static_violations
from tests.e2e.test_sync import delivered, setup, sync
from tests.harness import (
    CLIENT_SECRET,
    STANDARD_MAPPINGS,
    Service,
    connection,
    running_service,
    spec,
    update,
    violations,
)

T = 1_780_000_000.0


async def configure_error(service: Service, request: pb.ConfigureRequest) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Configure(request)
    return caught.value


async def test_a_valid_destination_is_stored_and_its_secret_never_returned(
    service: Service,
) -> None:
    created = (await service.stub.Configure(pb.ConfigureRequest(spec=spec()))).destination
    assert created.id.startswith("dst_")
    assert created.client_secret_set
    assert created.spec.connection.client_secret == ""
    assert created.state == pb.DESTINATION_STATE_ACTIVE
    fetched = (
        await service.stub.GetDestination(pb.GetDestinationRequest(destination_id=created.id))
    ).destination
    assert fetched.spec == created.spec
    assert CLIENT_SECRET.encode() not in fetched.SerializeToString()
    listed = await service.stub.ListDestinations(pb.ListDestinationsRequest())
    assert [d.id for d in listed.destinations] == [created.id]


async def test_every_static_violation_is_reported_at_once(service: Service) -> None:
    bad = spec(
        name="",
        connection=connection(munchkin_id="12-ABC-456", client_id="", client_secret=""),
        sync_type=pb.SYNC_TYPE_AUDIENCE_ONLY,
        partition="Europe",
        person_action=pb.PERSON_ACTION_UPDATE_EXISTING_ONLY,
        dedupe_field="ecids",
    )
    found = violations(await configure_error(service, pb.ConfigureRequest(spec=bad)))
    assert set(found) == {
        "spec.name",
        "spec.connection.munchkin_id",
        "spec.connection.client_id",
        "spec.connection.client_secret",
        "spec.partition",
        "spec.person_action",
        "spec.dedupe_field",
    }
    assert "ECID" in found["spec.dedupe_field"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"sync_type": pb.SYNC_TYPE_UNSPECIFIED}, "spec.sync_type"),
        ({"person_action": pb.PERSON_ACTION_UNSPECIFIED}, "spec.person_action"),
        ({"dedupe_field": "id"}, "spec.dedupe_field"),
        ({"dedupe_field": ""}, "spec.dedupe_field"),
        ({"sync_type": 9}, "spec.sync_type"),
    ],
)
async def test_each_static_rule(service: Service, changes: dict[str, object], field: str) -> None:
    found = violations(await configure_error(service, pb.ConfigureRequest(spec=spec(**changes))))
    assert field in found


async def test_every_alert_type_can_be_subscribed(service: Service) -> None:
    every = [value for value in pb.AlertType.values() if value != pb.ALERT_TYPE_UNSPECIFIED]
    subscribed = spec(alerts=pb.AlertSubscription(types=every))
    created = (await service.stub.Configure(pb.ConfigureRequest(spec=subscribed))).destination
    assert list(created.spec.alerts.types) == every


def test_an_alert_type_outside_alert_type_is_refused() -> None:
    subscribed = DestinationSpec(
        name="Marketing",
        connection=MarketoConnection("123-ABC-456", "client", "secret"),
        sync_type=SyncType.AUDIENCE_ONLY,
        dedupe_field="email",
        alerts=AlertSubscription(types=(AlertType.DRIFT.value, "sometimes")),
    )
    found = static_violations(subscribed, creating=True)
    assert found == [
        FieldViolation("spec.alerts.types[1]", "unknown alert type 'sometimes'"),
    ]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"workspace": "Nowhere"}, "spec.workspace"),
        ({"partition": "Atlantis"}, "spec.partition"),
        ({"dedupe_field": "firstName"}, "spec.dedupe_field"),
    ],
)
async def test_live_checks_against_the_instance(
    service: Service, changes: dict[str, object], field: str
) -> None:
    found = violations(await configure_error(service, pb.ConfigureRequest(spec=spec(**changes))))
    assert list(found) == [field]
    listed = await service.stub.ListDestinations(pb.ListDestinationsRequest())
    assert not listed.destinations


async def test_a_searchable_custom_field_and_a_real_partition_are_accepted(
    service: Service,
) -> None:
    partitions = (
        await service.stub.DescribeMarketo(pb.DescribeMarketoRequest(connection=connection()))
    ).partitions
    other = next(p.name for p in partitions if p.name != "Default")
    created = await service.stub.Configure(
        pb.ConfigureRequest(spec=spec(dedupe_field="customerId", partition=other))
    )
    assert created.destination.spec.partition == other


async def test_bad_credentials_fail_the_precondition_and_store_nothing(service: Service) -> None:
    error = await configure_error(
        service,
        pb.ConfigureRequest(spec=spec(connection=connection(client_secret="wrong-secret"))),
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Marketo rejected the client id or secret" in (error.details() or "")
    assert "wrong-secret" not in (error.details() or "")
    assert not (await service.stub.ListDestinations(pb.ListDestinationsRequest())).destinations


async def test_an_api_user_without_write_access_is_permission_denied(service: Service) -> None:
    await service.control(
        "POST", "faults", [{"path_prefix": "/rest/v1/leads.json", "code": "603", "count": 1}]
    )
    error = await configure_error(service, pb.ConfigureRequest(spec=spec()))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    details = error.details() or ""
    assert "may write leads" in details and "603" in details
    assert "Access denied" not in details, "Marketo's own words stay out of the answer"


async def test_an_unreachable_marketo_is_unavailable_and_stores_nothing(service: Service) -> None:
    await service.control(
        "POST", "faults", [{"path_prefix": "/rest", "http_status": 503, "count": 100}]
    )
    error = await configure_error(service, pb.ConfigureRequest(spec=spec()))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert not (await service.stub.ListDestinations(pb.ListDestinationsRequest())).destinations


async def test_validate_only_stores_nothing(service: Service) -> None:
    answer = await service.stub.Configure(pb.ConfigureRequest(spec=spec(), validate_only=True))
    assert answer.destination.id == ""
    assert answer.destination.spec.name == "Marketing"
    assert not (await service.stub.ListDestinations(pb.ListDestinationsRequest())).destinations


async def test_update_keeps_the_stored_secret_when_none_is_given(service: Service) -> None:
    created = (await service.stub.Configure(pb.ConfigureRequest(spec=spec()))).destination
    renamed = spec(name="Renamed", connection=connection(client_secret=""))
    updated = (
        await service.stub.Configure(pb.ConfigureRequest(destination_id=created.id, spec=renamed))
    ).destination
    assert updated.id == created.id
    assert updated.spec.name == "Renamed"
    assert updated.client_secret_set


async def test_update_keeps_the_stored_webhook_secret_when_none_is_given(
    service: Service,
) -> None:
    url = "https://hooks.example.com/marketo"
    hook = pb.AlertSubscription(webhook_url=url, webhook_secret="hook-secret")
    created = (
        await service.stub.Configure(pb.ConfigureRequest(spec=spec(alerts=hook)))
    ).destination
    assert created.spec.alerts.webhook_secret == ""
    for given, stored in (("", "hook-secret"), ("new-secret", "new-secret")):
        changed = spec(
            name="Renamed", alerts=pb.AlertSubscription(webhook_url=url, webhook_secret=given)
        )
        answer = await service.stub.Configure(
            pb.ConfigureRequest(destination_id=created.id, spec=changed)
        )
        assert answer.destination.spec.alerts.webhook_secret == ""
        record = await service.app.store.get_destination(created.id, tenant=None)
        assert record.spec.alerts.webhook_secret == stored


async def test_delete_removes_the_destination(service: Service) -> None:
    created = (await service.stub.Configure(pb.ConfigureRequest(spec=spec()))).destination
    await service.stub.DeleteDestination(pb.DeleteDestinationRequest(destination_id=created.id))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.GetDestination(pb.GetDestinationRequest(destination_id=created.id))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_pages(service: Service) -> None:
    ids = []
    for index in range(5):
        answer = await service.stub.Configure(pb.ConfigureRequest(spec=spec(name=f"d{index}")))
        ids.append(answer.destination.id)
    seen: list[str] = []
    token = ""
    while True:
        page = await service.stub.ListDestinations(
            pb.ListDestinationsRequest(page_size=2, page_token=token)
        )
        assert len(page.destinations) <= 2
        seen += [d.id for d in page.destinations]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.ListDestinations(pb.ListDestinationsRequest(page_size=5000))
    assert "page_size" in violations(caught.value)


async def test_a_listed_page_reads_its_destinations_activations_at_once(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    lists = dict([await setup(service, (f"a{index}",)) for index in range(3)])
    store = service.app.store
    reads: list[object] = []
    batched = store.activations_of

    async def one_destination(destination_id: str) -> object:
        reads.append(destination_id)
        raise AssertionError("one activations read per listed destination")

    async def several(destination_ids: list[str]) -> object:
        reads.append(list(destination_ids))
        return await batched(destination_ids)

    monkeypatch.setattr(store, "activations", one_destination)
    monkeypatch.setattr(store, "activations_of", several)
    page = await service.stub.ListDestinations(pb.ListDestinationsRequest())

    shown = {
        d.id: {a.audience_id: a.marketo_list_id for a in d.audiences} for d in page.destinations
    }
    assert shown == lists
    assert reads == [list(lists)]


async def test_describe_shows_the_pickers(service: Service) -> None:
    described = await service.stub.DescribeMarketo(
        pb.DescribeMarketoRequest(connection=connection())
    )
    assert {w.name for w in described.workspaces} >= {"Default"}
    assert "Default" in {p.name for p in described.partitions}
    assert "email" in described.dedupe_fields
    assert "id" not in described.dedupe_fields
    assert "ecids" not in described.dedupe_fields
    fields = {f.name: f for f in described.fields}
    assert fields["firstName"].data_type == "string"
    assert "createdAt" not in fields  # read-only fields are no mapping targets
    assert fields["email"].searchable


async def test_secrets_are_absent_from_logs_and_the_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    async with running_service(tmp_path) as service:
        created = (await service.stub.Configure(pb.ConfigureRequest(spec=spec()))).destination
        await service.stub.GetDestination(pb.GetDestinationRequest(destination_id=created.id))
    secret = CLIENT_SECRET.encode()
    for path in (tmp_path / "data").iterdir():
        assert secret not in path.read_bytes(), path
    assert CLIENT_SECRET not in caplog.text


# {"l":"destinations","p":["dst_a",5]} and {"l":"outcomes","p":[]}: well formed, never issued.
FORGED_DESTINATIONS_TOKEN = "eyJsIjoiZGVzdGluYXRpb25zIiwicCI6WyJkc3RfYSIsNV19"
FORGED_OUTCOMES_TOKEN = "eyJsIjoib3V0Y29tZXMiLCJwIjpbXX0"


async def test_forged_page_tokens_are_invalid_arguments(service: Service) -> None:
    created = (await service.stub.Configure(pb.ConfigureRequest(spec=spec()))).destination
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.ListDestinations(
            pb.ListDestinationsRequest(page_token=FORGED_DESTINATIONS_TOKEN)
        )
    assert "page_token" in violations(caught.value)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.ListProfileOutcomes(
            pb.ListProfileOutcomesRequest(
                destination_id=created.id, page_token=FORGED_OUTCOMES_TOKEN
            )
        )
    assert "page_token" in violations(caught.value)


async def activated(
    service: Service,
    mappings: object = STANDARD_MAPPINGS,
    audiences: object = (),
    **changes: object,
) -> str:
    """A new destination of spec(**changes), activated with `mappings` and `audiences`."""
    destination_id = (
        await service.stub.Configure(pb.ConfigureRequest(spec=spec(**changes)))
    ).destination.id
    await service.stub.Activate(
        pb.ActivateRequest(
            destination_id=destination_id,
            audiences=audiences,  # type: ignore[arg-type]
            mappings=mappings,  # type: ignore[arg-type]
        )
    )
    return destination_id


async def test_a_new_dedupe_field_is_checked_against_the_active_dedupe_mapping(
    service: Service,
) -> None:
    destination_id = await activated(service)
    error = await configure_error(
        service,
        pb.ConfigureRequest(destination_id=destination_id, spec=spec(dedupe_field="twitterId")),
    )
    found = violations(error)
    assert list(found) == ["mappings"]
    assert "the active mapping would break" in found["mappings"]
    assert "needs email mapped" in found["mappings"]
    stored = (
        await service.stub.GetDestination(pb.GetDestinationRequest(destination_id=destination_id))
    ).destination
    assert stored.spec.dedupe_field == "email"
    # Without an active mapping the same change is accepted.
    fresh = (await service.stub.Configure(pb.ConfigureRequest(spec=spec()))).destination.id
    changed = await service.stub.Configure(
        pb.ConfigureRequest(destination_id=fresh, spec=spec(dedupe_field="twitterId"))
    )
    assert changed.destination.spec.dedupe_field == "twitterId"


async def test_reconfiguring_against_the_active_mapping_reports_every_violation_at_once(
    tmp_path: Path,
) -> None:
    policies = tmp_path / "policies.json"
    policies.write_text(
        json.dumps(
            [{"name": "No health data in email", "marketing_action": "email", "labels": ["S2"]}]
        )
    )
    update_only = {
        "sync_type": pb.SYNC_TYPE_PROFILE_ONLY,
        "person_action": pb.PERSON_ACTION_UPDATE_EXISTING_ONLY,
    }
    mappings = [
        pb.FieldMapping(source="person.email", target="DedupeField"),
        pb.FieldMapping(source="person.condition", target="title", labels=["S2"]),
    ]
    async with running_service(tmp_path, policies_file=policies) as service:
        destination_id = await activated(service, mappings, **update_only)
        for request in (
            pb.ConfigureRequest(
                destination_id=destination_id,
                spec=spec(
                    sync_type=pb.SYNC_TYPE_PROFILE_ONLY,
                    dedupe_field="twitterId",
                    marketing_actions=["email"],
                ),
            ),
            pb.ConfigureRequest(
                destination_id=destination_id,
                validate_only=True,
                spec=spec(
                    sync_type=pb.SYNC_TYPE_PROFILE_ONLY,
                    dedupe_field="twitterId",
                    marketing_actions=["email"],
                ),
            ),
        ):
            found = violations(await configure_error(service, request))
            assert sorted(found) == ["mappings", "mappings[1].labels"]
            assert "No health data in email" in found["mappings[1].labels"]
            assert "firstName, lastName, email" in found["mappings"]
        stored = (
            await service.stub.GetDestination(
                pb.GetDestinationRequest(destination_id=destination_id)
            )
        ).destination
        assert stored.spec.person_action == pb.PERSON_ACTION_UPDATE_EXISTING_ONLY
        assert not stored.spec.marketing_actions
        # A change the active mapping fits is accepted.
        accepted = await service.stub.Configure(
            pb.ConfigureRequest(
                destination_id=destination_id,
                spec=spec(name="Renamed", marketing_actions=["analytics"], **update_only),
            )
        )
        assert accepted.destination.spec.name == "Renamed"


async def test_profile_only_turned_audience_and_profile_gets_its_lists_at_the_next_activate(
    service: Service,
) -> None:
    destination_id = await activated(
        service,
        audiences=[pb.Audience(id="a1", name="CDP a1"), pb.Audience(id="a2")],
        sync_type=pb.SYNC_TYPE_PROFILE_ONLY,
    )
    assert await service.lists() == {}
    await service.stub.Configure(
        pb.ConfigureRequest(
            destination_id=destination_id, spec=spec(sync_type=pb.SYNC_TYPE_AUDIENCE_AND_PROFILE)
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Activate(
            pb.ActivateRequest(destination_id=destination_id, mappings=STANDARD_MAPPINGS)
        )
    found = violations(caught.value)
    assert "'a2'" in found["audiences"] and "name" in found["audiences"]
    assert await service.lists() == {}

    answer = await service.stub.Activate(
        pb.ActivateRequest(
            destination_id=destination_id,
            audiences=[pb.Audience(id="a2", name="CDP a2")],
            mappings=STANDARD_MAPPINGS,
        )
    )
    assert [(a.audience_id, a.list_action) for a in answer.audiences] == [
        ("a2", pb.LIST_ACTION_CREATED),
        ("a1", pb.LIST_ACTION_CREATED),
    ]
    dump = await service.control("GET", "lists")
    names = {item["id"]: item["name"] for item in dump["lists"]}
    assert names == {a.marketo_list_id: f"CDP {a.audience_id}" for a in answer.audiences}
    fetched = (
        await service.stub.GetDestination(pb.GetDestinationRequest(destination_id=destination_id))
    ).destination
    assert {a.audience_id: a.marketo_list_id for a in fetched.audiences} == {
        a.audience_id: a.marketo_list_id for a in answer.audiences
    }


async def test_after_the_switch_the_new_lists_get_the_current_members(service: Service) -> None:
    """Profile only keeps desired memberships without lists; once Audience and profile and the
    next Activate created the lists, delivery adds the current members (and not those who left)."""
    destination_id = await activated(
        service,
        audiences=[pb.Audience(id="a1", name="CDP a1")],
        sync_type=pb.SYNC_TYPE_PROFILE_ONLY,
    )
    realized, exited = pb.MEMBERSHIP_STATUS_REALIZED, pb.MEMBERSHIP_STATUS_EXITED
    await sync(
        service,
        destination_id,
        [
            [
                update("p1", "ann@x.io", time=T, audiences={"a1": realized}),
                update("p2", "bob@x.io", time=T, audiences={"a1": realized}),
                update("p3", "cy@x.io", time=T, audiences={"a1": realized}),
            ]
        ],
    )
    await delivered(service, destination_id)
    await sync(
        service, destination_id, [[update("p3", "cy@x.io", time=T + 60, audiences={"a1": exited})]]
    )
    await delivered(service, destination_id)
    assert await service.lists() == {}
    ids = {lead["fields"]["email"]: lead["id"] for lead in await service.leads()}

    await service.stub.Configure(
        pb.ConfigureRequest(
            destination_id=destination_id, spec=spec(sync_type=pb.SYNC_TYPE_AUDIENCE_AND_PROFILE)
        )
    )
    answer = await service.stub.Activate(
        pb.ActivateRequest(destination_id=destination_id, mappings=STANDARD_MAPPINGS)
    )
    assert [(a.audience_id, a.list_action) for a in answer.audiences] == [
        ("a1", pb.LIST_ACTION_CREATED)
    ]
    await delivered(service, destination_id)
    assert await service.lists() == {
        answer.audiences[0].marketo_list_id: {ids["ann@x.io"], ids["bob@x.io"]}
    }
    assert len(await service.leads()) == 3
