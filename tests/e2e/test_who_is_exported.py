"""Who is exported, end to end (issue 21): a destination exports the members of its activated
audiences, for Profile only and Audience and profile, through the gRPC API against the sandbox."""

from __future__ import annotations

import pytest

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from tests.e2e.test_sync import EXITED, REALIZED, delivered, setup, sync
from tests.e2e.test_truthful_outcomes import leads_by_email, outcomes_of
from tests.harness import Service, update

T = 1_780_000_000.0

ACTIVATED = pb.OUTCOME_KIND_ACTIVATED
EXCLUDED = pb.OUTCOME_KIND_EXCLUDED
CREATED = (pb.ACTION_TYPE_CREATED, "")
UPDATED = (pb.ACTION_TYPE_UPDATED, "")
ADDED = (pb.ACTION_TYPE_ADDED, "a1")
REMOVED = (pb.ACTION_TYPE_REMOVED, "a1")

SYNC_TYPES = pytest.mark.parametrize(
    "sync_type",
    [pb.SYNC_TYPE_PROFILE_ONLY, pb.SYNC_TYPE_AUDIENCE_AND_PROFILE],
    ids=["profile only", "audience and profile"],
)


def counts(flow: pb.Dataflow) -> tuple[int, int, int, int]:
    c = flow.activated
    return (c.created, c.updated, c.added, c.removed)


async def list_calls(service: Service) -> int:
    """List membership calls the sandbox answered so far."""
    by_endpoint = (await service.control("GET", "calls"))["by_endpoint"]
    return sum(int(e["calls"]) for name, e in by_endpoint.items() if "/lists/" in name)


async def members(service: Service, lists: dict[str, int]) -> set[int] | None:
    """The members of a1's list; None when the destination keeps no list."""
    return (await service.lists()).get(lists["a1"]) if lists["a1"] else None


async def with_a_member(service: Service, sync_type: int) -> tuple[str, dict[str, int]]:
    """A destination of `sync_type` activating a1, and p1 (ann@x.io) delivered as its member
    at T: its id and audience -> list id."""
    destination_id, lists = await setup(service, sync_type=sync_type)
    entry = update("p1", "ann@x.io", time=T, audiences={"a1": REALIZED})
    await sync(service, destination_id, [[entry]])
    await delivered(service, destination_id)
    return destination_id, lists


@SYNC_TYPES
async def test_a_profile_never_a_member_creates_nothing(service: Service, sync_type: int) -> None:
    destination_id, lists = await setup(service, sync_type=sync_type)
    await sync(service, destination_id, [[update("p1", "ann@x.io", time=T, audiences={})]])
    flow = await delivered(service, destination_id)

    assert await service.leads() == []
    assert await members(service, lists) in (None, set())
    assert counts(flow) == (0, 0, 0, 0)
    assert (flow.received, dict(flow.excluded)) == (1, {"no_audience": 1})
    answer = await service.stub.ListProfileOutcomes(
        pb.ListProfileOutcomesRequest(destination_id=destination_id, profile_id="p1")
    )
    ((kind, code, actions),) = [
        (o.kind, o.exclusion_code, list(o.actions)) for o in answer.outcomes
    ]
    assert (kind, code, actions) == (EXCLUDED, "no_audience", [])


@SYNC_TYPES
async def test_a_member_that_exits_its_only_audience_is_no_longer_exported(
    service: Service, sync_type: int
) -> None:
    keeps_lists = sync_type == pb.SYNC_TYPE_AUDIENCE_AND_PROFILE
    destination_id, lists = await with_a_member(service, sync_type)
    (lead,) = [lead["id"] for lead in await service.leads()]
    assert await members(service, lists) == ({lead} if keeps_lists else None)

    exit_ = update("p1", "ann@x.io", first="Leaving", time=T + 10, audiences={"a1": EXITED})
    later = update("p1", "ann@x.io", first="Later", time=T + 20, audiences={})
    await sync(service, destination_id, [[exit_]])
    await delivered(service, destination_id)
    await sync(service, destination_id, [[later]])
    flow = await delivered(service, destination_id)

    leads = leads_by_email(await service.leads())
    assert sorted(leads) == ["ann@x.io"]
    assert leads["ann@x.io"]["fields"]["firstName"] == "Ada", "nothing written after the exit"
    assert await members(service, lists) == (set() if keeps_lists else None)
    outcomes = await outcomes_of(service, destination_id, "p1")
    if keeps_lists:
        assert outcomes == {
            int(T): (ACTIVATED, {CREATED, ADDED}),
            int(T + 10): (ACTIVATED, {REMOVED}),
            int(T + 20): (EXCLUDED, set()),
        }
        assert counts(flow) == (1, 0, 1, 1)
        assert dict(flow.excluded) == {"no_audience": 1}
    else:
        assert outcomes == {
            int(T): (ACTIVATED, {CREATED}),
            int(T + 10): (EXCLUDED, set()),
            int(T + 20): (EXCLUDED, set()),
        }
        assert counts(flow) == (1, 0, 0, 0)
        assert dict(flow.excluded) == {"no_audience": 2}


@SYNC_TYPES
async def test_an_attribute_only_update_of_a_member_is_written_without_a_list_call(
    service: Service, sync_type: int
) -> None:
    keeps_lists = sync_type == pb.SYNC_TYPE_AUDIENCE_AND_PROFILE
    destination_id, lists = await with_a_member(service, sync_type)
    before = await list_calls(service)

    attributes = update("p1", "ann@x.io", first="Anna", time=T + 10, audiences={})
    await sync(service, destination_id, [[attributes]])
    flow = await delivered(service, destination_id)

    leads = leads_by_email(await service.leads())
    lead = leads["ann@x.io"]
    assert lead["fields"]["firstName"] == "Anna"
    assert await list_calls(service) == before
    assert await members(service, lists) == ({lead["id"]} if keeps_lists else None)
    outcomes = await outcomes_of(service, destination_id, "p1")
    assert outcomes[int(T + 10)] == (ACTIVATED, {UPDATED})
    assert counts(flow) == (1, 1, 1 if keeps_lists else 0, 0)
    assert dict(flow.excluded) == {}


async def test_the_newest_attributes_win_when_a_lagging_entry_exports_the_profile(
    service: Service,
) -> None:
    """An attribute update of a profile in no audience writes nothing, yet its attributes are
    the newest: the older entry that exports the profile later creates the lead with them."""
    destination_id, lists = await setup(service)
    newer = update("p1", "ann@x.io", first="Newer", time=T + 10, audiences={})
    await sync(service, destination_id, [[newer]])
    await delivered(service, destination_id)
    assert await service.leads() == []
    assert await resynced(service, destination_id) == 0, "nothing applied to resync"

    entry = update("p1", "ann@x.io", first="Entry", time=T, audiences={"a1": REALIZED})
    await sync(service, destination_id, [[entry]])
    flow = await delivered(service, destination_id)

    lead = leads_by_email(await service.leads())["ann@x.io"]
    assert lead["fields"]["firstName"] == "Newer"
    assert await service.lists() == {lists["a1"]: {lead["id"]}}
    assert await outcomes_of(service, destination_id, "p1") == {
        int(T + 10): (EXCLUDED, set()),
        int(T): (ACTIVATED, {CREATED, ADDED}),
    }
    assert counts(flow) == (1, 0, 1, 0)
    assert await resynced(service, destination_id) == 1  # the attributes applied now


async def resynced(service: Service, destination_id: str) -> int:
    """The profiles a Resync of the destination would write (a dry run)."""
    request = pb.ResyncRequest(destination_id=destination_id, dry_run=True)
    return (await service.stub.Resync(request)).profiles
