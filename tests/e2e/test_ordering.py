"""Ordering per kind of fact, end to end: attributes are ordered per profile, memberships per
(profile, audience); a lagging segment event is not superseded by a later attribute update."""

from __future__ import annotations

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from tests.e2e.test_sync import EXITED, REALIZED, delivered, setup, sync
from tests.harness import Service, update

T0, T1, T2 = 1_780_000_000.0, 1_780_000_100.0, 1_780_000_200.0
STALE_ATTRIBUTES = (
    "attributes superseded: older than the attributes already applied for this profile"
)


def named(update_id: str, message: pb.ProfileUpdate) -> pb.ProfileUpdate:
    message.update_id = update_id
    return message


async def outcomes(service: Service, destination_id: str) -> dict[str, pb.ProfileOutcome]:
    answer = await service.stub.ListProfileOutcomes(
        pb.ListProfileOutcomesRequest(destination_id=destination_id, profile_id="p1")
    )
    return {o.update_id: o for o in answer.outcomes}


def actions(outcome: pb.ProfileOutcome) -> list[tuple[int, str]]:
    return sorted((a.type, a.audience_id) for a in outcome.actions)


async def test_a_lagging_entry_joins_and_an_older_exit_is_stale(service: Service) -> None:
    # a member of B, so exported; A's entry lags the attribute stream
    destination_id, lists = await setup(service, audiences=("A", "B"))
    attrs = update("p1", "a@x.io", first="New", time=T2, audiences={"B": REALIZED})
    await sync(service, destination_id, [[named("attrs", attrs)]])
    await delivered(service, destination_id)
    (lead,) = await service.leads()

    entry = named("entry", update("p1", "a@x.io", first="Lag", time=T1, audiences={"A": REALIZED}))
    preview = await service.stub.PreviewSync(
        pb.PreviewSyncRequest(destination_id=destination_id, updates=[entry])
    )
    assert (preview.created, preview.updated) == (0, 0)
    assert [(a.audience_id, a.added) for a in preview.audiences] == [("A", 1)]
    (previewed,) = preview.outcomes
    assert previewed.outcome.kind == pb.OUTCOME_KIND_ACTIVATED
    assert actions(previewed.outcome) == [(pb.ACTION_TYPE_ADDED, "A")]

    await sync(service, destination_id, [[entry]])
    await delivered(service, destination_id)
    assert (await service.lists())[lists["A"]] == {lead["id"]}
    (after_entry,) = await service.leads()
    assert after_entry["fields"]["firstName"] == "New"  # type: ignore[index]

    await sync(
        service,
        destination_id,
        [[named("exit", update("p1", "a@x.io", first="Gone", time=T0, audiences={"A": EXITED}))]],
    )
    await delivered(service, destination_id)
    assert (await service.lists())[lists["A"]] == {lead["id"]}

    await sync(
        service,
        destination_id,
        [[named("late", update("p1", "a@x.io", first="Old", time=T1, audiences={}))]],
    )
    flow = await delivered(service, destination_id)
    (final,) = await service.leads()
    assert final["fields"]["firstName"] == "New"  # type: ignore[index]
    assert (await service.lists())[lists["A"]] == {lead["id"]}

    found = await outcomes(service, destination_id)
    assert {u: o.kind for u, o in found.items()} == {
        "attrs": pb.OUTCOME_KIND_ACTIVATED,
        "entry": pb.OUTCOME_KIND_ACTIVATED,
        "exit": pb.OUTCOME_KIND_SUPERSEDED,
        "late": pb.OUTCOME_KIND_SUPERSEDED,
    }
    assert actions(found["entry"]) == [(pb.ACTION_TYPE_ADDED, "A")]
    assert found["entry"].reason == STALE_ATTRIBUTES
    assert found["entry"].lead_id == lead["id"]
    assert actions(found["attrs"]) == [(pb.ACTION_TYPE_CREATED, ""), (pb.ACTION_TYPE_ADDED, "B")]
    assert (flow.activated.created, flow.activated.updated, flow.activated.added) == (1, 0, 2)
    assert (flow.activated.removed, flow.superseded) == (0, 2)


async def test_a_lagging_exit_leaves_the_list(service: Service) -> None:
    destination_id, lists = await setup(service, audiences=("A",))
    await sync(
        service,
        destination_id,
        [[named("join", update("p1", "a@x.io", time=T0, audiences={"A": REALIZED}))]],
    )
    await delivered(service, destination_id)
    (lead,) = await service.leads()
    assert (await service.lists())[lists["A"]] == {lead["id"]}
    # an attribute-only update of the member, newer than the exit that follows
    attrs = update("p1", "a@x.io", first="New", time=T2, audiences={})
    await sync(service, destination_id, [[named("attrs", attrs)]])
    await delivered(service, destination_id)

    await sync(
        service,
        destination_id,
        [[named("exit", update("p1", "a@x.io", first="Old", time=T1, audiences={"A": EXITED}))]],
    )
    await delivered(service, destination_id)
    assert (await service.lists())[lists["A"]] == set()
    (final,) = await service.leads()
    assert final["fields"]["firstName"] == "New"  # type: ignore[index]
    exit_outcome = (await outcomes(service, destination_id))["exit"]
    assert exit_outcome.kind == pb.OUTCOME_KIND_ACTIVATED
    assert actions(exit_outcome) == [(pb.ACTION_TYPE_REMOVED, "A")]
