"""Crashes: the service is SIGKILLed at random (seeded) moments while it delivers, at least five
times, and restarted on the same data directory; the end state must be exactly the chaos test's.

The service and two Marketo sandboxes (two instances, four destinations) run as separate
processes on real ports; the sandboxes keep their state across the service's deaths.
"""

from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path
from typing import Any

import httpx

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from tests.harness import STANDARD_MAPPINGS, spec
from tests.processes import ServiceProcess, dataflow, sandbox_process, stub
from tests.reliability import workload
from tests.reliability.profile import PROFILE, SEED, record

INSTANCES = ("111-AAA-111", "222-BBB-222")
REQUEST_SIZE = 250
SERVICE_ENV = {
    "MARKETO_DEST_BATCH_SIZE": "50",
    "MARKETO_DEST_LEASE_TTL_SECONDS": "2",
    "MARKETO_DEST_MARKETO_TIMEOUT_SECONDS": "0.8",
    "MARKETO_DEST_LEASE_CLOCK_SKEW_SECONDS": "0.2",
}
"""Small batches: many Marketo calls, so that every kill lands in the middle of delivery. A short
lease: the killed process's lease on each instance must expire before the next one drains it."""


def delivered(port: int, ids: list[str]) -> tuple[int, int]:
    """(updates with a final outcome, updates pending) over the destinations."""
    flows = [dataflow(port, i) for i in ids]
    return sum(f.received - f.pending for f in flows), sum(f.pending for f in flows)


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    pool, loads = workload.plan(PROFILE.crash_profiles // 4, rng)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        endpoints = [
            stack.enter_context(sandbox_process("--munchkin-id", munchkin))
            for munchkin in INSTANCES
        ]
        controls = [
            stack.enter_context(httpx.Client(base_url=f"{e}/_sandbox", timeout=60))
            for e in endpoints
        ]
        for instance, control in enumerate(controls):
            # A 2 s rate window (the service is told the same) and a little latency per call.
            control.post("/reset", json={"window_seconds": 2, "latency_ms": 20}).raise_for_status()
            seeded = workload.seeded_leads(instance, pool)
            control.post("/leads", json={"leads": seeded}).raise_for_status()

        service = ServiceProcess(tmp_path / "data", endpoints[0], SERVICE_ENV)
        channel, client = stub(service.port)
        ids: list[str] = []
        list_ids: dict[int, int] = {}
        acknowledged: list[int] = []
        with channel:
            for load in loads:
                connection = pb.MarketoConnection(
                    munchkin_id=INSTANCES[load.instance],
                    client_id="sandbox-client-id",
                    client_secret="sandbox-client-secret",
                    endpoint=endpoints[load.instance],
                )
                destination = client.Configure(
                    pb.ConfigureRequest(
                        spec=spec(name=f"Crash {load.index}", connection=connection)
                    )
                ).destination
                ids.append(destination.id)
                activated = client.Activate(
                    pb.ActivateRequest(
                        destination_id=destination.id,
                        audiences=[
                            pb.Audience(id=load.audience_id, name=f"Crash list {load.index}")
                        ],
                        mappings=STANDARD_MAPPINGS,
                    )
                )
                list_ids[load.index] = activated.audiences[0].marketo_list_id
            for load, destination_id in zip(loads, ids, strict=True):
                requests = [
                    pb.SyncRequest(
                        destination_id=destination_id, updates=load.updates[i : i + REQUEST_SIZE]
                    )
                    for i in range(0, len(load.updates), REQUEST_SIZE)
                ]
                acknowledged.append(sum(r.accepted for r in client.Sync(iter(requests))))
        assert acknowledged == [len(load.updates) for load in loads]

        kills: list[dict[str, Any]] = []
        while len(kills) < PROFILE.crash_kills:
            # Wait for delivery to make progress in this life, then kill at a random moment.
            start, pending = delivered(service.port, ids)
            deadline = time.monotonic() + 60
            while pending and delivered(service.port, ids)[0] == start:
                assert time.monotonic() < deadline, "no progress after a restart"
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.6))
            done, pending = delivered(service.port, ids)
            if not pending:
                break
            service.kill()
            kills.append({"delivered": done, "pending": pending})
            service = ServiceProcess(tmp_path / "data", endpoints[0], SERVICE_ENV)
        assert len(kills) >= PROFILE.crash_kills, f"delivery ended after {len(kills)} kills"

        deadline = time.monotonic() + 120 * (5 if PROFILE.name == "long" else 1)
        while delivered(service.port, ids)[1]:
            assert time.monotonic() < deadline, "not delivered in time"
            time.sleep(0.1)
        flows = [dataflow(service.port, i) for i in ids]
        channel, client = stub(service.port)
        with channel:
            outcomes_of: dict[int, list[pb.ProfileOutcome]] = {}
            for load, destination_id in zip(loads, ids, strict=True):
                outcomes: list[pb.ProfileOutcome] = []
                token = ""
                while True:
                    page = client.ListProfileOutcomes(
                        pb.ListProfileOutcomesRequest(
                            destination_id=destination_id, page_size=1000, page_token=token
                        )
                    )
                    outcomes += page.outcomes
                    token = page.next_page_token
                    if not token:
                        break
                workload.check_outcomes(outcomes, load.updates, exact=False)
                outcomes_of[load.index] = outcomes
        service.stop()
        states = [control.get("/leads").json()["leads"] for control in controls]
        dumps = [control.get("/lists").json()["lists"] for control in controls]

    for load, flow in zip(loads, flows, strict=True):
        workload.check_dataflow(
            flow, len(load.updates), exact=False, outcomes=outcomes_of[load.index]
        )
    for instance in range(2):
        lists = {item["id"]: set(item["members"]) for item in dumps[instance]}
        workload.check_instance(instance, pool, loads, list_ids, states[instance], lists)
    record(
        "crashes",
        {
            "updates": sum(acknowledged),
            "leads_per_instance": pool,
            "kills": kills,
            "seconds": round(time.monotonic() - started, 1),
        },
    )
