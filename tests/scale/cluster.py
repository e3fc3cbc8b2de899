"""Several service replicas on one PostgreSQL database, the Marketo instances sandbox processes.

Used by the scale tests and by `bench/fleet.py`. Every process is real: `python -m sandbox` per
Marketo instance (or one hosting several, a port each), `python -m service serve` per replica
(configured only through its `MARKETO_DEST_*` environment, like a deployment), gRPC clients over
loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from service._proto.marketo_destination.v1 import destination_pb2_grpc as pb_grpc
from service.settings import ENV_PREFIX
from service.store.secrets import SecretBox
from tests.harness import CLIENT_ID, CLIENT_SECRET, STANDARD_MAPPINGS, update

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
AUDIENCE = "a1"
_REST = re.compile(r"REST endpoint: (http://\S+)/rest")
_LISTENING = re.compile(r"listening on [^\s:]+:(\d+)")


@dataclass
class Sandbox:
    """One Marketo instance: a `python -m sandbox` process."""

    munchkin_id: str
    process: asyncio.subprocess.Process
    endpoint: str
    http: httpx.AsyncClient

    async def control(self, method: str, path: str, body: Any = None) -> Any:
        response = await self.http.request(method, f"{self.endpoint}/_sandbox/{path}", json=body)
        response.raise_for_status()
        return response.json()

    async def leads(self) -> list[dict[str, Any]]:
        leads: list[dict[str, Any]] = (await self.control("GET", "leads"))["leads"]
        return leads

    async def calls(self) -> dict[str, Any]:
        calls: dict[str, Any] = await self.control("GET", "calls")
        return calls

    async def call_log(self) -> list[dict[str, Any]]:
        """Every Marketo call (when the sandbox was reset with `log_calls`), in arrival order."""
        log: list[dict[str, Any]] = (await self.control("GET", "call-log"))["calls"]
        return log


@dataclass
class Replica:
    """One service replica: a `python -m service serve` process and a stub to it."""

    name: str
    process: asyncio.subprocess.Process
    log: Path
    port: int
    channel: grpc.aio.Channel
    stub: pb_grpc.MarketoDestinationServiceStub

    @property
    def alive(self) -> bool:
        return self.process.returncode is None


@dataclass
class Cluster:
    """Sandboxes, replicas and a destination per sandbox (activated with one audience)."""

    database_url: str
    directory: Path
    secret_key: str = field(default_factory=lambda: SecretBox.generate_key().decode())
    sandboxes: list[Sandbox] = field(default_factory=list)
    replicas: list[Replica] = field(default_factory=list)
    destinations: dict[str, str] = field(default_factory=dict)
    """Munchkin id -> destination id."""
    lists: dict[str, int] = field(default_factory=dict)
    """Munchkin id -> Marketo list id of the audience."""
    http: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=30.0))

    async def start_sandbox(self, munchkin_id: str, limits: Mapping[str, Any]) -> Sandbox:
        """One instance in a sandbox process of its own, reset with `limits`."""
        process, [endpoint] = await self._spawn_sandbox(munchkin_id, 1)
        [sandbox] = await self._add_sandboxes(process, [(munchkin_id, endpoint)], limits)
        return sandbox

    async def start_sandboxes(
        self, munchkin_prefix: str, count: int, limits: Mapping[str, Any]
    ) -> list[Sandbox]:
        """`count` instances hosted by one sandbox process (`--instances`), one port each, with
        Munchkin ids `<prefix>-000`, `<prefix>-001`, ... (`prefix` like `500-FLT`); each reset
        with `limits`."""
        process, endpoints = await self._spawn_sandbox(munchkin_prefix, count)
        named = [(f"{munchkin_prefix}-{i:03d}", endpoint) for i, endpoint in enumerate(endpoints)]
        return await self._add_sandboxes(process, named, limits)

    async def _spawn_sandbox(
        self, munchkin_id: str, count: int
    ) -> tuple[asyncio.subprocess.Process, list[str]]:
        """A `python -m sandbox` process hosting `count` instances, and their endpoints."""
        process = await asyncio.create_subprocess_exec(
            PYTHON,
            "-m",
            "sandbox",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--instances",
            str(count),
            "--munchkin-id",
            munchkin_id,
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert process.stdout is not None
        endpoints: list[str] = []
        async with asyncio.timeout(30):
            while len(endpoints) < count:
                line = (await process.stdout.readline()).decode()
                if not line:
                    raise RuntimeError(f"sandbox {munchkin_id} exited before serving")
                match = _REST.search(line)
                if match:
                    endpoints.append(match.group(1))
        return process, endpoints

    async def _add_sandboxes(
        self,
        process: asyncio.subprocess.Process,
        named: Sequence[tuple[str, str]],
        limits: Mapping[str, Any],
    ) -> list[Sandbox]:
        hosted = [
            Sandbox(munchkin_id, process, endpoint, self.http) for munchkin_id, endpoint in named
        ]
        self.sandboxes.extend(hosted)
        await asyncio.gather(*(each.control("POST", "reset", dict(limits)) for each in hosted))
        return hosted

    async def start_replica(self, name: str, settings: Mapping[str, str]) -> Replica:
        log = self.directory / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        env.update(
            {
                "MARKETO_DEST_ADDRESS": "127.0.0.1:0",
                "MARKETO_DEST_DATA_DIR": str(self.directory / name),
                "MARKETO_DEST_DATABASE_URL": self.database_url,
                "MARKETO_DEST_REPLICA_ID": name,
                "MARKETO_DEST_SECRET_KEY": self.secret_key,
                # Every sandbox of the cluster listens on loopback.
                "MARKETO_DEST_ALLOWED_ENDPOINTS": "http://127.0.0.1:*",
                "OTEL_SDK_DISABLED": "true",
                **settings,
            }
        )
        with log.open("wb") as sink:
            process = await asyncio.create_subprocess_exec(
                PYTHON, "-m", "service", "serve", cwd=REPO, env=env, stdout=sink, stderr=sink
            )
        port = 0
        async with asyncio.timeout(60):
            while not port:
                match = _LISTENING.search(log.read_text(errors="replace"))
                if match:
                    port = int(match.group(1))
                elif process.returncode is not None:
                    raise RuntimeError(f"replica {name} exited: {log.read_text()[-2000:]}")
                else:
                    await asyncio.sleep(0.1)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        replica = Replica(
            name, process, log, port, channel, pb_grpc.MarketoDestinationServiceStub(channel)
        )
        self.replicas.append(replica)
        return replica

    def live(self) -> list[Replica]:
        return [replica for replica in self.replicas if replica.alive]

    def stop(self, replica: Replica) -> None:
        """SIGSTOP: the replica freezes mid-whatever, its leases left to expire."""
        replica.process.send_signal(signal.SIGSTOP)

    def resume(self, replica: Replica) -> None:
        """SIGCONT: a stopped replica goes on from where it was."""
        replica.process.send_signal(signal.SIGCONT)

    async def kill(self, replica: Replica) -> None:
        """SIGKILL: no graceful shutdown, no lease released."""
        replica.process.send_signal(signal.SIGKILL)
        await replica.process.wait()
        await replica.channel.close()

    async def add_destination(self, sandbox: Sandbox, via: Replica) -> str:
        spec = pb.DestinationSpec(
            name=f"Marketo {sandbox.munchkin_id}",
            connection=pb.MarketoConnection(
                munchkin_id=sandbox.munchkin_id,
                client_id=CLIENT_ID,
                client_secret=CLIENT_SECRET,
                endpoint=sandbox.endpoint,
            ),
            sync_type=pb.SYNC_TYPE_AUDIENCE_AND_PROFILE,
            person_action=pb.PERSON_ACTION_UPDATE_EXISTING_AND_CREATE_NEW,
            dedupe_field="email",
        )
        destination_id = (await via.stub.Configure(pb.ConfigureRequest(spec=spec))).destination.id
        answer = await via.stub.Activate(
            pb.ActivateRequest(
                destination_id=destination_id,
                audiences=[pb.Audience(id=AUDIENCE, name=f"List {sandbox.munchkin_id}")],
                mappings=STANDARD_MAPPINGS,
            )
        )
        self.destinations[sandbox.munchkin_id] = destination_id
        self.lists[sandbox.munchkin_id] = answer.audiences[0].marketo_list_id
        return destination_id

    async def sync(
        self, via: Replica, destination_id: str, batches: Sequence[Sequence[pb.ProfileUpdate]]
    ) -> int:
        """Stream the batches through one replica; returns how many updates were accepted."""

        async def requests() -> AsyncIterator[pb.SyncRequest]:
            for index, batch in enumerate(batches):
                yield pb.SyncRequest(
                    destination_id=destination_id, updates=batch, request_id=f"r{index}"
                )

        accepted = 0
        async for response in via.stub.Sync(requests()):
            assert not response.rejected, response.rejected
            accepted += response.accepted
        return accepted

    async def pending(self, destination_id: str) -> pb.Dataflow:
        """The destination's dataflow, read through any live replica."""
        for replica in self.live():
            with contextlib.suppress(grpc.aio.AioRpcError):
                answer = await replica.stub.GetDataflow(
                    pb.GetDataflowRequest(destination_id=destination_id)
                )
                return answer.dataflow
        raise RuntimeError("no live replica answered")

    async def wait_delivered(self, within: float) -> None:
        """Until no destination has anything pending (at most `within` seconds)."""
        async with asyncio.timeout(within):
            while True:
                flows = [await self.pending(d) for d in self.destinations.values()]
                if all(flow.pending == 0 for flow in flows):
                    return
                await asyncio.sleep(0.2)

    async def close(self) -> None:
        for replica in self.replicas:
            if replica.alive:
                replica.process.send_signal(signal.SIGTERM)
        for process in dict.fromkeys(s.process for s in self.sandboxes):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        processes = [r.process for r in self.replicas] + [s.process for s in self.sandboxes]
        for process in dict.fromkeys(processes):  # one sandbox process may host several
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()
        for replica in self.replicas:
            await replica.channel.close()
        await self.http.aclose()


def profile_update(
    instance: str, n: int, *, first: str, time: float, update_id: str
) -> pb.ProfileUpdate:
    """Profile `n` of an instance, a member of the audience, with a given first name."""
    message = update(
        f"{instance}-p{n}",
        f"{instance.lower()}-p{n}@example.com",
        first=first,
        time=time,
        audiences={AUDIENCE: pb.MEMBERSHIP_STATUS_REALIZED},
    )
    message.update_id = update_id
    return message


@contextlib.asynccontextmanager
async def cluster(database_url: str, directory: Path) -> AsyncIterator[Cluster]:
    running = Cluster(database_url, directory)
    try:
        yield running
    finally:
        await running.close()
