"""Data the store cannot hold, and update ids used again: each fails only its own update, with
an outcome the caller can see, on both engines; the queue goes on.

Sync refuses a NUL character in any string of an update (PostgreSQL's text cannot hold one);
these tests write such updates straight into the inbox, as a damaged row or an older version
could have, and look at what unpacking and retiring do with them.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from service.domain import (
    UNSTORABLE,
    UPDATE_ID_REUSED,
    ActionType,
    AudienceMembership,
    MembershipStatus,
    OutcomeKind,
    ProfileUpdate,
)
from service.store.base import DestinationRecord
from service.store.sql import Store
from tests.store.conftest import (
    INSTANCE,
    FakeClock,
    activated,
    append,
    unpack,
    update,
)


async def queued_ids(store: Store) -> list[str]:
    return [e.update.update_id for e in await store.claim_due(INSTANCE, 100, FakeClock().now)]


async def failures(store: Store, destination_id: str) -> list[tuple[str, str, str, str]]:
    """(update_id, profile_id, code, reason) of the destination's failed outcomes, oldest first."""
    page = await store.list_outcomes(destination_id, page_size=1000)
    return [
        (r.outcome.update_id, r.outcome.profile_id, r.outcome.marketo_code, r.outcome.reason)
        for r in reversed(page.items)
        if r.outcome.kind is OutcomeKind.FAILED
    ]


def with_nul(where: str) -> ProfileUpdate:
    """update(2) with a NUL character in its string `where`."""
    good = update(2)
    if where == "profile_id":
        return dataclasses.replace(good, profile_id="p\x002")
    if where == "update_id":
        return dataclasses.replace(good, update_id="u\x002")
    if where == "audience_id":
        membership = AudienceMembership("aud\x001", MembershipStatus.REALIZED)
        return dataclasses.replace(good, memberships=(membership,))
    if where == "key":
        return dataclasses.replace(good, profile={"person": {"e\x00mail": "a@example.com"}})
    return dataclasses.replace(good, profile={"person": {"tags": ["ok", "b\x00d"]}})


NUL_PLACES = ["profile_id", "update_id", "audience_id", "key", "value"]


@pytest.mark.parametrize("where", NUL_PLACES)
async def test_an_update_with_a_nul_fails_alone_and_the_queue_goes_on(
    store: Store, destination: DestinationRecord, clock: FakeClock, where: str
) -> None:
    await append(store, destination.id, INSTANCE, [update(1), with_nul(where), update(3)])
    await append(store, destination.id, INSTANCE, [update(4)])

    assert await unpack(store, INSTANCE) == 3

    assert await queued_ids(store) == ["u1", "u3", "u4"]
    [(update_id, profile_id, code, reason)] = await failures(store, destination.id)
    # Its ids as far as they can be stored: a NUL becomes U+FFFD.
    assert (update_id, profile_id, code) == (
        "u\ufffd2" if where == "update_id" else "u2",
        "p\ufffd2" if where == "profile_id" else "p2",
        UNSTORABLE,
    )
    assert "NUL character" in reason
    flow = await store.dataflow(destination.id, now=clock.now)
    assert (flow.received, flow.failed, flow.pending) == (4, {UNSTORABLE: 1}, 3)


async def test_the_reason_names_where_the_nul_is(
    store: Store, destination: DestinationRecord
) -> None:
    await append(store, destination.id, INSTANCE, [with_nul("value")])
    await unpack(store, INSTANCE)

    [(_, _, _, reason)] = await failures(store, destination.id)
    assert "profile.person.tags[1] contains a NUL character" in reason


async def test_an_outcome_that_cannot_be_stored_fails_its_update_alone(
    store: Store, destination: DestinationRecord, clock: FakeClock
) -> None:
    """A dedupe value with a NUL (a transform could make one) does not stop the retire."""
    await append(store, destination.id, INSTANCE, [update(1), update(2)])
    await unpack(store, INSTANCE)
    entries = await store.claim_due(INSTANCE, 10, clock.now)
    bad = dataclasses.replace(activated(entries[1], ActionType.UPDATED), dedupe_value="a\x00b")

    await store.retire(entries, [activated(entries[0], ActionType.UPDATED), bad])

    assert await queued_ids(store) == []
    records = {
        r.outcome.update_id: r.outcome for r in (await store.list_outcomes(destination.id)).items
    }
    assert records["u1"].kind is OutcomeKind.ACTIVATED
    assert (records["u2"].kind, records["u2"].marketo_code) == (OutcomeKind.FAILED, UNSTORABLE)
    assert "dedupe_value contains a NUL character" in records["u2"].reason
    flow = await store.dataflow(destination.id, now=clock.now)
    assert (flow.activated, flow.failed, flow.pending) == (1, {UNSTORABLE: 1}, 0)


# -- an update_id used again ----------------------------------------------------------------------


def changed(n: int, what: str) -> ProfileUpdate:
    """update(n) with the same update_id but other content: `what` differs."""
    first = update(n)
    if what == "profile":
        return dataclasses.replace(first, profile={"person": {"email": "other@example.com"}})
    if what == "event_time":
        return dataclasses.replace(first, event_time=first.event_time + timedelta(seconds=1))
    if what == "memberships":
        return dataclasses.replace(first, memberships=())
    return dataclasses.replace(first, profile_id="someone-else")


CHANGES = ["profile", "event_time", "memberships", "profile_id"]


@pytest.mark.parametrize("what", CHANGES)
async def test_an_update_id_reused_for_other_content_fails_visibly(
    store: Store, destination: DestinationRecord, clock: FakeClock, what: str
) -> None:
    """Queued, delivered, or earlier in the same batch: the first keeps the id, the other fails."""
    await append(store, destination.id, INSTANCE, [update(1), update(2)])
    await unpack(store, INSTANCE)
    entries = await store.claim_due(INSTANCE, 10, clock.now)
    await store.retire(entries[:1], [activated(entries[0], ActionType.UPDATED)])  # u1 delivered
    await append(store, destination.id, INSTANCE, [update(3), changed(3, what)])
    await append(store, destination.id, INSTANCE, [changed(1, what), changed(2, what), update(4)])

    assert await unpack(store, INSTANCE) == 2

    assert await queued_ids(store) == ["u2", "u3", "u4"]
    found = await failures(store, destination.id)
    assert [(update_id.split("#")[0], code) for update_id, _, code, _ in found] == [
        ("u3", UPDATE_ID_REUSED),
        ("u1", UPDATE_ID_REUSED),
        ("u2", UPDATE_ID_REUSED),
    ]
    assert all("already used for an update with different content" in f[3] for f in found)
    assert len({update_id for update_id, _, _, _ in found}) == 3
    flow = await store.dataflow(destination.id, now=clock.now)
    assert (flow.received, flow.activated, flow.duplicates) == (7, 1, 0)
    assert (flow.failed, flow.pending) == ({UPDATE_ID_REUSED: 3}, 3)


async def test_the_same_content_sent_again_stays_a_silent_duplicate(
    store: Store, destination: DestinationRecord, clock: FakeClock
) -> None:
    """Memberships in another order are the same content."""
    first = dataclasses.replace(
        update(1),
        memberships=(
            AudienceMembership("aud-1", MembershipStatus.REALIZED),
            AudienceMembership("aud-2", MembershipStatus.EXITED),
        ),
    )
    again = dataclasses.replace(first, memberships=tuple(reversed(first.memberships)))
    await append(store, destination.id, INSTANCE, [first, update(2)])
    await unpack(store, INSTANCE)
    entries = await store.claim_due(INSTANCE, 10, clock.now)
    await store.retire(entries[:1], [activated(entries[0], ActionType.UPDATED)])
    await append(store, destination.id, INSTANCE, [again, update(2), update(2)])

    assert await unpack(store, INSTANCE) == 0

    assert await failures(store, destination.id) == []
    flow = await store.dataflow(destination.id, now=clock.now)
    assert (flow.received, flow.duplicates, flow.failed, flow.pending) == (5, 3, {}, 1)


async def test_derived_update_ids_tell_content_apart(
    store: Store, destination: DestinationRecord, clock: FakeClock
) -> None:
    """Sent without an update_id, an update's id is a hash of its content: the same content
    is a duplicate, other content another update, never a reused id."""

    def anonymous(n: int) -> ProfileUpdate:
        return dataclasses.replace(update(n), update_id="")

    await append(store, destination.id, INSTANCE, [anonymous(1), anonymous(2), anonymous(1)])
    await append(store, destination.id, INSTANCE, [anonymous(2), changed(1, "profile")])

    assert await unpack(store, INSTANCE) == 2 + 1  # u1's id stays: changed(1) keeps "u1"

    flow = await store.dataflow(destination.id, now=clock.now)
    assert (flow.received, flow.duplicates, flow.failed) == (5, 2, {})
    ids = await queued_ids(store)
    assert len(ids) == 3 and ids[2] == "u1" and all(i.startswith("sha256:") for i in ids[:2])
