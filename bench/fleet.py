"""Fleet benchmark: many Marketo instances, replicas that come and go, limits that hold.

24 Marketo instances (two sandbox processes hosting 12 each, a port per instance), 3 replicas
(`python -m service serve`) on one PostgreSQL database, traffic for every instance from the start;
KILL_AT seconds in, the replica holding the most leases is SIGKILLed, and ADD_AT seconds in a
fourth replica joins. The run ends when nothing is pending anywhere.

Sized so that Marketo's limits bind, not the 2 shared CPU cores: each call takes LATENCY_MS, and
each instance admits only SANDBOX_CALLS calls per WINDOW seconds (Marketo's 100 calls / 20 s,
time-scaled down); the service may use SHARE of the instance's 100 calls per window
(`floor(100 * SHARE)` = ALLOWANCE, 80 % of what the sandbox admits, like 80 of 100 in
production), so a second holder's calls in the same window, or a limiter that forgets the
previous holder's calls, shows as 606 answers. BATCH records per call. Every sandbox logs each
call with the calling replica (`X-Marketo-Dest-Replica`) and its arrival time; a database
trigger logs every change of the lease table.

Figures (the last line is one JSON object):
- utilization: calls made / calls allowed (ALLOWANCE per WINDOW), summed over instances from
  their first call to their last (while they had work); target >= 0.9;
- throttled: 606 + 615 answers; target 0;
- double_drained: calls made by a replica that did not hold the instance's lease at the call's
  arrival (from the call logs against the lease history); target 0;
- takeover_s: longest time an instance of the killed replica, with work left, went without a
  call after the kill; target <= lease TTL + 5 s;
- cpu_us_per_record: CPU seconds (user + system) of every replica per delivered record, in µs;
- projected_cores_per_1000_instances: 1000 instances x Marketo's real allowance (80 calls per
  20 s = 4 calls/s) x the records per call measured here x cpu_us_per_record / 1e6.

Run: .venv/bin/python bench/fleet.py [--updates-per-instance N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

# Run as a script, this folder heads sys.path and bench/sandbox.py would shadow the package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import psycopg  # noqa: E402

from tests.pg import fresh_database  # noqa: E402
from tests.scale.cluster import Cluster, Replica, profile_update  # noqa: E402

INSTANCES = 24
PER_PROCESS = 12
REPLICAS = 3
LATENCY_MS = 200
WINDOW = 4.0
SANDBOX_CALLS = 4
SHARE = 0.03
ALLOWANCE = 3
BATCH = 50
TTL = 6.0
TIMEOUT = 1.5
SKEW = 0.5
KILL_AT = 30.0
ADD_AT = 50.0
REQUEST = 300
"""Updates per Sync request."""
REAL_CALLS_PER_S = 80 / 20
"""Marketo's allowance for this service in production: 80 % of 100 calls per 20 s."""

SANDBOX_LIMITS = {
    "calls_per_window": SANDBOX_CALLS,
    "window_seconds": WINDOW,
    "concurrency": 10,
    "latency_ms": LATENCY_MS,
    "daily_quota": 10_000_000,
    "log_calls": True,
}
REPLICA_SETTINGS = {
    "MARKETO_DEST_MARKETO_WINDOW_SECONDS": str(WINDOW),
    "MARKETO_DEST_MARKETO_SHARE": str(SHARE),
    "MARKETO_DEST_MARKETO_DAILY_QUOTA": "10000000",
    "MARKETO_DEST_BATCH_SIZE": str(BATCH),
    "MARKETO_DEST_BULK_THRESHOLD": "0",
    "MARKETO_DEST_LINGER_SECONDS": "0.05",
    "MARKETO_DEST_LEASE_TTL_SECONDS": str(TTL),
    "MARKETO_DEST_MARKETO_TIMEOUT_SECONDS": str(TIMEOUT),
    "MARKETO_DEST_LEASE_CLOCK_SKEW_SECONDS": str(SKEW),
    "MARKETO_DEST_MARKETO_REPLICA_HEADER": "true",
}
HISTORY = """
CREATE TABLE lease_history (
    at_micros BIGINT NOT NULL, instance_key TEXT NOT NULL, holder TEXT NOT NULL,
    generation BIGINT NOT NULL, expires_at BIGINT NOT NULL);
CREATE FUNCTION log_lease() RETURNS trigger AS $$ BEGIN
    INSERT INTO lease_history VALUES (
        (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint,
        NEW.instance_key, NEW.holder, NEW.generation, NEW.expires_at);
    RETURN NEW; END $$ LANGUAGE plpgsql;
CREATE TRIGGER lease_history AFTER INSERT OR UPDATE ON instance_leases
    FOR EACH ROW EXECUTE FUNCTION log_lease();
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def sql(url: str, query: str) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
        cursor = await connection.execute(query)  # type: ignore[arg-type]
        return await cursor.fetchall() if cursor.description else []


async def feed(running: Cluster, replicas: list[Replica], per_instance: int) -> int:
    """Every instance's updates, in Sync requests spread over the replicas."""
    tasks = []
    for sandbox in running.sandboxes:
        destination_id = running.destinations[sandbox.munchkin_id]
        requests = [
            [
                profile_update(sandbox.munchkin_id, n, first="Ada", time=1.78e9, update_id=f"u{n}")
                for n in range(start, min(start + REQUEST, per_instance))
            ]
            for start in range(0, per_instance, REQUEST)
        ]
        for index, replica in enumerate(replicas):
            mine = requests[index :: len(replicas)]
            if mine:
                tasks.append(running.sync(replica, destination_id, mine))
    return sum(await asyncio.gather(*tasks))


def holder_at(history: list[tuple[int, str, int]], micros: int) -> str | None:
    """Who held the lease at `micros`: the last change before it, if not yet expired."""
    current: str | None = None
    for at, holder, expires in history:
        if at > micros:
            break
        current = holder if expires > micros else None
    return current


async def run(per_instance: int, directory: Path) -> dict[str, Any]:
    running = Cluster("", directory)
    cpu: dict[str, float] = {}
    try:
        for first in range(0, INSTANCES, PER_PROCESS):
            prefix = f"{500 + first // PER_PROCESS}-FLT"
            await running.start_sandboxes(prefix, PER_PROCESS, SANDBOX_LIMITS)
        with fresh_database("md_fleet") as url:
            running.database_url = url
            replicas = [await running.start_replica("replica-0", REPLICA_SETTINGS)]
            replicas += await asyncio.gather(
                *(running.start_replica(f"replica-{n}", REPLICA_SETTINGS) for n in (1, 2))
            )
            await sql(url, HISTORY)
            await asyncio.gather(
                *(
                    running.add_destination(sandbox, via=replicas[index % REPLICAS])
                    for index, sandbox in enumerate(running.sandboxes)
                )
            )
            keys = dict(await sql(url, "SELECT id, instance_key FROM destinations"))
            key_of = {m: keys[d] for m, d in running.destinations.items()}

            began = time.time()
            feeding = asyncio.ensure_future(feed(running, replicas, per_instance))
            await asyncio.sleep(KILL_AT)
            now = int(time.time() * 1e6)
            held = await sql(
                url, f"SELECT holder, instance_key FROM instance_leases WHERE expires_at > {now}"
            )
            by_holder: dict[str, list[str]] = defaultdict(list)
            for holder, key in held:
                by_holder[holder].append(key)
            victim = max(replicas, key=lambda r: len(by_holder[r.name]))
            cpu[victim.name] = cpu_seconds(victim.process.pid)
            await running.kill(victim)
            killed_at = time.time()
            await asyncio.sleep(max(0.0, began + ADD_AT - time.time()))
            await running.start_replica("replica-3", REPLICA_SETTINGS)
            accepted = await feeding
            fed = time.time() - began
            await running.wait_delivered(within=600)
            finished = time.time()
            for replica in running.live():
                cpu[replica.name] = cpu_seconds(replica.process.pid)
            rows = await sql(
                url,
                "SELECT instance_key, at_micros, holder, expires_at FROM lease_history "
                "ORDER BY at_micros",
            )
        history: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
        for key, at, holder, expires in rows:
            history[key].append((at, holder, expires))

        calls_made = allowed = throttled = double = leads = 0
        per_instance: list[float] = []
        takeover = 0.0
        for sandbox in running.sandboxes:
            key = key_of[sandbox.munchkin_id]
            log = [c for c in await sandbox.call_log() if c["at"] >= began]
            codes = (await sandbox.calls())["by_code"]
            throttled += codes.get("606", 0) + codes.get("615", 0)
            leads += len(await sandbox.leads())
            if not log:
                continue
            calls_made += len(log)
            span = max(c["end"] or c["at"] for c in log) - min(c["at"] for c in log)
            allowed += ALLOWANCE * span / WINDOW
            per_instance.append(len(log) / (ALLOWANCE * span / WINDOW))
            double += sum(
                1 for c in log if holder_at(history[key], int(c["at"] * 1e6)) != c["replica"]
            )
            if key in by_holder[victim.name]:
                after = [
                    c["at"] for c in log if c["at"] > killed_at and c["replica"] != victim.name
                ]
                if after:
                    takeover = max(takeover, min(after) - killed_at)
                elif any(c["at"] > killed_at for c in log):
                    takeover = max(takeover, finished - killed_at)
    finally:
        await running.close()
    cpu_total = sum(cpu.values())
    records_per_call = leads / calls_made if calls_made else 0.0
    cpu_us = cpu_total / leads * 1e6 if leads else 0.0
    figures: dict[str, Any] = {
        "instances": INSTANCES,
        "updates": accepted,
        "leads": leads,
        "seconds": round(finished - began, 1),
        "feed_s": round(fed, 1),
        "marketo_calls": calls_made,
        "records_per_call": round(records_per_call, 2),
        "utilization": round(calls_made / allowed, 3) if allowed else 0.0,
        "utilization_min": round(min(per_instance), 3) if per_instance else 0.0,
        "throttled": throttled,
        "double_drained": double,
        "takeover_s": round(takeover, 2),
        "replica_cpu_s": round(cpu_total, 1),
        "cpu_us_per_record": round(cpu_us, 1),
        "projected_cores_per_1000_instances": round(
            1000 * REAL_CALLS_PER_S * records_per_call * cpu_us / 1e6, 2
        ),
        "targets": {
            "utilization": ">= 0.9",
            "throttled": 0,
            "double_drained": 0,
            "takeover_s": f"<= {TTL + 5:g}",
        },
    }
    figures["ok"] = {
        "utilization": figures["utilization"] >= 0.9,
        "throttled": throttled == 0,
        "double_drained": double == 0,
        "takeover_s": 0 < takeover <= TTL + 5,
        "state": leads == accepted,
    }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates-per-instance", type=int, default=1800)
    args = parser.parse_args()
    print(
        f"{INSTANCES} instances ({INSTANCES // PER_PROCESS} sandbox processes), "
        f"{LATENCY_MS} ms per call, {SANDBOX_CALLS} calls / {WINDOW:g} s per instance "
        f"(service: {ALLOWANCE}), "
        f"{BATCH} records per call, {args.updates_per_instance} updates per instance; "
        f"{REPLICAS} replicas, lease TTL {TTL:g} s, call margin {TIMEOUT + SKEW:g} s; "
        f"kill at {KILL_AT:g} s, add at {ADD_AT:g} s; {os.cpu_count()} CPU cores",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as directory:
        try:
            figures = asyncio.run(run(args.updates_per_instance, Path(directory)))
        except Exception as error:  # pytest.skip's exception when PostgreSQL is unreachable
            if type(error).__name__ == "Skipped":
                raise SystemExit(f"bench/fleet.py: {error}") from None
            raise
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
