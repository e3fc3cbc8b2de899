"""External fencing with real processes: a replica frozen (SIGSTOP) in the middle of a batch,
past its lease's TTL, makes no Marketo call when it resumes; the replica that took its instance
over wrote the newer version, and that is what Marketo keeps.

Without the call gate this reproduces the bug: the resumed replica goes on with its batch and
its Sync Leads of the older version lands last.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.scale.cluster import cluster, profile_update

TTL = 3.0
PROFILES = 10
INSTANCE = "300-FNC-001"
SANDBOX = {"latency_ms": 300, "log_calls": True}
"""Each call takes 300 ms: the frozen replica is caught with a call in flight."""
REPLICA_SETTINGS = {
    "MARKETO_DEST_LEASE_TTL_SECONDS": str(TTL),
    "MARKETO_DEST_MARKETO_TIMEOUT_SECONDS": "0.8",
    "MARKETO_DEST_LEASE_CLOCK_SKEW_SECONDS": "0.2",
    "MARKETO_DEST_LINGER_SECONDS": "0.05",
    "MARKETO_DEST_MARKETO_REPLICA_HEADER": "true",
}

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(120)]


def updates(first: str, event_time: float, phase: str) -> list[object]:
    return [
        profile_update(INSTANCE, n, first=first, time=event_time, update_id=f"{phase}-{n}")
        for n in range(PROFILES)
    ]


async def test_a_stalled_holder_makes_no_call_after_resuming(
    postgres_url: str, tmp_path: Path
) -> None:
    async with cluster(postgres_url, tmp_path) as running:
        sandbox = await running.start_sandbox(INSTANCE, SANDBOX)
        stalled = await running.start_replica("replica-a", REPLICA_SETTINGS)
        destination_id = await running.add_destination(sandbox, via=stalled)

        synced_at = time.time()
        await running.sync(stalled, destination_id, [updates("Old", 1_780_000_000, "v1")])
        # Freeze replica-a while a call of its batch is in flight: its look-up of the leads.
        async with asyncio.timeout(30):
            while True:
                log = await sandbox.call_log()
                if any(
                    c["replica"] == "replica-a"
                    and c["call"] == "GET /rest/v1/leads.json"
                    and c["at"] >= synced_at
                    and c["end"] is None
                    for c in log
                ):
                    break
                await asyncio.sleep(0.01)
        running.stop(stalled)
        stopped_at = time.time()

        taker = await running.start_replica("replica-b", REPLICA_SETTINGS)
        await running.sync(taker, destination_id, [updates("New", 1_780_000_100, "v2")])

        async def names() -> set[str]:
            return {lead["fields"].get("firstName") for lead in await sandbox.leads()}

        async with asyncio.timeout(60):
            while len(await sandbox.leads()) < PROFILES or await names() != {"New"}:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        assert time.time() - stopped_at > TTL  # replica-a's lease expired while it was frozen

        running.resume(stalled)
        resumed_at = time.time()
        await asyncio.sleep(3 * TTL)  # the resumed batch would have made its calls by now

        log = await sandbox.call_log()
        assert await names() == {"New"}
        late = [c for c in log if c["replica"] == "replica-a" and c["at"] > stopped_at]
        assert late == [], late
        assert any(c["replica"] == "replica-b" for c in log)
        assert len(await sandbox.leads()) == PROFILES
        codes = (await sandbox.calls())["by_code"]
        assert codes.get("606", 0) == 0 and codes.get("615", 0) == 0, codes
        assert stalled.alive and time.time() > resumed_at
        assert "Marketo call not sent" in stalled.log.read_text(errors="replace")
