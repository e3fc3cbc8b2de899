"""`marketo-destination demo`: the whole data path against the embedded Marketo sandbox.

Configures a destination, activates three audiences, streams synthetic profiles through a real
gRPC client, waits until the dispatcher has delivered them, then prints the dataflow summary and
what the sandbox holds. The sandbox runs Marketo's limits with its 20 s rate window scaled to 2 s,
so the demo takes seconds instead of minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

import grpc
import httpx
from google.protobuf import timestamp_pb2

from sandbox import SandboxSettings, asgi_transport, create_app
from service._proto.marketo_destination.v1 import destination_pb2 as pb
from service._proto.marketo_destination.v1 import destination_pb2_grpc as pb_grpc
from service.api.server import application_server
from service.app import open_application
from service.settings import Settings

MUNCHKIN = "123-ABC-456"
ENDPOINT = f"https://{MUNCHKIN}.mktorest.com"
AUDIENCES = ("newsletter", "high-value", "churn-risk")
FIRST = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim")
LAST = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson")


class Progress:
    """A one-line text progress bar (no terminal library needed)."""

    def __init__(self, label: str, total: int, out: TextIO, width: int = 30) -> None:
        self._label, self._total, self._out, self._width = label, total, out, width
        self._started = time.monotonic()

    def show(self, done: int) -> None:
        filled = self._width * done // max(1, self._total)
        rate = done / max(1e-9, time.monotonic() - self._started)
        bar = "#" * filled + "-" * (self._width - filled)
        self._out.write(f"\r{self._label:<10} [{bar}] {done:>6}/{self._total} {rate:8.0f}/s")
        self._out.flush()

    def close(self) -> None:
        self._out.write("\n")


def synthetic_profile(index: int, rng: random.Random, now: float) -> pb.ProfileUpdate:
    update = pb.ProfileUpdate(profile_id=f"profile-{index}", event_time=timestamp_at(now))
    update.profile.update(
        {
            "person": {
                "email": f"person{index}@example.com",
                "firstName": rng.choice(FIRST),
                "lastName": rng.choice(LAST),
            }
        }
    )
    # a member of one audience at least: a destination exports the members of its audiences
    joined = [a for a in AUDIENCES if rng.random() < 0.5] or [rng.choice(AUDIENCES)]
    for audience in joined:
        update.audiences.add(audience_id=audience, status=pb.MEMBERSHIP_STATUS_REALIZED)
    return update


def timestamp_at(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


async def run_demo(settings: Settings, *, profiles: int = 10_000, out: TextIO = sys.stdout) -> int:
    """Run the demo; returns the number of leads the sandbox holds at the end."""
    rng = random.Random(7)
    sandbox = create_app(SandboxSettings(window_seconds=2.0))
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            httpx.AsyncClient(transport=asgi_transport(sandbox), timeout=60.0)
        )
        existing = profiles * 3 // 10
        seeded = [
            {"email": f"person{i}@example.com", "firstName": "Known", "lastName": "Lead"}
            for i in range(0, existing)
        ]
        for start in range(0, len(seeded), 1_000):
            await http.post(
                f"{ENDPOINT}/_sandbox/leads", json={"leads": seeded[start : start + 1_000]}
            )
        out.write(f"Marketo sandbox: {existing} existing leads seeded\n")

        app = await stack.enter_async_context(open_application(settings, http=http))
        server, port = await application_server(app, settings)
        await server.start()
        stack.push_async_callback(server.stop, None)
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        stub = pb_grpc.MarketoDestinationServiceStub(channel)

        destination = (
            await stub.Configure(
                pb.ConfigureRequest(
                    spec=pb.DestinationSpec(
                        name="Demo",
                        connection=pb.MarketoConnection(
                            munchkin_id=MUNCHKIN,
                            client_id="sandbox-client-id",
                            client_secret="sandbox-client-secret",
                            endpoint=ENDPOINT,
                        ),
                        sync_type=pb.SYNC_TYPE_AUDIENCE_AND_PROFILE,
                        person_action=pb.PERSON_ACTION_UPDATE_EXISTING_AND_CREATE_NEW,
                        dedupe_field="email",
                    )
                )
            )
        ).destination
        out.write(f"Configured destination {destination.id} (Audience and profile, create)\n")
        activated = await stub.Activate(
            pb.ActivateRequest(
                destination_id=destination.id,
                audiences=[pb.Audience(id=a, name=f"Demo {a}") for a in AUDIENCES],
                mappings=[
                    pb.FieldMapping(
                        source="person.email", target="DedupeField", transform="lowercase"
                    ),
                    pb.FieldMapping(source="person.firstName", target="firstName"),
                    pb.FieldMapping(source="person.lastName", target="lastName"),
                ],
            )
        )
        for audience in activated.audiences:
            out.write(f"Activated {audience.audience_id} -> list {audience.marketo_list_id}\n")

        now = time.time()
        updates = [synthetic_profile(i, rng, now) for i in range(profiles)]

        async def requests() -> AsyncIterator[pb.SyncRequest]:
            for start in range(0, profiles, 500):
                yield pb.SyncRequest(
                    destination_id=destination.id, updates=updates[start : start + 500]
                )

        streamed = Progress("streamed", profiles, out)
        acknowledged = 0
        async for response in stub.Sync(requests()):
            acknowledged += response.accepted
            streamed.show(acknowledged)
        streamed.close()

        delivered = Progress("delivered", profiles, out)
        while True:
            flow = (
                await stub.GetDataflow(pb.GetDataflowRequest(destination_id=destination.id))
            ).dataflow
            delivered.show(flow.received - flow.pending)
            if flow.pending == 0:
                break
            await asyncio.sleep(0.2)
        delivered.close()

        out.write("\nDataflow\n")
        out.write(f"  received   {flow.received}\n")
        out.write(
            f"  activated  created {flow.activated.created}, updated {flow.activated.updated}, "
            f"added {flow.activated.added}, removed {flow.activated.removed}\n"
        )
        out.write(f"  excluded   {dict(flow.excluded) or 0}\n")
        out.write(f"  failed     {dict(flow.failed) or 0}\n")
        leads = (await http.get(f"{ENDPOINT}/_sandbox/leads")).json()["leads"]
        lists = (await http.get(f"{ENDPOINT}/_sandbox/lists")).json()["lists"]
        calls = (await http.get(f"{ENDPOINT}/_sandbox/calls")).json()
        out.write("\nMarketo sandbox now holds\n")
        out.write(f"  leads      {len(leads)}\n")
        for item in lists:
            out.write(f"  list {item['id']:<5} {item['name']:<20} {len(item['members'])} members\n")
        out.write(f"  API calls  {calls['counted']} counted against the quota\n")
        return len(leads)


def demo_settings(settings: Settings, data_dir: Path | None) -> tuple[Settings, Any]:
    """Settings for a demo run: a throw-away data directory unless one is given."""
    holder: Any = None
    if data_dir is None:
        holder = tempfile.TemporaryDirectory(prefix="marketo-demo-")
        data_dir = Path(holder.name)
    return (
        replace(
            settings,
            address="127.0.0.1:0",
            data_dir=data_dir,
            linger_seconds=0.2,
            marketo_window_seconds=2.0,
            # The tour follows the streaming path batch by batch (its progress bar moves); a
            # backlog this size would otherwise go through one bulk import, polled every few
            # seconds (bench/backfill.py shows that path).
            bulk_threshold=0,
        ),
        holder,
    )
