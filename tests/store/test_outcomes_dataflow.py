"""Outcome listing, dataflow counters and hourly runs, alerts."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from service.domain import ActionType, ExclusionCode
from service.store.base import DataflowRun, DestinationRecord, InvalidPageToken
from service.store.sql import Store
from tests.store.conftest import (
    INSTANCE,
    START,
    FakeClock,
    activated,
    append,
    claimed,
    deliver_daily,
    excluded,
    failed,
    new_destination,
    outcome_update_ids,
    superseded,
    unpack,
    update,
)

HOUR = timedelta(hours=1)


async def test_outcomes_page_newest_first(store: Store, destination: DestinationRecord) -> None:
    updates = [update(n, profile_id="p-even" if n % 2 == 0 else f"p{n}") for n in range(10)]
    await append(store, destination.id, INSTANCE, updates)
    await unpack(store, INSTANCE)
    entries = await store.claim_due(INSTANCE, 100, START)
    for entry in entries:  # one retire each: outcome ids follow the order of retiring
        await store.retire([entry], [activated(entry, ActionType.UPDATED)])

    seen: list[str] = []
    token = ""
    while True:
        page = await store.list_outcomes(destination.id, page_size=4, page_token=token)
        seen.extend(record.outcome.update_id for record in page.items)
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"u{n}" for n in reversed(range(10))]

    by_profile = await store.list_outcomes(destination.id, profile_id="p-even", page_size=2)
    assert [r.outcome.update_id for r in by_profile.items] == ["u8", "u6"]
    rest = await store.list_outcomes(
        destination.id, profile_id="p-even", page_size=10, page_token=by_profile.next_page_token
    )
    assert [r.outcome.update_id for r in rest.items] == ["u4", "u2", "u0"]
    assert rest.next_page_token == ""
    by_dedupe = await store.list_outcomes(destination.id, dedupe_value="p3@example.com")
    assert [r.outcome for r in by_dedupe.items] == [activated(entries[3], ActionType.UPDATED)]
    assert (await store.list_outcomes(destination.id, profile_id="nobody")).items == ()
    with pytest.raises(InvalidPageToken):
        await store.list_outcomes(destination.id, page_token="@@@")


async def test_outcomes_are_per_destination(store: Store, destination: DestinationRecord) -> None:
    other = await store.create_destination(new_destination(name="other"))
    await append(store, destination.id, INSTANCE, [update(1)])
    await append(store, other.id, INSTANCE, [update(1)])
    await unpack(store, INSTANCE)
    entries = await store.claim_due(INSTANCE, 10, START)
    await store.retire(entries, [activated(e, ActionType.UPDATED) for e in entries])

    mine = await store.list_outcomes(destination.id)
    assert [r.destination_id for r in mine.items] == [destination.id]


async def test_dataflow_counts_and_hourly_runs(
    store: Store, destination: DestinationRecord, clock: FakeClock
) -> None:
    # Hour 1 (10:00): 6 received, 3 activated, 1 excluded, 1 failed, 1 superseded.
    await append(store, destination.id, INSTANCE, [update(n) for n in range(6)])
    await unpack(store, INSTANCE)
    e = await store.claim_due(INSTANCE, 10, clock.now)
    await store.retire(
        e[:6],
        [
            activated(e[0], ActionType.CREATED, ActionType.ADDED),
            activated(e[1], ActionType.UPDATED, ActionType.REMOVED),
            activated(e[2], ActionType.UPDATED),
            excluded(e[3], "consent withdrawn"),
            failed(e[4], "1003"),
            superseded(e[5]),
        ],
    )
    # Hour 3 (12:00): 3 received, one of them a re-sent u0 (a duplicate), 1 excluded; one
    # stays pending.
    clock.advance(2 * HOUR)
    await append(store, destination.id, INSTANCE, [update(10), update(0), update(11)])
    assert (await store.dataflow(destination.id, now=clock.now)).pending == 3
    assert await unpack(store, INSTANCE) == 2
    e = await store.claim_due(INSTANCE, 10, clock.now)
    await store.retire(
        e[:1],
        [
            excluded(
                e[0],
                "value rejected by mapping: field 'email' (email): the value does not fit",
                ExclusionCode.VALUE_REJECTED,
                "email",
            )
        ],
    )
    clock.advance(timedelta(minutes=10))

    flow = await store.dataflow(destination.id, hours=4, now=clock.now)

    assert flow.received == 9
    assert flow.duplicates == 1
    assert flow.activated == 3
    assert (flow.created, flow.updated, flow.added, flow.removed) == (1, 2, 1, 1)
    assert flow.excluded == {"consent_refused": 1, "value_rejected": 1}
    assert flow.excluded_by_field == {("value_rejected", "email"): 1}
    assert flow.failed == {"1003": 1}
    assert flow.superseded == 1
    assert flow.pending == 1
    assert flow.oldest_pending_age == timedelta(minutes=10)
    assert flow.paused_until is None
    hour = START.replace(minute=0)
    assert flow.runs == (
        DataflowRun(hour + 2 * HOUR, received=3, activated=0, excluded=1, failed=0, superseded=0),
        DataflowRun(hour + HOUR, 0, 0, 0, 0, 0),
        DataflowRun(hour, received=6, activated=3, excluded=1, failed=1, superseded=1),
        DataflowRun(hour - HOUR, 0, 0, 0, 0, 0),
    )
    assert flow.runs[0].skipped_rate == 1.0
    assert flow.runs[2].skipped_rate == 0.25
    assert flow.runs[1].skipped_rate == 0.0


async def test_empty_dataflow(store: Store, destination: DestinationRecord) -> None:
    flow = await store.dataflow(destination.id, hours=24, now=START)

    assert flow.received == flow.activated == flow.pending == flow.duplicates == 0
    assert flow.oldest_pending_age is None
    assert flow.excluded == {}
    assert flow.excluded_by_field == {}
    assert len(flow.runs) == 24
    assert flow.runs[0].start == START.replace(minute=0)


async def test_alerts_raise_once_and_resolve(
    store: Store, destination: DestinationRecord, clock: FakeClock
) -> None:
    alert, raised = await store.raise_alert(destination.id, "skipped_rate", "2 % skipped")
    assert raised
    clock.advance(timedelta(minutes=5))
    same, raised_again = await store.raise_alert(destination.id, "skipped_rate", "3 % skipped")
    until = START + timedelta(hours=14)
    quota, _ = await store.raise_alert(
        destination.id, "quota_exhausted", "daily quota spent", paused_until=until
    )

    assert not raised_again
    assert same.id == alert.id
    assert same.message == "3 % skipped"
    assert same.raised_at == START
    assert quota.paused_until == until
    assert [a.type for a in await store.open_alerts(destination.id)] == [
        "skipped_rate",
        "quota_exhausted",
    ]

    resolved = await store.resolve_alert(destination.id, "skipped_rate")
    assert resolved is not None
    assert resolved.resolved_at == clock.now
    assert await store.resolve_alert(destination.id, "skipped_rate") is None
    assert [a.id for a in await store.open_alerts(destination.id)] == [quota.id]
    fresh, raised_fresh = await store.raise_alert(destination.id, "skipped_rate", "again")
    assert raised_fresh
    assert fresh.id != alert.id


async def test_purging_deletes_the_oldest_outcomes_a_chunk_at_a_time(
    store: Store, destination: DestinationRecord, clock: FakeClock
) -> None:
    delivered = await deliver_daily(store, destination.id, INSTANCE, clock, days=6)
    before = await store.dataflow(destination.id, hours=24 * 7, now=clock.now)
    cut = START + timedelta(days=4)  # u0 to u3 were recorded before it

    assert await store.purge_outcomes(cut, limit=3) == 3
    assert await outcome_update_ids(store, destination.id) == delivered[3:]
    assert await store.purge_outcomes(cut, limit=3) == 1
    assert await store.purge_outcomes(cut, limit=3) == 0

    assert await outcome_update_ids(store, destination.id) == ["u4", "u5"]
    # The dataflow's counts stay.
    assert await store.dataflow(destination.id, hours=24 * 7, now=clock.now) == before


async def test_purging_stops_at_the_oldest_outcome_that_is_recent_enough(
    store: Store, destination: DestinationRecord, clock: FakeClock
) -> None:
    await deliver_daily(store, destination.id, INSTANCE, clock, days=3)

    assert await store.purge_outcomes(START, limit=100) == 0  # nothing recorded before START
    assert await store.purge_outcomes(START + timedelta(days=10), limit=100) == 3
    assert await outcome_update_ids(store, destination.id) == []


async def test_exclusions_are_counted_by_code_and_field_never_by_description(
    store: Store, destination: DestinationRecord, clock: FakeClock
) -> None:
    # Descriptions that differ per update (as ones quoting the value did) make no new counter.
    count = 200
    await append(store, destination.id, INSTANCE, [update(n) for n in range(count)])
    await unpack(store, INSTANCE)
    entries = await store.claim_due(INSTANCE, count, clock.now)
    outcomes = [
        excluded(e, f"rejected: bad{n}@example", ExclusionCode.VALUE_REJECTED, "email")
        for n, e in enumerate(entries[:-1])
    ]
    outcomes.append(excluded(entries[-1], "no dedupe value", ExclusionCode.MISSING_DEDUPE_VALUE))
    await store.retire(entries, outcomes)

    flow = await store.dataflow(destination.id, now=clock.now)

    assert flow.excluded == {"value_rejected": count - 1, "missing_dedupe_value": 1}
    assert flow.excluded_by_field == {("value_rejected", "email"): count - 1}
    # Per profile, the outcome keeps its code and field.
    page = await store.list_outcomes(destination.id, profile_id=entries[0].update.profile_id)
    (record,) = page.items
    assert record.outcome.exclusion_code is ExclusionCode.VALUE_REJECTED
    assert record.outcome.field == "email"


async def test_kept_fields_are_stored_and_outcomes_found_by_dedupe_key(
    store: Store, destination: DestinationRecord
) -> None:
    first, second = await claimed(store, destination.id, INSTANCE, [1, 2])
    kept = dataclasses.replace(
        activated(first, ActionType.UPDATED), kept_fields=("city", "firstName")
    )
    spelled = dataclasses.replace(activated(second, ActionType.UPDATED), dedupe_value=" Bo@X.io")
    await store.retire([first, second], [kept, spelled])
    (record,) = (await store.list_outcomes(destination.id, dedupe_value="P1@EXAMPLE.com")).items
    assert record.outcome == kept
    (found,) = (await store.list_outcomes(destination.id, dedupe_value="bo@x.io ")).items
    assert found.outcome == spelled
    assert found.outcome.kept_fields == ()
