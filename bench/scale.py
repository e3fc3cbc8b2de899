"""Scale-out benchmark: delivered updates per second with 1, 2 and 3 replicas on PostgreSQL.

Twelve Marketo instances, each a sandbox process capped at Marketo's rate (100 calls per window,
the window time-scaled to 2 s; 10 calls in flight) with 10 ms of latency per call. For each
replica count, a fresh database, that many `python -m service serve` processes sharing it
(`MARKETO_DEST_DATABASE_URL`, `MARKETO_DEST_MARKETO_WINDOW_SECONDS=2`), one destination per
instance, and UPDATES_PER_INSTANCE updates per instance streamed through the replicas' gRPC ports
(spread over them). Delivered updates per second = all updates / time from the first Sync until
nothing is pending anywhere (ingestion, dispatch and Marketo calls all included).

Read the figures with the machine in mind: every process (replicas, twelve sandboxes,
PostgreSQL, this driver) shares the same CPUs, so on a 2-core machine more replicas mostly
compete for the same cores. The ceiling from Marketo's limits is instances x allowance x batch
size (12 x 40 calls/s x up to 300 updates), far above what 2 cores reach: the speedup measured
here is CPU-bound. Last line: one JSON object.

Run: .venv/bin/python bench/scale.py [--updates-per-instance N] [--replicas 1,2,3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Run as a script, this folder heads sys.path and bench/sandbox.py would shadow the package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from tests.pg import fresh_database  # noqa: E402
from tests.scale.cluster import Cluster, Replica, profile_update  # noqa: E402

INSTANCES = 12
BATCH = 100
SANDBOX_LIMITS = {
    "calls_per_window": 100,
    "window_seconds": 2,
    "concurrency": 10,
    "latency_ms": 10,
    "daily_quota": 10_000_000,
}
REPLICA_SETTINGS = {
    "MARKETO_DEST_MARKETO_WINDOW_SECONDS": "2",
    "MARKETO_DEST_MARKETO_DAILY_QUOTA": "10000000",
    "MARKETO_DEST_LEASE_TTL_SECONDS": "5",
    "MARKETO_DEST_LINGER_SECONDS": "0.2",
}


async def stop_replicas(running: Cluster) -> None:
    for replica in running.replicas:
        if replica.alive:
            replica.process.send_signal(signal.SIGTERM)
    for replica in running.replicas:
        await replica.process.wait()
        await replica.channel.close()
    running.replicas.clear()


async def measure(running: Cluster, replicas: int, per_instance: int) -> dict[str, Any]:
    """One configuration on a fresh database; the sandboxes are reset first."""
    for sandbox in running.sandboxes:
        await sandbox.control("POST", "reset", SANDBOX_LIMITS)
    running.destinations.clear()
    running.lists.clear()
    with fresh_database("md_bench") as url:
        running.database_url = url
        first = await running.start_replica("replica-0", REPLICA_SETTINGS)
        started: list[Replica] = [first]
        started += await asyncio.gather(
            *(running.start_replica(f"replica-{n}", REPLICA_SETTINGS) for n in range(1, replicas))
        )
        try:
            for index, sandbox in enumerate(running.sandboxes):
                await running.add_destination(sandbox, via=started[index % replicas])
            tasks = []
            for sandbox in running.sandboxes:
                destination_id = running.destinations[sandbox.munchkin_id]
                batches = [
                    [
                        profile_update(
                            sandbox.munchkin_id,
                            n,
                            first="Ada",
                            time=1_780_000_000,
                            update_id=f"u{n}",
                        )
                        for n in range(start, min(start + BATCH, per_instance))
                    ]
                    for start in range(0, per_instance, BATCH)
                ]
                for index, replica in enumerate(started):
                    mine = batches[index::replicas]
                    if mine:
                        tasks.append(running.sync(replica, destination_id, mine))
            began = time.perf_counter()
            accepted = sum(await asyncio.gather(*tasks))
            ingested = time.perf_counter() - began
            await running.wait_delivered(within=240)
            elapsed = time.perf_counter() - began
        finally:
            await stop_replicas(running)
    calls = [await sandbox.calls() for sandbox in running.sandboxes]
    leads = [len(await sandbox.leads()) for sandbox in running.sandboxes]
    throttled = sum(c["by_code"].get("606", 0) + c["by_code"].get("615", 0) for c in calls)
    return {
        "replicas": replicas,
        "updates": accepted,
        "seconds": round(elapsed, 2),
        "ingest_seconds": round(ingested, 2),
        "per_s": round(accepted / elapsed, 1),
        "leads_created": sum(leads),
        "marketo_calls": sum(c["counted"] for c in calls),
        "throttled_606_615": throttled,
        "peak_concurrency": max(c["peak_concurrency"] for c in calls),
    }


async def main(per_instance: int, counts: list[int]) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    print(
        f"{INSTANCES} sandbox instances (100 calls / 2 s, 10 in flight, 10 ms latency), "
        f"{per_instance} updates each; {cores} CPU cores shared by every process "
        "(replicas, sandboxes, PostgreSQL, driver): the speedup is bounded by CPU here, "
        "not by Marketo's per-instance limits",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as directory:
        running = Cluster("", Path(directory))
        try:
            await asyncio.gather(
                *(
                    running.start_sandbox(f"{200 + i}-BEN-{i:03d}", SANDBOX_LIMITS)
                    for i in range(INSTANCES)
                )
            )
            results: dict[int, dict[str, Any]] = {}
            for count in counts:
                result = await measure(running, count, per_instance)
                results[count] = result
                print(json.dumps(result), flush=True)
                if result["leads_created"] != result["updates"]:
                    raise SystemExit(f"wrong Marketo state: {result}")
        finally:
            await running.close()
    summary: dict[str, Any] = {f"per_s_{n}": results[n]["per_s"] for n in counts}
    if 1 in results:
        for n in counts:
            if n != 1:
                summary[f"speedup_{n}"] = round(results[n]["per_s"] / results[1]["per_s"], 2)
    summary["cpu_cores"] = cores
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates-per-instance", type=int, default=3000)
    parser.add_argument("--replicas", default="1,2,3", help="comma-separated replica counts")
    args = parser.parse_args()
    replica_counts = [int(n) for n in args.replicas.split(",")]
    try:
        summary = asyncio.run(main(args.updates_per_instance, replica_counts))
    except Exception as error:  # pytest.skip's exception when PostgreSQL is unreachable
        if type(error).__name__ == "Skipped":
            raise SystemExit(f"bench/scale.py: {error}") from None
        raise
    print(json.dumps(summary))
