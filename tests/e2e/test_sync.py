"""Sync, PreviewSync, GetDataflow, ListProfileOutcomes and WatchAlerts end to end: a real gRPC
client streams updates, the dispatcher delivers them to the in-process Marketo sandbox."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path

import grpc
import pytest

from sandbox import SandboxSettings, create_app
from service._proto.marketo_destination.v1 import destination_pb2 as pb
from tests.harness import (
    STANDARD_MAPPINGS,
    Service,
    encoded_field,
    running_service,
    service_logging,
    spec,
    update,
    violations,
)

REALIZED = pb.MEMBERSHIP_STATUS_REALIZED
EXITED = pb.MEMBERSHIP_STATUS_EXITED


async def setup(
    service: Service,
    audiences: Sequence[str] = ("a1",),
    mappings: Sequence[pb.FieldMapping] = STANDARD_MAPPINGS,
    **changes: object,
) -> tuple[str, dict[str, int]]:
    """A configured and activated destination; returns its id and audience -> list id."""
    destination_id = (
        await service.stub.Configure(pb.ConfigureRequest(spec=spec(**changes)))
    ).destination.id
    answer = await service.stub.Activate(
        pb.ActivateRequest(
            destination_id=destination_id,
            audiences=[pb.Audience(id=a, name=f"List {destination_id} {a}") for a in audiences],
            mappings=mappings,
        )
    )
    return destination_id, {a.audience_id: a.marketo_list_id for a in answer.audiences}


async def sync(
    service: Service, destination_id: str, batches: Iterable[Sequence[pb.ProfileUpdate]]
) -> list[pb.SyncResponse]:
    async def requests() -> AsyncIterator[pb.SyncRequest]:
        for index, batch in enumerate(batches):
            yield pb.SyncRequest(
                destination_id=destination_id, updates=batch, request_id=f"r{index}"
            )

    return [response async for response in service.stub.Sync(requests())]


async def delivered(service: Service, destination_id: str) -> pb.Dataflow:
    """Wait (a minute at most) until nothing is pending; return the dataflow."""
    async with asyncio.timeout(60):
        while True:
            flow = (
                await service.stub.GetDataflow(pb.GetDataflowRequest(destination_id=destination_id))
            ).dataflow
            if flow.pending == 0:
                return flow
            await asyncio.sleep(0.05)


def by_email(leads: list[dict[str, object]]) -> dict[str, list[dict[str, object]]]:
    found: dict[str, list[dict[str, object]]] = {}
    for lead in leads:
        fields = lead["fields"]
        assert isinstance(fields, dict)
        found.setdefault(str(fields.get("email")), []).append(lead)
    return found


async def seed(service: Service, *leads: dict[str, object]) -> list[int]:
    ids: list[int] = (await service.control("POST", "leads", {"leads": list(leads)}))["ids"]
    return ids


async def test_audience_and_profile_with_create(service: Service) -> None:
    (known,) = await seed(service, {"email": "known@example.com", "firstName": "Old"})
    destination_id, lists = await setup(service)
    responses = await sync(
        service,
        destination_id,
        [
            [
                update("p1", "known@example.com", first="New", audiences={"a1": REALIZED}),
                update("p2", "NEW@example.com", audiences={"a1": REALIZED}),
            ]
        ],
    )
    assert [(r.accepted, r.request_id) for r in responses] == [(2, "r0")], responses
    flow = await delivered(service, destination_id)
    assert (flow.activated.created, flow.activated.updated, flow.activated.added) == (1, 1, 2)
    leads = by_email(await service.leads())
    assert leads["known@example.com"][0]["fields"]["firstName"] == "New"  # type: ignore[index]
    (created,) = leads["new@example.com"]
    assert created["partition"] == "Default"
    assert (await service.lists())[lists["a1"]] == {known, created["id"]}
    outcomes = (
        await service.stub.ListProfileOutcomes(
            pb.ListProfileOutcomesRequest(destination_id=destination_id, profile_id="p2")
        )
    ).outcomes
    assert [o.kind for o in outcomes] == [pb.OUTCOME_KIND_ACTIVATED]
    assert {a.type for a in outcomes[0].actions} == {pb.ACTION_TYPE_CREATED, pb.ACTION_TYPE_ADDED}
    assert outcomes[0].lead_id == created["id"]
    every = await service.stub.ListProfileOutcomes(
        pb.ListProfileOutcomesRequest(destination_id=destination_id)
    )
    assert sorted(o.profile_id for o in every.outcomes) == ["p1", "p2"], "no profile: all of them"


async def test_profile_only_update_existing_creates_nothing(service: Service) -> None:
    await seed(service, {"email": "known@example.com", "firstName": "Old"})
    destination_id, _ = await setup(
        service,
        sync_type=pb.SYNC_TYPE_PROFILE_ONLY,
        person_action=pb.PERSON_ACTION_UPDATE_EXISTING_ONLY,
    )
    await sync(
        service,
        destination_id,
        [[update("p1", "known@example.com", first="New"), update("p2", "new@example.com")]],
    )
    flow = await delivered(service, destination_id)
    assert (flow.activated.created, flow.activated.updated) == (0, 1)
    assert flow.excluded == {"no_matching_lead": 1}
    leads = by_email(await service.leads())
    assert set(leads) == {"known@example.com"}
    assert await service.lists() == {}


async def test_audience_only_adds_and_removes_existing_leads_only(service: Service) -> None:
    (known,) = await seed(service, {"email": "known@example.com", "firstName": "Old"})
    destination_id, lists = await setup(
        service,
        sync_type=pb.SYNC_TYPE_AUDIENCE_ONLY,
        person_action=pb.PERSON_ACTION_UNSPECIFIED,
    )
    await sync(
        service,
        destination_id,
        [
            [
                update("p1", "known@example.com", first="Ignored", audiences={"a1": REALIZED}),
                update("p2", "unknown@example.com", audiences={"a1": REALIZED}),
            ]
        ],
    )
    await delivered(service, destination_id)
    assert (await service.lists())[lists["a1"]] == {known}
    leads = by_email(await service.leads())
    assert set(leads) == {"known@example.com"}
    assert leads["known@example.com"][0]["fields"]["firstName"] == "Old"  # type: ignore[index]

    await sync(
        service,
        destination_id,
        [[update("p1", "known@example.com", time=1_780_000_100, audiences={"a1": EXITED})]],
    )
    flow = await delivered(service, destination_id)
    assert (await service.lists())[lists["a1"]] == set()
    assert flow.activated.removed == 1


async def test_bad_updates_are_rejected_alone(service: Service) -> None:
    destination_id, _ = await setup(service)
    missing_time = update("p2", "b@example.com")
    missing_time.ClearField("event_time")
    responses = await sync(
        service,
        destination_id,
        [
            [
                update("p1", "a@example.com"),
                missing_time,
                update("", "c@example.com"),
                update("p4", "d@example.com", audiences={"nope": REALIZED}),
                update("p5", "e@example.com"),
            ]
        ],
    )
    (response,) = responses
    assert response.accepted == 2
    assert {(r.index, r.field) for r in response.rejected} == {
        (1, "updates[1].event_time"),
        (2, "updates[2].profile_id"),
        (3, "updates[3].audiences[0].audience_id"),
    }
    await delivered(service, destination_id)
    assert set(by_email(await service.leads())) == {"a@example.com", "e@example.com"}


async def test_a_membership_of_an_audience_not_activated_rejects_its_update(
    service: Service,
) -> None:
    """Sync and PreviewSync refuse an update naming an audience the destination has not
    activated (or has deactivated), naming the membership; the other updates go on."""
    destination_id, _ = await setup(service, audiences=("a1", "a2"))
    await service.stub.Deactivate(
        pb.DeactivateRequest(destination_id=destination_id, audience_ids=["a2"])
    )
    batch = [
        update("p1", "a@example.com"),
        update("p2", "b@example.com", audiences={"a1": REALIZED, "a2": REALIZED}),
    ]
    (response,) = await sync(service, destination_id, [batch])
    preview = await service.stub.PreviewSync(
        pb.PreviewSyncRequest(destination_id=destination_id, updates=batch)
    )
    for rejected in (response.rejected, preview.rejected):
        assert [(r.index, r.field) for r in rejected] == [
            (1, "updates[1].audiences[1].audience_id")
        ]
        assert "'a2' is not active" in rejected[0].reason
    assert response.accepted == 1
    assert [o.profile_id for o in preview.outcomes] == ["p1"]


async def test_an_update_that_does_not_decode_is_rejected_alone(service: Service) -> None:
    """A client may send what a protobuf library would refuse to parse: a profile nested past
    the parser's limit, a membership that is not a message. Only those updates are refused."""
    destination_id, _ = await setup(service)
    deep = update("p2", "b@example.com")
    deep.profile.Clear()
    node = deep.profile
    for _ in range(60):
        node = node.fields["x"].struct_value
    broken = update("p3", "c@example.com", audiences={})
    broken_bytes = broken.SerializeToString() + encoded_field(4, b"\x0a\x09short")
    request = (
        encoded_field(1, destination_id.encode())
        + encoded_field(2, update("p1", "a@example.com").SerializeToString())
        + encoded_field(2, deep.SerializeToString())
        + encoded_field(2, broken_bytes)
        + encoded_field(2, update("p4", "d@example.com").SerializeToString())
        + encoded_field(3, b"raw")
    )
    sync = service.channel.stream_stream(
        "/marketo_destination.v1.MarketoDestinationService/Sync",
        request_serializer=None,
        response_deserializer=pb.SyncResponse.FromString,
    )
    responses = [r async for r in sync(iter([request]), metadata=service.metadata)]

    (response,) = responses
    assert response.accepted == 2
    assert [(r.index, r.field) for r in response.rejected] == [
        (1, "updates[1].profile"),
        (2, "updates[2].audiences[0]"),
    ]
    assert "deeper than 32 levels" in response.rejected[0].reason
    await delivered(service, destination_id)
    assert set(by_email(await service.leads())) == {"a@example.com", "d@example.com"}


async def test_resending_an_update_is_harmless(service: Service) -> None:
    destination_id, _ = await setup(service)
    same = update("p1", "a@example.com")
    first, second = await sync(service, destination_id, [[same], [same]])
    assert (first.accepted, second.accepted) == (1, 1)
    flow = await delivered(service, destination_id)
    assert (flow.received, flow.duplicates, flow.activated.created, flow.pending) == (2, 1, 1, 0)
    # Once more after delivery: recognised against the recorded outcome.
    await sync(service, destination_id, [[same]])
    flow = await delivered(service, destination_id)
    assert (flow.received, flow.duplicates, flow.activated.created, flow.pending) == (3, 2, 1, 0)
    assert flow.activated.updated == 0
    assert len(await service.leads()) == 1
    outcomes = await service.stub.ListProfileOutcomes(
        pb.ListProfileOutcomesRequest(destination_id=destination_id, profile_id="p1")
    )
    assert len(outcomes.outcomes) == 1


async def test_a_nul_character_rejects_its_update_alone_in_sync_and_preview(
    service: Service,
) -> None:
    destination_id, _ = await setup(service)
    batch = [
        update("p1", "a@example.com"),
        update("p\x002", "b@example.com"),
        update("p3", "c@example.com", first="A\x00da"),
        update("p4", "d@example.com"),
    ]
    expected = {
        (1, "updates[1].profile_id", "updates[1].profile_id contains a NUL character"),
        (
            2,
            "updates[2].profile.person.firstName",
            "updates[2].profile.person.firstName contains a NUL character",
        ),
    }

    preview = await service.stub.PreviewSync(
        pb.PreviewSyncRequest(destination_id=destination_id, updates=batch)
    )
    (response,) = await sync(service, destination_id, [batch])

    assert {(r.index, r.field, r.reason) for r in preview.rejected} == expected
    assert {(r.index, r.field, r.reason) for r in response.rejected} == expected
    assert response.accepted == 2
    flow = await delivered(service, destination_id)
    assert (flow.received, flow.activated.created, flow.pending) == (2, 2, 0)
    assert set(by_email(await service.leads())) == {"a@example.com", "d@example.com"}


async def test_a_nul_in_a_destination_id_or_an_outcome_filter_is_invalid_argument(
    service: Service,
) -> None:
    """No stored id holds a NUL (PostgreSQL's text cannot even be asked for one)."""
    destination_id, _ = await setup(service)
    calls = {
        "destination_id": service.stub.GetDataflow(
            pb.GetDataflowRequest(destination_id=destination_id + "\x00")
        ),
        "profile_id": service.stub.ListProfileOutcomes(
            pb.ListProfileOutcomesRequest(destination_id=destination_id, profile_id="p\x001")
        ),
        "dedupe_value": service.stub.ListProfileOutcomes(
            pb.ListProfileOutcomesRequest(destination_id=destination_id, dedupe_value="a\x00")
        ),
    }
    for field, call in calls.items():
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert violations(raised.value) == {field: "contains a NUL character"}
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await sync(service, destination_id + "\x00", [[update("p1", "a@example.com")]])
    assert violations(raised.value) == {"destination_id": "contains a NUL character"}


async def test_a_nul_in_any_string_of_a_request_is_invalid_argument_naming_it(
    service: Service,
) -> None:
    """Every RPC that takes one request refuses a NUL anywhere in it, before anything is stored
    or sent: PostgreSQL answered INTERNAL for a spec, an audience or a mapping holding one."""
    destination_id, _ = await setup(service)
    audience = pb.Audience(id="a\x002", name="Second")
    mapping = pb.FieldMapping(
        source="person.country",
        target="country",
        transform="country_code",
        options={"fallback\x00": "SE"},
    )
    calls = {
        "spec.name": service.stub.Configure(pb.ConfigureRequest(spec=spec(name="Mar\x00keting"))),
        "audiences[0].id": service.stub.Activate(
            pb.ActivateRequest(
                destination_id=destination_id, audiences=[audience], mappings=STANDARD_MAPPINGS
            )
        ),
        "mappings[3].options[fallback\\0]": service.stub.Activate(
            pb.ActivateRequest(
                destination_id=destination_id,
                audiences=[pb.Audience(id="a1", name="First")],
                mappings=[*STANDARD_MAPPINGS, mapping],
            )
        ),
        "connection.client_id": service.stub.DescribeMarketo(
            pb.DescribeMarketoRequest(
                connection=pb.MarketoConnection(
                    munchkin_id="123-ABC-456", client_id="c\x00", client_secret="s"
                )
            )
        ),
    }
    for field, call in calls.items():
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        problem = (
            "key contains a NUL character" if "options" in field else "contains a NUL character"
        )
        assert violations(raised.value) == {field: problem}
    # Nothing was stored: one destination, as before, and its audience unchanged.
    listed = await service.stub.ListDestinations(pb.ListDestinationsRequest())
    assert [d.id for d in listed.destinations] == [destination_id]


async def test_an_update_id_reused_for_other_content_fails_with_an_outcome(
    service: Service,
) -> None:
    destination_id, _ = await setup(service)
    first = update("p1", "a@example.com")
    first.update_id = "u1"
    other = update("p1", "a@example.com", first="Grace")
    other.update_id = "u1"
    await sync(service, destination_id, [[first]])
    await delivered(service, destination_id)

    await sync(service, destination_id, [[other], [first]])

    flow = await delivered(service, destination_id)
    assert (flow.received, flow.activated.created, flow.duplicates) == (3, 1, 1)
    assert dict(flow.failed) == {"update_id_reused": 1}
    outcomes = (
        await service.stub.ListProfileOutcomes(
            pb.ListProfileOutcomesRequest(destination_id=destination_id, profile_id="p1")
        )
    ).outcomes
    failed = [o for o in outcomes if o.kind == pb.OUTCOME_KIND_FAILED]
    assert [(o.marketo_code, o.update_id.split("#")[0]) for o in failed] == [
        ("update_id_reused", "u1")
    ]
    assert "already used for an update with different content" in failed[0].reason
    leads = await service.leads()
    assert [lead["fields"]["firstName"] for lead in leads] == ["Ada"]  # type: ignore[index]


async def test_a_streams_requests_are_committed_in_order(service: Service) -> None:
    destination_id, _ = await setup(service)
    batches = [[update(f"p{i}", f"{i}@example.com")] for i in range(30)]
    responses = await sync(service, destination_id, batches)
    assert [r.request_id for r in responses] == [f"r{i}" for i in range(30)]
    sequences = [r.ack_sequence for r in responses]
    assert sequences == sorted(sequences)
    assert len(set(sequences)) == 30


async def test_stale_events_never_overwrite_newer_ones(service: Service) -> None:
    destination_id, _ = await setup(service)
    await sync(service, destination_id, [[update("p1", "a@example.com", first="New", time=200)]])
    await delivered(service, destination_id)
    await sync(service, destination_id, [[update("p1", "a@example.com", first="Old", time=100)]])
    flow = await delivered(service, destination_id)
    assert flow.superseded == 1
    (lead,) = await service.leads()
    assert lead["fields"]["firstName"] == "New"


async def test_an_unknown_destination_ends_the_stream_not_found(service: Service) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sync(service, "dst_missing", [[update("p1", "a@example.com")]])
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_request_of_more_than_ten_thousand_updates_ends_the_stream(
    service: Service,
) -> None:
    """SyncRequest.updates holds at most 10,000 updates: a larger request is INVALID_ARGUMENT
    naming `updates`, and none of its updates is accepted."""
    destination_id, _ = await setup(service)
    oversized = [
        pb.ProfileUpdate(profile_id=f"p{i}", event_time=update("p", None).event_time)
        for i in range(10_001)
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sync(service, destination_id, [oversized])
    assert "10000" in violations(caught.value)["updates"]
    flow = (
        await service.stub.GetDataflow(pb.GetDataflowRequest(destination_id=destination_id))
    ).dataflow
    assert flow.received == 0


async def test_a_destination_without_activation_is_a_failed_precondition(
    service: Service,
) -> None:
    destination_id = (await service.stub.Configure(pb.ConfigureRequest(spec=spec()))).destination.id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sync(service, destination_id, [[update("p1", "a@example.com")]])
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Activate" in (caught.value.details() or "")


async def test_preview_writes_nothing(service: Service) -> None:
    await seed(service, {"email": "known@example.com"})
    destination_id, _ = await setup(service)
    preview = await service.stub.PreviewSync(
        pb.PreviewSyncRequest(
            destination_id=destination_id,
            updates=[
                update("p1", "known@example.com", audiences={"a1": REALIZED}),
                update("p2", "new@example.com", audiences={"a1": REALIZED}),
                update("p3", None),
            ],
        )
    )
    assert (preview.created, preview.updated) == (1, 1)
    assert [(a.audience_id, a.added) for a in preview.audiences] == [("a1", 2)]
    kinds = {o.profile_id: o.outcome.kind for o in preview.outcomes}
    assert kinds == {
        "p1": pb.OUTCOME_KIND_ACTIVATED,
        "p2": pb.OUTCOME_KIND_ACTIVATED,
        "p3": pb.OUTCOME_KIND_EXCLUDED,
    }
    assert len(await service.leads()) == 1
    assert all(not members for members in (await service.lists()).values())


async def test_preview_bounds_the_whole_request_malformed_updates_included(
    service: Service,
) -> None:
    destination_id, _ = await setup(service)
    malformed = update("p\x00", "bad@example.com")
    good = [update(f"p{n}", f"{n}@example.com") for n in range(999)]

    at_the_bound = await service.stub.PreviewSync(
        pb.PreviewSyncRequest(destination_id=destination_id, updates=[*good, malformed])
    )
    assert [r.index for r in at_the_bound.rejected] == [999]
    assert len(at_the_bound.outcomes) == 999

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.PreviewSync(
            pb.PreviewSyncRequest(
                destination_id=destination_id, updates=[*good, malformed, malformed]
            )
        )
    assert "at most 1000" in violations(caught.value)["updates"]


async def test_back_pressure_refuses_with_retry_info(tmp_path: Path) -> None:
    async with running_service(
        tmp_path, max_backlog=5, linger_seconds=3600, backpressure_wait_seconds=0.2
    ) as service:
        await service.app.dispatcher.stop()
        destination_id, _ = await setup(service)
        batch = [update(f"p{i}", f"{i}@example.com") for i in range(5)]
        (first,) = await sync(service, destination_id, [batch])
        assert first.accepted == 5
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await sync(service, destination_id, [[update("p9", "9@example.com")]])
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        metadata = dict(caught.value.trailing_metadata() or ())
        assert "grpc-status-details-bin" in metadata


async def test_many_updates_are_delivered_in_few_calls(service: Service) -> None:
    destination_id, lists = await setup(service)
    batches = [
        [
            update(f"p{i}", f"user{i}@example.com", audiences={"a1": REALIZED})
            for i in range(n, n + 100)
        ]
        for n in range(0, 1000, 100)
    ]
    responses = await sync(service, destination_id, batches)
    assert sum(r.accepted for r in responses) == 1000
    flow = await delivered(service, destination_id)
    assert flow.activated.created == 1000
    assert len(await service.leads()) == 1000
    assert len((await service.lists())[lists["a1"]]) == 1000
    calls = await service.control("GET", "calls")
    assert calls["counted"] <= 4 * (1000 // 300 + 1) + 10


async def test_a_quota_stop_pauses_the_destination_and_raises_an_alert(service: Service) -> None:
    destination_id, _ = await setup(service)
    alerts = service.stub.WatchAlerts(pb.WatchAlertsRequest(destination_id=destination_id))
    await service.control(
        "POST", "faults", [{"path_prefix": "/rest/v1/leads.json", "code": "607", "count": 1}]
    )
    await sync(service, destination_id, [[update("p1", "a@example.com")]])
    async with asyncio.timeout(30):
        alert = (await alerts.read()).alert
    alerts.cancel()
    assert alert.type == pb.ALERT_TYPE_QUOTA_EXHAUSTED
    assert not alert.resolved
    assert alert.paused_until.seconds > 0
    destination = (
        await service.stub.GetDestination(pb.GetDestinationRequest(destination_id=destination_id))
    ).destination
    assert destination.state == pb.DESTINATION_STATE_QUOTA_PAUSED
    flow = (
        await service.stub.GetDataflow(pb.GetDataflowRequest(destination_id=destination_id))
    ).dataflow
    assert flow.pending == 1, "the update waits for the reset; it is not lost"
    assert flow.paused_until == alert.paused_until
    assert not await service.leads()


@pytest.mark.parametrize(
    ("consent_path", "value"),
    [
        ("", "n"),
        ("", "dn"),  # XDM's default-no
        ("", " N "),
        ("privacy.marketingOptIn", "n"),
    ],
)
async def test_consent_refused_is_excluded_with_its_reason(
    service: Service, consent_path: str, value: str
) -> None:
    destination_id, _ = await setup(service, consent_path=consent_path)
    refused = update("p1", "a@example.com")
    path = consent_path or "consents.marketing.any.val"
    refused.profile.update(_nested(path.split("."), value))
    given = update("p2", "b@example.com")
    given.profile.update(_nested(path.split("."), "y"))
    await sync(service, destination_id, [[refused, given]])
    flow = await delivered(service, destination_id)
    assert flow.excluded == {"consent_refused": 1}
    assert set(by_email(await service.leads())) == {"b@example.com"}
    (outcome,) = (
        await service.stub.ListProfileOutcomes(
            pb.ListProfileOutcomesRequest(destination_id=destination_id, profile_id="p1")
        )
    ).outcomes
    assert outcome.kind == pb.OUTCOME_KIND_EXCLUDED
    assert outcome.reason == "marketing consent refused"
    assert outcome.exclusion_code == "consent_refused"


def _nested(keys: list[str], value: str) -> dict[str, object]:
    """`{keys[0]: {keys[1]: ... value}}`, merged into a profile by `Struct.update`."""
    nested: object = value
    for key in reversed(keys):
        nested = {key: nested}
    assert isinstance(nested, dict)
    return nested


async def test_invalid_values_are_counted_by_code_and_never_quoted(service: Service) -> None:
    # Every invalid e-mail is distinct and carries a marker found nowhere else. Counted per
    # distinct reason, each would add a counter quoting it (15,000 made a 5 MB answer); counted
    # by code, the answer stays the same size however many there are.
    destination_id, _ = await setup(service)

    def bad(start: int, count: int) -> list[pb.ProfileUpdate]:
        return [update(f"bad{n}", f"qzx-not-an-email-{n}") for n in range(start, start + count)]

    async def answer() -> pb.GetDataflowResponse:
        await delivered(service, destination_id)
        request = pb.GetDataflowRequest(destination_id=destination_id)
        response: pb.GetDataflowResponse = await service.stub.GetDataflow(request)
        return response

    step = 1_000
    with service_logging() as logs:
        good = [update(f"good{n}", f"qzx-good-{n}@example.com") for n in range(3)]
        await sync(service, destination_id, [bad(0, step // 2), bad(step // 2, step // 2), good])
        first = await answer()
        await sync(service, destination_id, [bad(step, step // 2), bad(3 * step // 2, step // 2)])
        second = await answer()

    flow = second.dataflow
    assert flow.activated.created == 3
    assert dict(flow.excluded) == {"value_rejected": 2 * step}
    assert [(c.code, c.field, c.count) for c in flow.excluded_by_field] == [
        ("value_rejected", "email", 2 * step)
    ]
    # Twice the invalid values, the same answer but for the counts' own bytes.
    assert second.ByteSize() - first.ByteSize() <= 8
    assert second.ByteSize() < 2_048
    for response in (first, second):
        assert b"qzx" not in response.SerializeToString()
    (outcome,) = (
        await service.stub.ListProfileOutcomes(
            pb.ListProfileOutcomesRequest(destination_id=destination_id, profile_id="bad7")
        )
    ).outcomes
    assert (outcome.kind, outcome.exclusion_code, outcome.field) == (
        pb.OUTCOME_KIND_EXCLUDED,
        "value_rejected",
        "email",
    )
    assert "qzx" not in outcome.reason and "email" in outcome.reason
    # Nothing logged while accepting, looking up and delivering quotes a value, bad or good.
    assert any(r.name.startswith("service") for r in logs.records)
    for text in logs.texts():
        assert "qzx" not in text, text


@pytest.mark.parametrize("skew", [None, 60], ids=["default", "60 s"])
async def test_event_times_beyond_the_clock_skew_are_rejected(
    tmp_path: Path, skew: int | None
) -> None:
    """Ten minutes ahead is refused by default (five minutes allowed), and with the setting at
    60 s, two minutes ahead too; both by Sync and PreviewSync, naming the update's field."""
    overrides = {} if skew is None else {"max_clock_skew_seconds": skew}
    ahead = 600 if skew is None else 120
    async with running_service(tmp_path, **overrides) as service:
        destination_id, _ = await setup(service)
        now = time.time()
        updates = [
            update("p-late", "late@example.com", time=now + ahead),
            update("p-fine", "fine@example.com", time=now + 1),
        ]
        (answer,) = await sync(service, destination_id, [updates])
        assert answer.accepted == 1
        assert [(r.index, r.field) for r in answer.rejected] == [(0, "updates[0].event_time")]
        preview = await service.stub.PreviewSync(
            pb.PreviewSyncRequest(destination_id=destination_id, updates=updates)
        )
        assert [(r.index, r.field) for r in preview.rejected] == [(0, "updates[0].event_time")]


async def test_a_quota_pause_survives_a_restart(tmp_path: Path) -> None:
    """After a 607, a restarted service does not call Marketo again before the daily reset,
    even for updates that arrive after the restart; they wait, nothing is lost."""
    marketo = create_app(SandboxSettings())
    async with running_service(tmp_path, marketo=marketo) as service:
        destination_id, _ = await setup(service)
        await service.control(
            "POST", "faults", [{"path_prefix": "/rest/v1/leads.json", "code": "607", "count": 1}]
        )
        await sync(service, destination_id, [[update("p1", "a@example.com")]])
        async with asyncio.timeout(30):
            while True:
                destination = (
                    await service.stub.GetDestination(
                        pb.GetDestinationRequest(destination_id=destination_id)
                    )
                ).destination
                if destination.state == pb.DESTINATION_STATE_QUOTA_PAUSED:
                    break
                await asyncio.sleep(0.05)
        record = await service.app.store.get_destination(destination_id, tenant=None)
        instance = record.instance_key
        paused_until = service.app.dispatcher.paused_until(instance)
        assert paused_until is not None
        calls_before = (await service.control("GET", "calls"))["by_endpoint"]

    async with running_service(tmp_path, marketo=marketo) as service:
        await sync(service, destination_id, [[update("p2", "b@example.com")]])
        async with asyncio.timeout(30):
            while True:
                restored = service.app.dispatcher.paused_until(instance)
                if restored is not None:
                    break
                await asyncio.sleep(0.05)
        assert restored == paused_until
        assert (await service.control("GET", "calls"))["by_endpoint"] == calls_before
        flow = (
            await service.stub.GetDataflow(pb.GetDataflowRequest(destination_id=destination_id))
        ).dataflow
        assert flow.pending == 2
        assert not await service.leads()
