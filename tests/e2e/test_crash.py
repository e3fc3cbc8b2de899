"""The service survives SIGKILL during delivery: nothing acknowledged is lost, no lead is
duplicated, and every acknowledged update ends with an outcome.

The service and the Marketo sandbox run as separate processes on real ports; the sandbox keeps
its state while the service is killed twice and restarted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from tests.harness import STANDARD_MAPPINGS, spec, update
from tests.processes import ServiceProcess, sandbox_process, stub, wait_for
from tests.reliability.workload import check_dataflow

PROFILES = 20_000
EXISTING = 6_000
REQUEST_SIZE = 500
STREAMING = {"MARKETO_DEST_BULK_THRESHOLD": "0"}
"""Batches of 300 through the REST API, so a kill lands between batches that are recorded and
batches that are not (a backlog this size would otherwise go through one bulk import)."""
pytestmark = pytest.mark.slow


def test_sigkill_twice_during_delivery_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    with sandbox_process() as endpoint:
        control = httpx.Client(base_url=f"{endpoint}/_sandbox", timeout=60)
        control.post("/reset", json={"window_seconds": 2})
        seeded = [{"email": f"user{i}@example.com", "firstName": "Seeded"} for i in range(EXISTING)]
        control.post("/leads", json={"leads": seeded})

        service = ServiceProcess(tmp_path / "data", endpoint, STREAMING)
        channel, client = stub(service.port)
        destination_id = client.Configure(
            pb.ConfigureRequest(
                spec=spec(
                    connection=pb.MarketoConnection(
                        munchkin_id="123-ABC-456",
                        client_id="sandbox-client-id",
                        client_secret="sandbox-client-secret",
                    )
                )
            )
        ).destination.id
        activated = client.Activate(
            pb.ActivateRequest(
                destination_id=destination_id,
                audiences=[pb.Audience(id="a1", name="Crash test")],
                mappings=STANDARD_MAPPINGS,
            )
        )
        list_id = activated.audiences[0].marketo_list_id
        updates = [
            update(
                f"p{i}",
                f"user{i}@example.com",
                first=f"First{i}",
                audiences={"a1": pb.MEMBERSHIP_STATUS_REALIZED},
            )
            for i in range(PROFILES)
        ]
        requests = [
            pb.SyncRequest(destination_id=destination_id, updates=updates[i : i + REQUEST_SIZE])
            for i in range(0, PROFILES, REQUEST_SIZE)
        ]
        acknowledged = sum(r.accepted for r in client.Sync(iter(requests)))
        channel.close()
        assert acknowledged == PROFILES

        for _ in range(2):
            wait_for(
                service.port,
                destination_id,
                lambda f: f.received - f.pending > 0 and f.pending > 0,
            )
            service.kill()
            service = ServiceProcess(tmp_path / "data", endpoint, STREAMING)

        flow = wait_for(service.port, destination_id, lambda f: f.pending == 0)
        channel, client = stub(service.port)
        with channel:
            sample = client.ListProfileOutcomes(
                pb.ListProfileOutcomesRequest(destination_id=destination_id, profile_id="p12345")
            ).outcomes
        service.stop()

        leads: list[dict[str, Any]] = control.get("/leads").json()["leads"]
        lists = {item["id"]: set(item["members"]) for item in control.get("/lists").json()["lists"]}

    check_dataflow(flow, PROFILES, exact=False)  # re-delivered after a crash: counted twice
    assert [o.kind for o in sample][:1] == [pb.OUTCOME_KIND_ACTIVATED]

    emails = [lead["fields"]["email"] for lead in leads]
    assert len(emails) == len(set(emails)) == PROFILES, "no duplicate lead, none missing"
    first_names = {lead["fields"]["email"]: lead["fields"]["firstName"] for lead in leads}
    assert all(first_names[f"user{i}@example.com"] == f"First{i}" for i in range(PROFILES))
    assert lists[list_id] == {lead["id"] for lead in leads}
