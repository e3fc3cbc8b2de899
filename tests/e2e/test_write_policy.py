"""Per-field write policies and the dedupe field's edge cases, end to end: a real gRPC client,
the dispatcher, the Marketo sandbox."""

from __future__ import annotations

import grpc
import pytest

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from tests.e2e.test_sync import REALIZED, by_email, delivered, seed, sync
from tests.e2e.test_sync import setup as sync_setup
from tests.harness import Service, spec, update, violations

POLICY_MAPPINGS = (
    pb.FieldMapping(source="person.email", target="DedupeField", transform="lowercase"),
    pb.FieldMapping(
        source="person.firstName", target="firstName", write_policy=pb.WRITE_POLICY_IF_EMPTY
    ),
    pb.FieldMapping(source="person.lastName", target="lastName"),
    pb.FieldMapping(source="person.city", target="city", write_policy=pb.WRITE_POLICY_NEVER_CLEAR),
    pb.FieldMapping(source="person.title", target="title"),
)


async def setup(service: Service, **changes: object) -> tuple[str, int]:
    destination_id, lists = await sync_setup(service, mappings=POLICY_MAPPINGS, **changes)
    return destination_id, lists["a1"]


async def outcome_of(service: Service, destination_id: str, profile_id: str) -> pb.ProfileOutcome:
    (outcome,) = (
        await service.stub.ListProfileOutcomes(
            pb.ListProfileOutcomesRequest(destination_id=destination_id, profile_id=profile_id)
        )
    ).outcomes
    return outcome


async def test_write_policies_keep_marketo_values_and_say_so(service: Service) -> None:
    held, blank = await seed(
        service,
        {"email": "held@example.com", "firstName": "Marketo", "city": "Paris", "title": "CTO"},
        {"email": "blank@example.com", "lastName": "Old"},
    )
    destination_id, list_id = await setup(service)
    await sync(
        service,
        destination_id,
        [
            [
                update("p1", "held@example.com", first="Ada", city="", title=""),
                update("p2", "blank@example.com", first="Bea", city="Lyon"),
                update("p3", "new@example.com", first="Cy", city="", audiences={"a1": REALIZED}),
            ]
        ],
    )
    flow = await delivered(service, destination_id)
    assert (flow.activated.created, flow.activated.updated) == (1, 2)
    leads = {email: found[0] for email, found in by_email(await service.leads()).items()}
    assert leads["held@example.com"]["fields"]["firstName"] == "Marketo"  # if_empty: kept
    assert leads["held@example.com"]["fields"]["city"] == "Paris"  # never_clear: kept
    assert "title" not in leads["held@example.com"]["fields"]  # always: cleared
    assert leads["held@example.com"]["fields"]["lastName"] == "Lovelace"
    assert leads["blank@example.com"]["fields"]["firstName"] == "Bea"  # was empty: written
    assert leads["blank@example.com"]["fields"]["city"] == "Lyon"
    created = leads["new@example.com"]["fields"]
    assert created["firstName"] == "Cy" and "city" not in created
    # every profile is a member of a1: exported, so in its list
    assert (await service.lists())[list_id] == {held, blank, leads["new@example.com"]["id"]}

    first = await outcome_of(service, destination_id, "p1")
    assert first.lead_id == held
    assert list(first.kept_fields) == ["city", "firstName"]
    second = await outcome_of(service, destination_id, "p2")
    assert second.lead_id == blank
    assert list(second.kept_fields) == []
    assert list((await outcome_of(service, destination_id, "p3")).kept_fields) == []


async def test_preview_shows_the_values_a_policy_would_keep(service: Service) -> None:
    await seed(service, {"email": "held@example.com", "firstName": "Marketo"})
    destination_id, _ = await setup(service)
    preview = await service.stub.PreviewSync(
        pb.PreviewSyncRequest(
            destination_id=destination_id, updates=[update("p1", "held@example.com")]
        )
    )
    ((item),) = preview.outcomes
    assert list(item.outcome.kept_fields) == ["firstName"]
    leads = by_email(await service.leads())
    assert leads["held@example.com"][0]["fields"] == {
        "email": "held@example.com",
        "firstName": "Marketo",
    }


async def test_the_write_policy_is_stored_with_the_mapping(service: Service) -> None:
    destination_id, _ = await setup(service)
    destination = (
        await service.stub.GetDestination(pb.GetDestinationRequest(destination_id=destination_id))
    ).destination
    policies = {m.target: m.write_policy for m in destination.mappings}
    assert policies == {
        "DedupeField": pb.WRITE_POLICY_ALWAYS,
        "firstName": pb.WRITE_POLICY_IF_EMPTY,
        "lastName": pb.WRITE_POLICY_ALWAYS,
        "city": pb.WRITE_POLICY_NEVER_CLEAR,
        "title": pb.WRITE_POLICY_ALWAYS,
    }


async def test_an_unknown_write_policy_is_invalid_argument(service: Service) -> None:
    destination_id = (await service.stub.Configure(pb.ConfigureRequest(spec=spec()))).destination.id
    bad = pb.FieldMapping(source="person.city", target="city")
    bad.write_policy = 42  # type: ignore[assignment]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await service.stub.Activate(
            pb.ActivateRequest(destination_id=destination_id, mappings=[*POLICY_MAPPINGS[:3], bad])
        )
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "mappings[3].write_policy" in violations(raised.value)


# -- the dedupe field ---------------------------------------------------------------------------


async def test_an_update_by_id_keeps_marketos_spelling_of_the_dedupe_value(
    service: Service,
) -> None:
    (lead,) = await seed(service, {"email": "Ann.Lee@Example.com"})
    destination_id, _ = await setup(service)
    await sync(service, destination_id, [[update("p1", "ANN.LEE@example.com", last="Lee")]])
    await delivered(service, destination_id)
    (found,) = await service.leads()
    assert found["id"] == lead
    assert found["fields"]["email"] == "Ann.Lee@Example.com"
    assert found["fields"]["lastName"] == "Lee"


async def test_a_dedupe_value_with_a_comma_is_excluded_saying_why(service: Service) -> None:
    destination_id, _ = await setup(service)
    await sync(
        service,
        destination_id,
        [[update("p1", "a,b@example.com"), update("p2", "fine@example.com")]],
    )
    flow = await delivered(service, destination_id)
    assert flow.excluded == {"dedupe_value_has_comma": 1}
    assert [(c.code, c.field, c.count) for c in flow.excluded_by_field] == [
        ("dedupe_value_has_comma", "email", 1)
    ]
    assert set(by_email(await service.leads())) == {"fine@example.com"}
    outcome = await outcome_of(service, destination_id, "p1")
    assert outcome.kind == pb.OUTCOME_KIND_EXCLUDED
    assert outcome.exclusion_code == "dedupe_value_has_comma"
    assert outcome.field == "email"
    assert "comma" in outcome.reason
    assert outcome.dedupe_value == "a,b@example.com"


async def test_outcomes_are_found_by_the_dedupe_value_in_any_case(service: Service) -> None:
    destination_id, _ = await setup(service)
    refused = update("p2", "Bo@Example.com")
    refused.profile.update({"consents": {"marketing": {"any": {"val": "n"}}}})
    await sync(service, destination_id, [[update("p1", "Ann@Example.com"), refused]])
    await delivered(service, destination_id)
    for asked, profile_id in (
        ("ann@example.com", "p1"),
        ("  ANN@EXAMPLE.COM ", "p1"),
        ("BO@example.COM", "p2"),
    ):
        outcomes = (
            await service.stub.ListProfileOutcomes(
                pb.ListProfileOutcomesRequest(destination_id=destination_id, dedupe_value=asked)
            )
        ).outcomes
        assert [o.profile_id for o in outcomes] == [profile_id], asked
        # the mapping lowercases: the outcome carries the value as mapped
        assert outcomes[0].dedupe_value == asked.strip().lower()


async def test_a_read_only_dedupe_field_is_refused_when_leads_are_created(
    service: Service,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await service.stub.Configure(pb.ConfigureRequest(spec=spec(dedupe_field="sfdcLeadId")))
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "not updateable" in violations(raised.value)["spec.dedupe_field"]
    # updating existing leads only: searchable is enough
    answer = await service.stub.Configure(
        pb.ConfigureRequest(
            spec=spec(
                dedupe_field="sfdcLeadId", person_action=pb.PERSON_ACTION_UPDATE_EXISTING_ONLY
            )
        )
    )
    assert answer.destination.spec.dedupe_field == "sfdcLeadId"
