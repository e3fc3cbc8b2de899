"""Ingest's caches of destinations and backlogs stay within a bound in bytes however many
destinations are synced to."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from service.api.access import LOCAL_PRINCIPAL, principal_scope
from service.domain import DestinationSpec, MarketoConnection
from service.store.base import ActivationRecord, DestinationRecord, DestinationState, PendingStats
from service.usecases.ingest import IndexedAudiences, Ingest
from tests.harness import retained_memory

AUDIENCES = 50


class _Destinations:
    """Every destination id exists, each with `AUDIENCES` active audiences and no backlog."""

    async def get_destination(self, destination_id: str, *, tenant: str | None) -> Any:
        moment = datetime(2026, 12, 1, tzinfo=UTC)
        return DestinationRecord(
            id=destination_id,
            tenant=tenant or "",
            name=destination_id,
            spec=DestinationSpec("d", MarketoConnection("", ""), None, ""),
            instance_key=f"instance-of-{destination_id}",
            state=DestinationState.ACTIVE,
            paused_until=None,
            created_at=moment,
            updated_at=moment,
            mappings=(object(),),  # type: ignore[arg-type]  # only its presence is read
            version=1,
        )

    async def activations(self, destination_id: str) -> list[ActivationRecord]:
        return [
            ActivationRecord(f"{destination_id}-audience-{n:03}", "", "", n, "")
            for n in range(AUDIENCES)
        ]

    async def pending_stats(self, destination_id: str) -> PendingStats:
        return PendingStats(0, None)


class _NoUpdates:
    count = 0
    memberships: Sequence[IndexedAudiences] = ()

    def encode(self, dropped: Collection[int] = ()) -> bytes:
        raise AssertionError("nothing to store")


async def test_the_caches_of_ingest_stay_within_a_bound_in_bytes() -> None:
    ingest = Ingest(
        _Destinations(),  # type: ignore[arg-type]
        max_backlog=1_000_000,
        max_wait=timedelta(seconds=30),
        cache_seconds=3_600.0,
        max_clock_skew=timedelta(minutes=5),
    )
    with retained_memory() as retained, principal_scope(LOCAL_PRINCIPAL):
        for number in range(3_000):
            submission = await ingest.submit(f"dst_{number:06}", _NoUpdates())
            assert submission.ack().accepted == 0
        del submission
    # 3,000 destinations of 50 audiences each: about 18 MiB when every one is remembered.
    assert retained.bytes < 12 * 1024 * 1024, f"{retained.mib:.0f} MiB retained"
