"""Marketo calls and seconds to reconcile a list against the desired state.

For lists of 1,000, 10,000 and 100,000 members with 1 % drift (half of it members removed by
hand, half foreign leads added by hand), the reconciliation (`reconcile_list`: read the list,
resolve the missing by dedupe value, add the missing, remove the unexpected) runs with the real
Marketo client against the in-process sandbox (limits raised so the run is not rate-bound; the
sandbox and the client share a stepping clock, so the bulk extract's queue costs no real time).
The set-up (leads, list members, the drift) is made in the sandbox directly and not measured.

Each size prints the calls per endpoint, the seconds and the share of a 50,000-call day; the
target is a 100,000-member list for at most 0.5 % of that day (250 calls). The last line is one
JSON object. Run: `.venv/bin/python bench/reconcile.py`.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.economy import IDENTITY, sandbox_session, spent
from service.domain import DesiredMember
from service.settings import ExtractPolling
from service.usecases.reconcile import reconcile_list

SIZES = (1_000, 10_000, 100_000)
DRIFT = 0.01
DAILY_QUOTA = 50_000
TARGET_SHARE = 0.005
SEED_CHUNK = 10_000


async def run(size: int) -> dict[str, Any]:
    """Reconcile one list of `size` desired members with 1 % drift; its figures."""
    rng = random.Random(size)
    drifted = max(1, round(size * DRIFT / 2))
    async with sandbox_session() as session:
        http, client, clock = session.http, session.client, session.clock
        emails = [f"member{i:06d}@example.com" for i in range(size)]
        foreign = [f"foreign{i:06d}@example.com" for i in range(drifted)]
        ids: list[int] = []
        for start in range(0, size + drifted, SEED_CHUNK):
            chunk = (emails + foreign)[start : start + SEED_CHUNK]
            answer = await http.post(
                "/_sandbox/leads", json={"leads": [{"email": e} for e in chunk]}
            )
            answer.raise_for_status()
            ids.extend(answer.json()["ids"])
        member_ids, foreign_ids = ids[:size], ids[size:]
        folder = await client.folder_by_name("Group Lists")
        assert folder is not None
        list_id = (await client.create_static_list(f"Reconcile {size}", folder.id)).id
        removed_by_hand = set(rng.sample(member_ids, drifted))
        static_list = session.sandbox.state.lists[list_id]
        static_list.members.update(
            dict.fromkeys([i for i in member_ids if i not in removed_by_hand] + foreign_ids)
        )
        desired = [
            DesiredMember(f"p{i}", lead, lead, email)
            for i, (lead, email) in enumerate(zip(member_ids, emails, strict=True))
        ]

        async def load() -> list[DesiredMember]:
            return desired

        before = (await http.get("/_sandbox/calls")).json()["by_endpoint"]
        started = time.perf_counter()
        repair = await reconcile_list(
            client,
            "audience",
            list_id,
            load,
            dedupe_field="email",
            dry_run=False,
            remove_unexpected=True,
            clock=clock,
            polling=ExtractPolling(initial=1.0),
        )
        seconds = time.perf_counter() - started
        after = (await http.get("/_sandbox/calls")).json()["by_endpoint"]
        final = set(static_list.members)

    calls = spent(before, after)
    marketo_calls = sum(n for name, n in calls.items() if name != IDENTITY)
    drift = repair.drift
    # the run must have done the work, not just been cheap
    assert final == set(member_ids), (len(final), size)
    assert (drift.missing, drift.unexpected, drift.added, drift.removed) == (
        drifted,
        drifted,
        drifted,
        drifted,
    ), drift
    return {
        "size": size,
        "calls": marketo_calls,
        "calls_by_endpoint": calls,
        "calls_counted_by_reconcile": repair.calls,
        "seconds": round(seconds, 3),
        "quota_share": round(marketo_calls / DAILY_QUOTA, 6),
        "drift_found": drift.found,
        "drift_repaired": drift.repaired,
    }


async def main() -> None:
    results: dict[int, dict[str, Any]] = {}
    for size in SIZES:
        figures = await run(size)
        results[size] = figures
        print(
            f"{size:>7} members, {figures['drift_found']} drift: {figures['calls']} Marketo calls "
            f"(token calls not counted), {figures['seconds']} s, "
            f"{figures['quota_share'] * 100:.3f} % of a {DAILY_QUOTA:,}-call day"
        )
        print(f"         calls by endpoint: {figures['calls_by_endpoint']}")
    summary: dict[str, Any] = {}
    for size, label in zip(SIZES, ("1k", "10k", "100k"), strict=True):
        summary[f"calls_{label}"] = results[size]["calls"]
        summary[f"quota_share_{label}"] = results[size]["quota_share"]
        summary[f"seconds_{label}"] = results[size]["seconds"]
    summary["target_quota_share_100k"] = TARGET_SHARE
    summary["ok"] = summary["quota_share_100k"] <= TARGET_SHARE
    print(json.dumps(summary))


if __name__ == "__main__":
    asyncio.run(main())
