"""A backfill through REST and through bulk import: Marketo calls and wall time.

One audience of 200,000 members (half of them existing leads) is activated with "Audience and
profile" + "update existing and create new". The sandbox runs in its own process (Marketo is a
remote server: its work does not share our event loop) at Marketo's per-instance limits scaled
10x in time: 100 calls per 2 s window (Marketo: 20 s), 10 concurrent calls, bulk jobs Queued 1 s
and Importing 2 s (10 s and 20 s at Marketo's time); the service's `InstanceLimits` enforce the
same window. Both paths run the real engine and client on real time, batch after batch as the
dispatcher claims them:

- REST only: batches of `Settings.batch_size` (300), `SyncEngine`;
- bulk: the dispatcher's bulk claim (200,000), `BulkSyncEngine` with the default `BulkPolicy`,
  its polling intervals scaled 10x too.

Both runs must end in the same Marketo state (leads, fields, partitions, list members, no
duplicates, every profile activated); the last line is one JSON object.
Run: `.venv/bin/python bench/backfill.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandbox import SandboxSettings
from service.delivery.engine import SyncEngine
from service.delivery.engine.bulk import BulkPolicy, BulkSyncEngine
from service.domain import (
    AudienceMembership,
    MappedProfile,
    MembershipStatus,
    OutcomeKind,
    PersonAction,
    ProfileUpdate,
    SyncRules,
    SyncType,
)
from service.marketo.client import MarketoClient
from service.marketo.clock import SystemClock
from service.marketo.limits import InstanceLimits
from service.settings import RetryPolicy, Settings

MEMBERS = 200_000
EXISTING_SHARE = 0.5
AUDIENCE = "aud-backfill"
TIME_SCALE = 10.0
WINDOW_SECONDS = 20.0 / TIME_SCALE
BULK_CLAIM = 200_000  # the dispatcher's default bulk_batch_size
REST_BATCH = Settings().batch_size
IDENTITY = "POST /identity/oauth/token"
RULES = SyncRules(
    SyncType.AUDIENCE_AND_PROFILE, PersonAction.UPDATE_EXISTING_AND_CREATE_NEW, "email"
)
_DEFAULT = BulkPolicy()
POLICY = BulkPolicy(
    poll_initial=_DEFAULT.poll_initial / TIME_SCALE,
    poll_max=_DEFAULT.poll_max / TIME_SCALE,
    job_timeout=_DEFAULT.job_timeout / TIME_SCALE,
)


class FlatMapper:
    """email (the dedupe field), firstName, lastName, city straight from the profile."""

    def map_profile(self, profile: Mapping[str, Any]) -> MappedProfile:
        person = profile["person"]
        fields = {
            "email": person["email"],
            "firstName": person["first"],
            "lastName": person["last"],
            "city": person["city"],
        }
        return MappedProfile(dedupe_value=person["email"], fields=fields)


def workload(seed: int = 11) -> tuple[list[ProfileUpdate], list[str]]:
    rng = random.Random(seed)
    emails = [f"member{i:06d}@example.com" for i in range(MEMBERS)]
    existing = rng.sample(emails, int(MEMBERS * EXISTING_SHARE))
    now = datetime.now(UTC)
    cities = ("Paris", "Lyon", "Zürich", 'Quote "City", Inc', "Line\nBreak")
    updates = [
        ProfileUpdate(
            update_id=f"u{i}",
            profile_id=f"p{i}",
            event_time=now,
            profile={
                "person": {
                    "email": email,
                    "first": f"First{i}",
                    "last": f"Last{i}",
                    "city": cities[i % len(cities)],
                }
            },
            memberships=(AudienceMembership(AUDIENCE, MembershipStatus.REALIZED),),
        )
        for i, email in enumerate(emails)
    ]
    return updates, existing


@dataclass
class Figures:
    calls: dict[str, int]
    seconds: float
    outcomes: dict[str, int]
    state: tuple[Any, ...]
    jobs: int = 0
    batches: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def marketo_calls(self) -> int:
        return sum(n for name, n in self.calls.items() if name != IDENTITY)


@contextlib.contextmanager
def sandbox_process() -> Iterator[str]:
    """The sandbox in its own process on a free port (Marketo's work is not ours to wait
    for on our core); yields its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("REST endpoint: "):
                yield line.split(": ", 1)[1].strip().removesuffix("/rest")
                return
        raise RuntimeError("the sandbox did not start")
    finally:
        process.terminate()
        process.wait(timeout=30)


async def run(bulk: bool, updates: list[ProfileUpdate], existing: list[str]) -> Figures:
    with sandbox_process() as base_url:
        return await _run(base_url, bulk, updates, existing)


async def _run(
    base_url: str, bulk: bool, updates: list[ProfileUpdate], existing: list[str]
) -> Figures:
    settings = SandboxSettings()
    clock = SystemClock()
    limits = InstanceLimits(
        calls_per_window=100,
        window_seconds=WINDOW_SECONDS,
        share=1.0,
        concurrency=10,
        daily_quota=10_000_000,
        clock=clock,
    )
    async with httpx.AsyncClient(
        base_url=base_url, timeout=120.0, limits=httpx.Limits(max_connections=20)
    ) as http:
        scaled = {
            "calls_per_window": 100,
            "window_seconds": WINDOW_SECONDS,
            "concurrency": 10,
            "daily_quota": 10_000_000,
            "bulk_queue_seconds": 10.0 / TIME_SCALE,
            "bulk_import_seconds": 20.0 / TIME_SCALE,
        }
        (await http.post("/_sandbox/reset", json=scaled)).raise_for_status()
        client = MarketoClient(
            http,
            base_url=base_url,
            client_id=settings.client_id,
            client_secret=settings.client_secret,
            limits=limits,
            clock=clock,
            retry=RetryPolicy(rng=random.Random(1)),
        )
        for start in range(0, len(existing), 20_000):
            seeded = [
                {"email": e, "firstName": "Old", "lastName": "Lead"}
                for e in existing[start : start + 20_000]
            ]
            (await http.post("/_sandbox/leads", json={"leads": seeded})).raise_for_status()
        folder = await client.folder_by_name("Group Lists")
        assert folder is not None
        list_id = (await client.create_static_list("Backfill audience", folder.id)).id
        before = (await http.get("/_sandbox/calls")).json()["by_endpoint"]

        lists = {AUDIENCE: list_id}
        engine: SyncEngine
        if bulk:
            engine = BulkSyncEngine(
                client, RULES, FlatMapper(), clock=clock, policy=POLICY, audience_lists=lists
            )
            size = BULK_CLAIM
        else:
            engine = SyncEngine(client, RULES, FlatMapper(), audience_lists=lists)
            size = REST_BATCH
        outcomes: dict[str, int] = {}
        deferred = 0
        batches = 0
        started = time.perf_counter()
        for start in range(0, len(updates), size):
            result = await engine.sync(updates[start : start + size])
            batches += 1
            deferred += len(result.deferred)
            for outcome in result.outcomes:
                outcomes[outcome.kind.value] = outcomes.get(outcome.kind.value, 0) + 1
        seconds = time.perf_counter() - started

        after = (await http.get("/_sandbox/calls")).json()["by_endpoint"]
        leads = (await http.get("/_sandbox/leads")).json()["leads"]
        dump = (await http.get("/_sandbox/lists")).json()["lists"]
    calls = {
        name: entry["calls"] - before.get(name, {}).get("calls", 0)
        for name, entry in after.items()
        if entry["calls"] - before.get(name, {}).get("calls", 0)
    }
    assert deferred == 0, deferred
    assert outcomes == {OutcomeKind.ACTIVATED.value: MEMBERS}, outcomes
    email_of = {lead["id"]: lead["fields"]["email"] for lead in leads}
    (members,) = [item["members"] for item in dump if item["id"] == list_id]
    state = (
        sorted(
            (lead["fields"]["email"], lead["partition"], sorted(lead["fields"].items()))
            for lead in leads
        ),
        sorted(email_of[i] for i in members),
    )
    assert len(leads) == MEMBERS and len(set(email_of.values())) == MEMBERS  # no duplicates
    assert len(members) == MEMBERS
    jobs = len(engine.jobs) if isinstance(engine, BulkSyncEngine) else 0
    return Figures(calls, seconds, outcomes, state, jobs=jobs, batches=batches)


def report(name: str, figures: Figures) -> None:
    print(f"== {name}: {figures.batches} batches")
    for endpoint, count in sorted(figures.calls.items()):
        print(f"   {endpoint:<50} {count:>6}")
    jobs = f", {figures.jobs} import jobs" if figures.jobs else ""
    print(
        f"   Marketo calls {figures.marketo_calls} (token calls not counted){jobs}; "
        f"wall time {figures.seconds:.1f} s ({figures.marketo_calls / figures.seconds:.1f} "
        f"calls/s; the window allows 50); outcomes {figures.outcomes}"
    )


async def main() -> None:
    updates, existing = workload()
    print(
        f"{MEMBERS} members of one audience, {len(existing)} existing leads; Audience and profile,"
        f" update existing and create new. Sandbox and InstanceLimits: 100 calls / "
        f"{WINDOW_SECONDS:g} s, concurrency 10 (Marketo's limits at {TIME_SCALE:g}x time); "
        f"bulk jobs Queued {10 / TIME_SCALE:g} s + Importing {20 / TIME_SCALE:g} s."
    )
    rest = await run(False, updates, existing)
    report(f"REST only (batches of {REST_BATCH})", rest)
    bulk = await run(True, updates, existing)
    report(f"bulk import (claims of {BULK_CLAIM})", bulk)
    assert bulk.state == rest.state, "the two paths ended in different Marketo states"
    print("   final Marketo states identical (leads, fields, partitions, list members)")
    ratio = bulk.marketo_calls / rest.marketo_calls
    speedup = rest.seconds / bulk.seconds
    print(
        json.dumps(
            {
                "call_ratio": round(ratio, 4),
                "speedup": round(speedup, 2),
                "rest_calls": rest.marketo_calls,
                "bulk_calls": bulk.marketo_calls,
                "rest_seconds": round(rest.seconds, 1),
                "bulk_seconds": round(bulk.seconds, 1),
                "bulk_jobs": bulk.jobs,
                "members": MEMBERS,
                "time_scale": TIME_SCALE,
                "same_state": True,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
