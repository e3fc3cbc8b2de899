"""Desired state end to end (issue 21): each destination remembers what Marketo should hold and
writes the difference, through the gRPC API against the sandbox. One test per case of the
issue's "Why" that the state fixes."""

from __future__ import annotations

from typing import Any

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from tests.e2e.test_sync import EXITED, REALIZED, delivered, seed, setup, sync
from tests.e2e.test_truthful_outcomes import leads_by_email, outcomes_of
from tests.harness import Service, update

T = 1_780_000_000.0

ACTIVATED = pb.OUTCOME_KIND_ACTIVATED
EXCLUDED = pb.OUTCOME_KIND_EXCLUDED
CREATED = (pb.ACTION_TYPE_CREATED, "")
UPDATED = (pb.ACTION_TYPE_UPDATED, "")


def added(audience: str) -> tuple[int, str]:
    return (pb.ACTION_TYPE_ADDED, audience)


def removed(audience: str) -> tuple[int, str]:
    return (pb.ACTION_TYPE_REMOVED, audience)


def refusing(message: pb.ProfileUpdate, value: str) -> pb.ProfileUpdate:
    """`message` with its marketing consent set to `value`."""
    message.profile.update({"consents": {"marketing": {"any": {"val": value}}}})
    return message


def counts(flow: pb.Dataflow) -> tuple[int, int, int, int]:
    c = flow.activated
    return (c.created, c.updated, c.added, c.removed)


async def test_a_member_who_refuses_consent_then_exits_leaves_the_list(service: Service) -> None:
    destination_id, lists = await setup(service, audiences=("a1", "a2"))
    joined = update("p1", "ann@x.io", time=T, audiences={"a1": REALIZED, "a2": REALIZED})
    await sync(service, destination_id, [[joined]])
    await delivered(service, destination_id)
    (lead,) = [lead["id"] for lead in await service.leads()]
    assert await service.lists() == {lists["a1"]: {lead}, lists["a2"]: {lead}}

    refused = refusing(update("p1", "ann@x.io", first="Changed", time=T + 10), " DN ")
    await sync(service, destination_id, [[refused]])
    await delivered(service, destination_id)
    # the refusal removed the memberships at once; the attributes stayed where they were
    assert await service.lists() == {lists["a1"]: set(), lists["a2"]: set()}
    ((kept,),) = [list(leads_by_email(await service.leads()).values())]
    assert kept["fields"]["firstName"] == "Ada"

    exit_ = refusing(update("p1", "ann@x.io", time=T + 20, audiences={"a1": EXITED}), "n")
    await sync(service, destination_id, [[exit_]])
    flow = await delivered(service, destination_id)

    assert await service.lists() == {lists["a1"]: set(), lists["a2"]: set()}
    assert counts(flow) == (1, 0, 2, 2)
    assert (flow.received, dict(flow.excluded)) == (3, {"consent_refused": 2})
    assert await outcomes_of(service, destination_id, "p1") == {
        int(T): (ACTIVATED, {CREATED, added("a1"), added("a2")}),
        int(T + 10): (EXCLUDED, {removed("a1"), removed("a2")}),
        int(T + 20): (EXCLUDED, set()),
    }


async def test_late_segment_events_still_join_and_leave(service: Service) -> None:
    destination_id, lists = await setup(service, audiences=("a1", "a2"))
    await sync(
        service,
        destination_id,
        [[update("p1", "ann@x.io", time=T, audiences={"a1": REALIZED})]],
    )
    await delivered(service, destination_id)
    # a newer attribute update, then segment events evaluated earlier arrive
    attributes = update("p1", "ann@x.io", first="Ann", time=T + 10, audiences={})
    await sync(service, destination_id, [[attributes]])
    await delivered(service, destination_id)
    late = update("p1", "ann@x.io", time=T + 5, audiences={"a1": EXITED, "a2": REALIZED})
    await sync(service, destination_id, [[late]])
    flow = await delivered(service, destination_id)

    leads = leads_by_email(await service.leads())
    assert sorted(leads) == ["ann@x.io"]
    lead = leads["ann@x.io"]["id"]
    assert leads["ann@x.io"]["fields"]["firstName"] == "Ann", "the older attributes are not written"
    assert await service.lists() == {lists["a1"]: set(), lists["a2"]: {lead}}
    assert counts(flow) == (1, 1, 2, 1)
    assert (flow.received, flow.superseded) == (3, 0)
    assert await outcomes_of(service, destination_id, "p1") == {
        int(T): (ACTIVATED, {CREATED, added("a1")}),
        int(T + 10): (ACTIVATED, {UPDATED}),
        int(T + 5): (ACTIVATED, {removed("a1"), added("a2")}),
    }


async def test_an_exit_removes_the_added_lead_when_another_duplicate_became_the_winner(
    service: Service,
) -> None:
    (first,) = await seed(
        service, {"email": "dup@x.io", "firstName": "Ada", "lastName": "Lovelace"}
    )
    destination_id, lists = await setup(service)
    await sync(
        service, destination_id, [[update("p1", "dup@x.io", time=T, audiences={"a1": REALIZED})]]
    )
    await delivered(service, destination_id)
    assert await service.lists() == {lists["a1"]: {first}}
    # another integration creates a duplicate that is now the most recently updated lead
    (winner,) = await seed(
        service,
        {"email": "dup@x.io", "firstName": "Other", "updatedAt": "2099-01-01T00:00:00Z"},
    )

    await sync(
        service, destination_id, [[update("p1", "dup@x.io", time=T + 10, audiences={"a1": EXITED})]]
    )
    flow = await delivered(service, destination_id)

    assert await service.lists() == {lists["a1"]: set()}, "the lead that was added left"
    leads: dict[int, Any] = {lead["id"]: lead for lead in await service.leads()}
    assert sorted(leads) == sorted([first, winner])
    assert leads[winner]["fields"]["firstName"] == "Other", "the new winner was not touched"
    assert counts(flow) == (0, 1, 1, 1)
    assert await outcomes_of(service, destination_id, "p1") == {
        int(T): (ACTIVATED, {UPDATED, added("a1")}),
        int(T + 10): (ACTIVATED, {removed("a1")}),
    }


async def test_an_email_change_moves_the_memberships_to_the_new_lead(service: Service) -> None:
    destination_id, lists = await setup(service, audiences=("a1", "a2"))
    await sync(
        service,
        destination_id,
        [[update("p1", "ann@x.io", time=T, audiences={"a1": REALIZED, "a2": REALIZED})]],
    )
    await delivered(service, destination_id)
    await sync(service, destination_id, [[update("p1", "ann.new@x.io", time=T + 10)]])
    flow = await delivered(service, destination_id)

    leads = leads_by_email(await service.leads())
    assert sorted(leads) == ["ann.new@x.io", "ann@x.io"]
    new = leads["ann.new@x.io"]["id"]
    assert await service.lists() == {lists["a1"]: {new}, lists["a2"]: {new}}
    assert counts(flow) == (2, 0, 4, 2)
    assert await outcomes_of(service, destination_id, "p1") == {
        int(T): (ACTIVATED, {CREATED, added("a1"), added("a2")}),
        int(T + 10): (
            ACTIVATED,
            {CREATED, added("a1"), added("a2"), removed("a1"), removed("a2")},
        ),
    }


async def test_an_update_with_nothing_new_makes_no_marketo_call(service: Service) -> None:
    destination_id, lists = await setup(service)
    first = update("p1", "ann@x.io", time=T, audiences={"a1": REALIZED})
    await sync(service, destination_id, [[first]])
    await delivered(service, destination_id)
    before = (await service.control("GET", "calls"))["requests"]
    again = update("p1", "ann@x.io", time=T + 10, audiences={"a1": REALIZED}, note="unmapped")
    await sync(service, destination_id, [[again]])
    flow = await delivered(service, destination_id)

    assert (await service.control("GET", "calls"))["requests"] == before
    (lead,) = [lead["id"] for lead in await service.leads()]
    assert await service.lists() == {lists["a1"]: {lead}}
    assert counts(flow) == (1, 0, 1, 0)
    answer = await service.stub.ListProfileOutcomes(
        pb.ListProfileOutcomesRequest(destination_id=destination_id, profile_id="p1")
    )
    latest = max(answer.outcomes, key=lambda o: o.event_time.seconds)
    assert (latest.kind, list(latest.actions), latest.lead_id) == (ACTIVATED, [], lead)
    assert "nothing needed writing" in latest.reason


async def test_preview_shows_only_the_difference(service: Service) -> None:
    destination_id, _ = await setup(service, audiences=("a1", "a2"))
    await sync(
        service,
        destination_id,
        [[update("p1", "ann@x.io", time=T, audiences={"a1": REALIZED})]],
    )
    await delivered(service, destination_id)
    preview = await service.stub.PreviewSync(
        pb.PreviewSyncRequest(
            destination_id=destination_id,
            updates=[update("p1", "ann@x.io", time=T + 10, audiences={"a1": REALIZED})],
        )
    )
    assert (preview.created, preview.updated) == (0, 0)
    assert [(a.audience_id, a.added, a.removed) for a in preview.audiences] == []

    moved = await service.stub.PreviewSync(
        pb.PreviewSyncRequest(
            destination_id=destination_id,
            updates=[update("p1", "ann.new@x.io", time=T + 10, audiences={"a2": REALIZED})],
        )
    )
    assert (moved.created, moved.updated) == (1, 0)
    # the new lead would join a1 (still desired) and a2; the old lead would leave a1
    assert [(a.audience_id, a.added, a.removed) for a in moved.audiences] == [
        ("a1", 1, 1),
        ("a2", 1, 0),
    ]
