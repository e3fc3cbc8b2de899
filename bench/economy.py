"""Marketo calls spent by the sync engine, against the floor.

10,000 profile updates (70 % of them existing leads, 30 % new, memberships of 3 audiences) go
through the engine, the real Marketo client and the in-process sandbox (limits raised so the run
is not rate-bound). For each sync type the script prints the calls per endpoint, the floor

    ceil(look-ups/300) + ceil(updates/300) + ceil(creates/300) + sum over lists ceil(members/300)

and the ratio; the last line is one JSON object. Run: `.venv/bin/python bench/economy.py`.

The steady-state case delivers 2,000 profiles once (not measured), then 10,000 updates over
them (five batches, each profile once per batch), 60 % of which touch unmapped fields only
(their memberships repeated as they are); the others change a mapped attribute, join an
audience or leave one. The engine is given the stored state the way delivery does (each batch's
result folded in), and its floor counts only real changes: a look-up and an update per profile
whose mapped attributes changed, a list call per 300 joins or exits per list. Every profile stays
a member of at least one audience (a destination exports the members of its audiences only).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandbox import ManualClock, SandboxSettings, asgi_transport, create_app
from sandbox.app import Sandbox
from service.delivery.engine import Deferred, SyncEngine
from service.domain import (
    AudienceMembership,
    DesiredState,
    MappedProfile,
    MembershipStatus,
    Outcome,
    OutcomeKind,
    PersonAction,
    ProfileUpdate,
    SyncRules,
    SyncType,
)
from service.marketo.client import MarketoClient
from service.marketo.limits import InstanceLimits
from service.marketo.types import Lead, MembershipResult, RecordResult, SyncAction
from service.settings import RetryPolicy

BASE_URL = "https://123-ABC-456.mktorest.com"
UPDATES = 10_000
EXISTING_SHARE = 0.7
AUDIENCES = ("aud-1", "aud-2", "aud-3")
PER_CALL = 300
IDENTITY = "POST /identity/oauth/token"


class SteppingClock:
    """Sandbox and client share one clock; a backoff moves it instead of sleeping."""

    def __init__(self) -> None:
        self.manual = ManualClock(time.time())

    def now(self) -> float:
        return self.manual.now()

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.manual.advance(seconds)


class FlatMapper:
    """email, firstName, lastName straight from the profile; email is the dedupe field."""

    def map_profile(self, profile: Mapping[str, Any]) -> MappedProfile:
        person = profile["person"]
        fields = {
            "email": person["email"],
            "firstName": person["first"],
            "lastName": person["last"],
        }
        return MappedProfile(dedupe_value=person["email"], fields=fields)


class CountingPort:
    """The real client, counting the engine's calls per operation (look-ups and syncs share
    Marketo's `/rest/v1/leads.json`, so the sandbox's per-endpoint counters cannot tell them
    apart)."""

    def __init__(self, client: MarketoClient) -> None:
        self.client = client
        self.calls: dict[str, int] = {}

    def _count(self, name: str, size: int) -> None:
        self.calls[name] = self.calls.get(name, 0) + math.ceil(size / PER_CALL)

    async def find_leads(
        self, filter_type: str, values: Sequence[str], fields: Sequence[str]
    ) -> list[Lead]:
        self._count("lookup", len(values))
        return await self.client.find_leads(filter_type, values, fields)

    async def sync_leads(
        self, records: Sequence[Mapping[str, Any]], *, action: SyncAction, **kw: Any
    ) -> list[RecordResult]:
        self._count(str(action), len(records))
        return await self.client.sync_leads(records, action=action, **kw)

    async def add_to_list(self, list_id: int, lead_ids: Sequence[int]) -> list[MembershipResult]:
        self._count(f"add to list {list_id}", len(lead_ids))
        return await self.client.add_to_list(list_id, lead_ids)

    async def remove_from_list(
        self, list_id: int, lead_ids: Sequence[int]
    ) -> list[MembershipResult]:
        self._count(f"remove from list {list_id}", len(lead_ids))
        return await self.client.remove_from_list(list_id, lead_ids)


@dataclass(frozen=True)
class Workload:
    updates: list[ProfileUpdate]
    existing: list[str]
    members: dict[str, int]


def workload(seed: int = 42) -> Workload:
    rng = random.Random(seed)
    emails = [f"person{i:05d}@example.com" for i in range(UPDATES)]
    existing = rng.sample(emails, int(UPDATES * EXISTING_SHARE))
    members = dict.fromkeys(AUDIENCES, 0)
    updates = []
    now = datetime.now(UTC)
    for i, email in enumerate(emails):
        # each profile is in one to three of the audiences
        joined = [a for a in AUDIENCES if rng.random() < 0.6] or [rng.choice(AUDIENCES)]
        for audience in joined:
            members[audience] += 1
        updates.append(
            ProfileUpdate(
                update_id=f"u{i}",
                profile_id=f"p{i}",
                event_time=now,
                profile={"person": {"email": email, "first": f"First{i}", "last": f"Last{i}"}},
                memberships=tuple(AudienceMembership(a, MembershipStatus.REALIZED) for a in joined),
            )
        )
    return Workload(updates, existing, members)


def ceil300(count: int) -> int:
    return math.ceil(count / PER_CALL)


@dataclass(frozen=True, slots=True)
class Session:
    """An in-process sandbox (limits raised) and the real client on one stepping clock."""

    http: httpx.AsyncClient
    client: MarketoClient
    sandbox: Sandbox
    """The sandbox itself, for set-ups too large to make through its API."""
    clock: SteppingClock


@asynccontextmanager
async def sandbox_session() -> AsyncIterator[Session]:
    """A `Session` open for the block."""
    clock = SteppingClock()
    settings = SandboxSettings(
        calls_per_window=1_000_000, concurrency=1_000, daily_quota=10_000_000
    )
    app = create_app(settings, clock=clock.manual)
    limits = InstanceLimits(
        calls_per_window=1_000_000, share=1.0, concurrency=8, daily_quota=10_000_000, clock=clock
    )
    async with httpx.AsyncClient(transport=asgi_transport(app), base_url=BASE_URL) as http:
        client = MarketoClient(
            http,
            base_url=BASE_URL,
            client_id=settings.client_id,
            client_secret=settings.client_secret,
            limits=limits,
            clock=clock,
            retry=RetryPolicy(rng=random.Random(1)),
        )
        yield Session(http, client, app.state.sandbox, clock)


@asynccontextmanager
async def sandboxed() -> AsyncIterator[tuple[httpx.AsyncClient, MarketoClient]]:
    """An in-process sandbox (limits raised) and the real client on one stepping clock."""
    async with sandbox_session() as session:
        yield session.http, session.client


def spent(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, int]:
    """Calls per endpoint between two snapshots of the sandbox's counters."""
    return {
        name: entry["calls"] - before.get(name, {}).get("calls", 0)
        for name, entry in after.items()
        if entry["calls"] - before.get(name, {}).get("calls", 0)
    }


async def run(rules: SyncRules, work: Workload, *, batch: int = UPDATES) -> dict[str, Any]:
    async with sandboxed() as (http, client):
        seeded = [{"email": e, "firstName": "Old", "lastName": "Lead"} for e in work.existing]
        response = await http.post("/_sandbox/leads", json={"leads": seeded})
        response.raise_for_status()
        folder = await client.folder_by_name("Group Lists")
        assert folder is not None
        lists = {
            a: (await client.create_static_list(f"Audience {a}", folder.id)).id for a in AUDIENCES
        }
        before = (await http.get("/_sandbox/calls")).json()["by_endpoint"]

        port = CountingPort(client)
        engine = SyncEngine(port, rules, FlatMapper(), audience_lists=lists)
        started = time.perf_counter()
        outcomes: list[Outcome] = []
        deferred: list[Deferred] = []
        for start in range(0, len(work.updates), batch):
            result = await engine.sync(work.updates[start : start + batch])
            outcomes.extend(result.outcomes)
            deferred.extend(result.deferred)
        elapsed = time.perf_counter() - started

        after = (await http.get("/_sandbox/calls")).json()["by_endpoint"]
        leads = (await http.get("/_sandbox/leads")).json()["leads"]
        list_dump = (await http.get("/_sandbox/lists")).json()["lists"]

    calls = spent(before, after)
    assert not deferred, deferred[:3]
    kinds: dict[str, int] = {}
    for outcome in outcomes:
        kinds[outcome.kind.value] = kinds.get(outcome.kind.value, 0) + 1
    existing = len(work.existing)
    new = UPDATES - existing
    lookups = UPDATES
    updates = existing if rules.writes_attributes else 0
    creates = new if rules.creates_leads else 0
    list_members = {a: 0 for a in AUDIENCES}
    if rules.manages_lists:
        known = set(work.existing)
        for update in work.updates:
            email = update.profile["person"]["email"]
            if email in known or rules.creates_leads:
                for m in update.memberships:
                    list_members[m.audience_id] += 1
    floor_parts = {
        "lookup": ceil300(lookups),
        "updateOnly": ceil300(updates),
        "createOnly": ceil300(creates),
        "lists": sum(ceil300(n) for n in list_members.values()),
    }
    # the run must have done the work, not just been cheap
    expected_leads = existing + creates
    assert len(leads) == expected_leads, (len(leads), expected_leads)
    sizes = {item["name"]: len(item["members"]) for item in list_dump}
    for audience, count in list_members.items():
        assert sizes[f"Audience {audience}"] == count, (audience, sizes, count)
    assert kinds.get(OutcomeKind.FAILED.value, 0) == 0, kinds
    return figures(calls, port, floor_parts, kinds, elapsed, list_members)


STEADY_PROFILES = 2_000
STEADY_ROUNDS = 5
UNMAPPED_SHARE = 0.6


def _steady_update(
    i: int, round_: int, first: str, members: set[str], note: str, changes: list[str]
) -> ProfileUpdate:
    memberships = [AudienceMembership(a, MembershipStatus.REALIZED) for a in sorted(members)]
    memberships += [AudienceMembership(a, MembershipStatus.EXITED) for a in changes]
    return ProfileUpdate(
        update_id=f"s{round_}-{i}",
        profile_id=f"sp{i}",
        event_time=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=round_),
        profile={
            "person": {
                "email": f"steady{i:05d}@example.com",
                "first": first,
                "last": f"Last{i}",
                "note": note,
            }
        },
        memberships=tuple(memberships),
    )


async def steady(rules: SyncRules, seed: int = 7) -> dict[str, Any]:
    """Calls spent on 10,000 updates of 2,000 profiles already delivered, against the floor of
    their real changes."""
    rng = random.Random(seed)
    async with sandboxed() as (http, client):
        folder = await client.folder_by_name("Group Lists")
        assert folder is not None
        lists = {
            a: (await client.create_static_list(f"Audience {a}", folder.id)).id for a in AUDIENCES
        }
        port = CountingPort(client)
        engine = SyncEngine(
            port, rules, FlatMapper(), audience_lists=lists, tracked_lists=list(lists)
        )
        firsts = [f"First{i}" for i in range(STEADY_PROFILES)]
        # every profile stays a member of an audience: a member of none is not exported
        members = [
            {a for a in AUDIENCES if rng.random() < 0.5} or {rng.choice(AUDIENCES)}
            for _ in range(STEADY_PROFILES)
        ]
        warm = [_steady_update(i, 0, firsts[i], members[i], "", []) for i in range(STEADY_PROFILES)]
        result = await engine.sync(warm, state=DesiredState())
        assert not result.deferred
        state = result.folded(DesiredState())
        port.calls.clear()
        before = (await http.get("/_sandbox/calls")).json()["by_endpoint"]

        floor_parts = {"lookup": 0, "updateOnly": 0, "lists": 0}
        outcomes: list[Outcome] = []
        started = time.perf_counter()
        for round_ in range(1, STEADY_ROUNDS + 1):
            changed = 0
            joins = dict.fromkeys(AUDIENCES, 0)
            exits = dict.fromkeys(AUDIENCES, 0)
            batch: list[ProfileUpdate] = []
            order = list(range(STEADY_PROFILES))
            rng.shuffle(order)
            for i in order:
                draw = rng.random()
                outside = [a for a in AUDIENCES if a not in members[i]]
                left: list[str] = []
                if draw < UNMAPPED_SHARE:
                    note = f"seen {round_}"  # an unmapped field only
                elif (
                    draw < 0.8
                    or (draw < 0.9 and not outside)
                    or (draw >= 0.9 and len(members[i]) < 2)
                ):
                    firsts[i] = f"First{i}-{round_}"
                    changed += 1
                    note = ""
                elif draw < 0.9:
                    audience = rng.choice(outside)
                    members[i].add(audience)
                    joins[audience] += 1
                    note = ""
                else:
                    audience = rng.choice(sorted(members[i]))
                    members[i].discard(audience)
                    left.append(audience)
                    exits[audience] += 1
                    note = ""
                batch.append(_steady_update(i, round_, firsts[i], members[i], note, left))
            floor_parts["lookup"] += ceil300(changed)
            floor_parts["updateOnly"] += ceil300(changed)
            floor_parts["lists"] += sum(ceil300(n) for n in (*joins.values(), *exits.values()))
            result = await engine.sync(batch, state=state)
            assert not result.deferred, result.deferred[:3]
            outcomes.extend(result.outcomes)
            state = result.folded(state)
        elapsed = time.perf_counter() - started

        after = (await http.get("/_sandbox/calls")).json()["by_endpoint"]
        list_dump = (await http.get("/_sandbox/lists")).json()["lists"]
    calls = spent(before, after)
    kinds: dict[str, int] = {}
    for outcome in outcomes:
        kinds[outcome.kind.value] = kinds.get(outcome.kind.value, 0) + 1
    assert kinds.get(OutcomeKind.FAILED.value, 0) == 0, kinds
    # the run must have done the work: each list holds exactly the desired members
    sizes = {item["name"]: len(item["members"]) for item in list_dump}
    for audience in AUDIENCES:
        expected = sum(1 for m in members if audience in m)
        assert sizes[f"Audience {audience}"] == expected, (audience, sizes, expected)
    list_members = {a: sum(1 for m in members if a in m) for a in AUDIENCES}
    return figures(calls, port, floor_parts, kinds, elapsed, list_members)


def figures(
    calls: Mapping[str, int],
    port: CountingPort,
    floor_parts: Mapping[str, int],
    kinds: Mapping[str, int],
    elapsed: float,
    list_members: Mapping[str, int],
) -> dict[str, Any]:
    """A run's figures: calls (token calls not counted) against the floor, and what it did."""
    floor = sum(floor_parts.values())
    marketo_calls = sum(n for name, n in calls.items() if name != IDENTITY)
    return {
        "calls_by_endpoint": dict(calls),
        "calls_by_operation": port.calls,
        "floor_parts": dict(floor_parts),
        "calls": marketo_calls,
        "floor": floor,
        "ratio": round(marketo_calls / floor, 4),
        "outcomes": dict(kinds),
        "seconds": round(elapsed, 2),
        "list_members": dict(list_members),
    }


def report(name: str, figures: Mapping[str, Any]) -> None:
    print(f"== {name}")
    for endpoint, count in sorted(figures["calls_by_endpoint"].items()):
        print(f"   {endpoint:<45} {count:>5}")
    print(f"   engine calls by operation: {figures['calls_by_operation']}")
    print(f"   floor parts: {figures['floor_parts']}")
    print(
        f"   Marketo calls {figures['calls']} (token calls not counted), floor {figures['floor']}, "
        f"ratio {figures['ratio']:.4f}; outcomes {figures['outcomes']}; "
        f"list members {figures['list_members']}; {figures['seconds']} s"
    )


async def main() -> None:
    work = workload()
    create = PersonAction.UPDATE_EXISTING_AND_CREATE_NEW
    both = await run(SyncRules(SyncType.AUDIENCE_AND_PROFILE, create, "email"), work)
    report("Audience and profile, update existing and create new", both)
    profile = await run(SyncRules(SyncType.PROFILE_ONLY, create, "email"), work)
    report("Profile only, update existing and create new", profile)
    audience = await run(SyncRules(SyncType.AUDIENCE_ONLY, None, "email"), work)
    report("Audience only", audience)
    small = await run(SyncRules(SyncType.AUDIENCE_AND_PROFILE, create, "email"), work, batch=300)
    print(
        f"(for comparison: Audience and profile fed in batches of 300 spends {small['calls']} "
        f"calls, ratio {small['ratio']:.4f}: give the engine large batches)"
    )
    steady_state = await steady(SyncRules(SyncType.AUDIENCE_AND_PROFILE, create, "email"))
    report("Steady state: 10,000 updates of 2,000 known profiles, 60 % unmapped only", steady_state)
    print(
        json.dumps(
            {
                "ratio": both["ratio"],
                "calls": both["calls"],
                "floor": both["floor"],
                "ratio_profile_only": profile["ratio"],
                "ratio_audience_only": audience["ratio"],
                "ratio_steady": steady_state["ratio"],
                "calls_steady": steady_state["calls"],
                "floor_steady": steady_state["floor"],
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
