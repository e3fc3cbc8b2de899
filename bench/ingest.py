"""Benchmark: Sync ingest (issues 7 and 9).

(a) Updates per second acknowledged by ``Sync`` of the real service (durable: SQLite WAL, group
    commit, acknowledged once committed) against a no-op servicer (a grpc.aio server whose Sync
    answers ``accepted=len(updates)`` at once), with the same client, request size and number of
    concurrent streams; the ratio (target >= 0.5) and the p50/p99 latency of one acknowledgement.
    Each stream streams as a Sync client does (the demo's, say): it keeps up to ``WINDOW``
    requests unanswered, as many as the service works on at once per stream, and correlates
    the answers by request_id. The ``lockstep_*`` figures repeat the pair with a client that
    waits for each answer before it sends its next request: its throughput is bounded by one
    commit round trip per request (an fsync), not by what the service can take.
(b) Peak RSS (``VmHWM``) of the service process while a backlog of 1,000,000 updates builds up
    (target: flat, under 300 MB), and the largest size of its SQLite WAL meanwhile (target:
    under 64 MB, the WAL's size limit: the WAL starts over while appends go on).
(c) Tracing overhead: (a)'s throughput with telemetry on (the real OTLP gRPC exporter, to an
    in-process receiver) against telemetry off (``OTEL_SDK_DISABLED=true``); ``tracing_overhead``
    = 1 - traced/untraced (target <= 0.15).

Every server is a subprocess (``python -m service serve``, the Marketo sandbox, the no-op server);
the client runs here. The dispatcher must not deliver while ingest is measured: once the
destinations are configured, the sandbox answers every REST call with 607 (daily quota reached),
which pauses each instance's queue without losing it (each service is warmed up until its
dispatcher has paused). The throughput figures are measured in interleaved rounds (2 shared
cores are noisy) and the medians compared.

    .venv/bin/python bench/ingest.py [--rounds 5] [--updates 160000] [--backlog 1000000]

Last line: one JSON object with ``ratio``, ``updates_per_s``, ``p50_ms``, ``p99_ms``,
``rss_mb_backlog``, ``tracing_overhead``, the ``lockstep_*`` figures, the targets and ``*_ok``
flags.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from service._proto.marketo_destination.v1 import destination_pb2 as pb  # noqa: E402
from service._proto.marketo_destination.v1 import destination_pb2_grpc as pb_grpc  # noqa: E402
from service.api.servicer import SYNC_PIPELINE_DEPTH  # noqa: E402
from tests.harness import (  # noqa: E402
    STANDARD_MAPPINGS,
    connection,
    encoded_field,
    spec,
    update,
)
from tests.telemetry.otlp_receiver import OtlpReceiver  # noqa: E402

SYNC = "/marketo_destination.v1.MarketoDestinationService/Sync"
PLACEHOLDER = b"0000000000"
"""Ten digits in the template update's profile id and email, replaced by a counter."""

WINDOW = SYNC_PIPELINE_DEPTH
"""Requests a stream keeps unanswered in the headline figures: as many as the service works on
at once per stream, as a streaming client that correlates answers by request_id keeps. A
stream's requests are then committed together, and the throughput shows what the service can
take. (The no-op servicer answers at once, so it is as fast either way: the client bounds it.)"""
LOCKSTEP_WINDOW = 1
"""Requests a stream keeps unanswered in the `lockstep_*` figures: each waits for the previous
answer, so a latency figure is one commit round trip (an fsync included) and the throughput is
bounded by it: streams x request size / latency."""
RATIO_TARGET = 0.5
RSS_TARGET_MB = 300.0
OVERHEAD_TARGET = 0.15
WAL_TARGET_MB = 64.0
"""The SQLite WAL stays under its size limit while the backlog streams in without a pause (the
writer lets it start over; a WAL that only grows fails this)."""


# ------------------------------------------------------------------------------- requests


class Requests:
    """Serialized ``SyncRequest`` bytes of distinct updates, cheap to make: the client must not
    be what limits the measured servers. Every update is different (profile id, email), so the
    service stores each one rather than counting duplicates."""

    def __init__(self) -> None:
        template = update(
            f"p{PLACEHOLDER.decode()}",
            f"u{PLACEHOLDER.decode()}@example.com",
            audiences={"a1": pb.MEMBERSHIP_STATUS_REALIZED},
        ).SerializeToString()
        assert template.count(PLACEHOLDER) == 2
        self._template = template
        self._next = 0

    def request(self, destination_id: str, count: int, request_id: str) -> bytes:
        parts = [encoded_field(1, destination_id.encode())]
        template = self._template
        for _ in range(count):
            self._next += 1
            one = template.replace(PLACEHOLDER, b"%010d" % self._next)
            parts.append(encoded_field(2, one))
        parts.append(encoded_field(3, request_id.encode()))
        return b"".join(parts)


# ------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def clean_environ(**extra: str) -> dict[str, str]:
    """This process's environment without any ``OTEL_*`` or ``MARKETO_DEST_*`` variable."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("OTEL_") and not k.startswith("MARKETO_DEST_")
    }
    env.update(extra)
    return env


@dataclass
class Server:
    name: str
    address: str
    process: subprocess.Popen[bytes]
    destination_id: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid


@contextlib.contextmanager
def spawned(
    args: list[str], env: Mapping[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(args, env=dict(env), stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def wait_ready(address: str, process: subprocess.Popen[bytes], log: Path) -> None:
    async with asyncio.timeout(60):
        while True:
            if process.poll() is not None:
                output = await asyncio.to_thread(log.read_text)
                raise RuntimeError(f"{address} exited: {output[-2000:]}")
            try:
                async with grpc.aio.insecure_channel(address) as channel:
                    await asyncio.wait_for(channel.channel_ready(), 1.0)
                    return
            except (TimeoutError, grpc.aio.AioRpcError):
                await asyncio.sleep(0.2)


async def wait_http(url: str) -> None:
    async with httpx.AsyncClient() as http, asyncio.timeout(60):
        while True:
            try:
                await http.get(f"{url}/_sandbox/calls")
                return
            except httpx.TransportError:
                await asyncio.sleep(0.2)


async def configure(address: str, sandbox_url: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.MarketoDestinationServiceStub(channel)
        created = await stub.Configure(
            pb.ConfigureRequest(spec=spec(connection=connection(endpoint=sandbox_url)))
        )
        destination_id: str = created.destination.id
        await stub.Activate(
            pb.ActivateRequest(
                destination_id=destination_id,
                audiences=[pb.Audience(id="a1", name=f"Bench {destination_id}")],
                mappings=STANDARD_MAPPINGS,
            )
        )
        return destination_id


async def paused(server: Server) -> None:
    """Wait until the server's dispatcher met the sandbox's 607 and paused its instance, so it
    delivers (and unpacks) nothing while ingest is measured."""
    async with grpc.aio.insecure_channel(server.address) as channel, asyncio.timeout(60):
        stub = pb_grpc.MarketoDestinationServiceStub(channel)
        request = pb.GetDataflowRequest(destination_id=server.destination_id)
        while True:
            if (await stub.GetDataflow(request)).dataflow.HasField("paused_until"):
                return
            await asyncio.sleep(0.1)


async def pending(server: Server) -> int:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.MarketoDestinationServiceStub(channel)
        answer = await stub.GetDataflow(pb.GetDataflowRequest(destination_id=server.destination_id))
        waiting: int = answer.dataflow.pending
        return waiting


# ------------------------------------------------------------------------------- no-op server


class NoopServicer(pb_grpc.MarketoDestinationServiceServicer):  # type: ignore[misc]
    """Sync that acknowledges every update at once: the cost of gRPC and protobuf alone."""

    async def Sync(
        self, request_iterator: AsyncIterator[pb.SyncRequest], context: Any
    ) -> AsyncIterator[pb.SyncResponse]:
        async for request in request_iterator:
            yield pb.SyncResponse(request_id=request.request_id, accepted=len(request.updates))


async def run_noop_server(port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_MarketoDestinationServiceServicer_to_server(NoopServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


# ------------------------------------------------------------------------------- measuring


@dataclass
class Run:
    updates: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def per_s(self) -> float:
        return self.updates / self.seconds


async def stream_sync(
    channel: grpc.aio.Channel,
    destination_id: str,
    requests: Requests,
    *,
    count: int,
    per_request: int,
    latencies: list[float],
    stream: int,
    window_size: int,
) -> int:
    """One Sync stream sending ``count`` requests with up to ``window_size`` of them unanswered
    (as a streaming client does); returns updates accepted. Latency: request written to answer
    read."""
    sync: Any = channel.stream_stream(
        SYNC, request_serializer=None, response_deserializer=pb.SyncResponse.FromString
    )
    call: Any = sync()
    window = asyncio.Semaphore(window_size)
    sent_at: dict[str, float] = {}

    async def write() -> None:
        for index in range(count):
            await window.acquire()
            request_id = f"s{stream}r{index}"
            body = requests.request(destination_id, per_request, request_id)
            sent_at[request_id] = time.perf_counter()
            await call.write(body)
        await call.done_writing()

    writer = asyncio.create_task(write())
    accepted = 0
    for _ in range(count):
        response: Any = await call.read()
        if not isinstance(response, pb.SyncResponse):  # grpc.aio.EOF
            raise RuntimeError(f"stream ended early: {await call.code()} {await call.details()}")
        latencies.append((time.perf_counter() - sent_at.pop(response.request_id)) * 1000)
        window.release()
        if response.rejected:
            raise RuntimeError(f"rejected: {response.rejected[0].reason}")
        accepted += response.accepted
    await writer
    if await call.code() != grpc.StatusCode.OK:
        raise RuntimeError(f"Sync failed: {await call.code()} {await call.details()}")
    return accepted


async def measure(
    server: Server,
    requests: Requests,
    *,
    updates: int,
    streams: int,
    per_request: int,
    window: int = WINDOW,
) -> Run:
    per_stream = updates // (streams * per_request)
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(server.address) as channel:
        await channel.channel_ready()
        started = time.perf_counter()
        accepted = await asyncio.gather(
            *(
                stream_sync(
                    channel,
                    server.destination_id,
                    requests,
                    count=per_stream,
                    per_request=per_request,
                    latencies=latencies,
                    stream=s,
                    window_size=window,
                )
                for s in range(streams)
            )
        )
        seconds = time.perf_counter() - started
    total = sum(accepted)
    expected = per_stream * streams * per_request
    if total != expected:
        raise RuntimeError(f"{server.name}: {total} accepted of {expected}")
    return Run(total, seconds, latencies)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of ``pid`` in MB."""
    found: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) / 1024
    return found


def size_mb(path: Path) -> float:
    """The file's size in MB, 0 when there is none."""
    try:
        return path.stat().st_size / 1e6
    except FileNotFoundError:
        return 0.0


async def backlog_rss(
    server: Server,
    requests: Requests,
    *,
    updates: int,
    streams: int,
    per_request: int,
    wal: Path,
) -> dict[str, Any]:
    """Streams ``updates`` into the idle-dispatcher service, sampling its memory and the size
    of its SQLite WAL (``wal``)."""
    samples: list[tuple[float, float]] = []  # (updates sent so far, VmRSS MB)
    wal_mb = 0.0
    sent = 0
    before = proc_status(server.pid)

    async def sample() -> None:
        nonlocal wal_mb
        while True:
            samples.append((sent, proc_status(server.pid)["VmRSS"]))
            wal_mb = max(wal_mb, size_mb(wal))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    started = time.perf_counter()
    try:
        chunk = streams * per_request * 50
        while sent < updates:
            run = await measure(
                server,
                requests,
                updates=min(chunk, updates - sent),
                streams=streams,
                per_request=per_request,
            )
            if sent // 100_000 != (sent + run.updates) // 100_000:
                rss = proc_status(server.pid)["VmRSS"]
                print(f"  {sent + run.updates:>9,} sent, RSS {rss:.1f} MB", flush=True)
            sent += run.updates
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    seconds = time.perf_counter() - started
    after = proc_status(server.pid)
    waiting = await pending(server)

    def rss_at(fraction: float) -> float:
        return next((rss for n, rss in samples if n >= fraction * updates), after["VmRSS"])

    return {
        "sent": sent,
        "pending": waiting,
        "seconds": seconds,
        "rss_mb_start": before["VmRSS"],
        "rss_mb_at": {f"{int(f * 100)}%": round(rss_at(f), 1) for f in (0.1, 0.25, 0.5, 0.75)},
        "rss_mb_end": after["VmRSS"],
        "hwm_mb": after["VmHWM"],
        "wal_mb_peak": max(wal_mb, size_mb(wal)),
    }


# ------------------------------------------------------------------------------- main


async def main(args: argparse.Namespace) -> dict[str, Any]:
    python = sys.executable
    with (
        tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        receiver = stack.enter_context(OtlpReceiver())

        sandbox_port = free_port()
        sandbox_url = f"http://127.0.0.1:{sandbox_port}"
        stack.enter_context(
            spawned(
                [python, "-m", "sandbox", "--host", "127.0.0.1", "--port", str(sandbox_port)],
                clean_environ(),
                work / "sandbox.log",
            )
        )
        await wait_http(sandbox_url)

        def service(name: str, **otel: str) -> Server:
            port = free_port()
            env = clean_environ(
                MARKETO_DEST_ADDRESS=f"127.0.0.1:{port}",
                MARKETO_DEST_DATA_DIR=str(work / name),
                MARKETO_DEST_MAX_BACKLOG=str(2 * (args.backlog + args.rounds * args.updates)),
                MARKETO_DEST_LOG_LEVEL="WARNING",
                # The sandbox process listens on loopback: allow it as a Marketo endpoint.
                MARKETO_DEST_ALLOWED_ENDPOINTS=sandbox_url,
                **otel,
            )
            process = stack.enter_context(
                spawned([python, "-m", "service", "serve"], env, work / f"{name}.log")
            )
            return Server(name, f"127.0.0.1:{port}", process)

        noop_port = free_port()
        noop = Server(
            "noop",
            f"127.0.0.1:{noop_port}",
            stack.enter_context(
                spawned(
                    [python, __file__, "--noop-server", str(noop_port)],
                    clean_environ(),
                    work / "noop.log",
                )
            ),
            destination_id="noop",
        )
        untraced = service("untraced", OTEL_SDK_DISABLED="true")
        traced = service(
            "traced",
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_METRIC_EXPORT_INTERVAL="5000",
        )
        backlog = service("backlog", OTEL_SDK_DISABLED="true")
        servers = (noop, untraced, traced, backlog)
        for server in servers:
            await wait_ready(server.address, server.process, work / f"{server.name}.log")
        for server in (untraced, traced, backlog):
            server.destination_id = await configure(server.address, sandbox_url)
        # From now on every Marketo REST call answers 607: each dispatcher pauses its queue.
        async with httpx.AsyncClient() as http:
            answer = await http.post(
                f"{sandbox_url}/_sandbox/faults",
                json={"faults": [{"path_prefix": "/rest", "code": "607"}]},
            )
            answer.raise_for_status()

        requests = Requests()
        shape = {"streams": args.streams, "per_request": args.per_request}
        warm_up = args.streams * args.per_request * 5
        for server in (noop, untraced, traced, backlog):  # connections, caches, the first pause
            await measure(server, requests, updates=warm_up, **shape)
        for server in (untraced, traced, backlog):
            await paused(server)

        runs: dict[str, list[Run]] = {
            "noop": [],
            "untraced": [],
            "traced": [],
            "noop lockstep": [],
            "untraced lockstep": [],
        }
        order = [
            (noop, WINDOW),
            (untraced, WINDOW),
            (traced, WINDOW),
            (noop, LOCKSTEP_WINDOW),
            (untraced, LOCKSTEP_WINDOW),
        ]
        for round_no in range(args.rounds):
            turn = round_no % len(order)
            for server, window in order[turn:] + order[:turn]:
                name = server.name if window == WINDOW else f"{server.name} lockstep"
                run = await measure(server, requests, updates=args.updates, window=window, **shape)
                runs[name].append(run)
                print(
                    f"round {round_no + 1} {name:>18}: {run.per_s:10,.0f} updates/s  "
                    f"p50 {percentile(run.latencies_ms, 0.5):6.1f} ms  "
                    f"p99 {percentile(run.latencies_ms, 0.99):6.1f} ms",
                    flush=True,
                )

        def median_rate(name: str) -> float:
            return statistics.median(r.per_s for r in runs[name])

        def latencies(name: str) -> list[float]:
            return [ms for r in runs[name] for ms in r.latencies_ms]

        noop_rate, durable_rate, traced_rate = (
            median_rate("noop"),
            median_rate("untraced"),
            median_rate("traced"),
        )
        for name in ("untraced", "traced"):
            server = untraced if name == "untraced" else traced
            waiting = await pending(server)
            stored = warm_up + sum(
                r.updates for key in (name, f"{name} lockstep") for r in runs.get(key, [])
            )
            if waiting != stored:
                raise RuntimeError(f"{name}: {waiting} pending, {stored} acknowledged")

        print(
            f"backlog: streaming {args.backlog:,} updates into an idle dispatcher ...", flush=True
        )
        memory = await backlog_rss(
            backlog,
            requests,
            updates=args.backlog,
            streams=args.streams,
            per_request=args.backlog_per_request,
            wal=work / "backlog" / "store.db-wal",
        )
        if memory["pending"] != warm_up + args.backlog:
            raise RuntimeError(f"backlog: {memory['pending']} pending of {warm_up + args.backlog}")
        spans = len(receiver.spans())

    ratio = durable_rate / noop_rate
    lockstep_noop, lockstep_durable = (
        median_rate("noop lockstep"),
        median_rate("untraced lockstep"),
    )
    lockstep_ratio = lockstep_durable / lockstep_noop
    overhead = max(0.0, 1 - traced_rate / durable_rate)
    durable_latencies = latencies("untraced")
    growth = memory["rss_mb_end"] - memory["rss_mb_at"]["25%"]
    figures = {
        "ratio": round(ratio, 3),
        "updates_per_s": round(durable_rate),
        "noop_updates_per_s": round(noop_rate),
        "traced_updates_per_s": round(traced_rate),
        "p50_ms": round(percentile(durable_latencies, 0.5), 2),
        "p99_ms": round(percentile(durable_latencies, 0.99), 2),
        "noop_p50_ms": round(percentile(latencies("noop"), 0.5), 2),
        "noop_p99_ms": round(percentile(latencies("noop"), 0.99), 2),
        "traced_p99_ms": round(percentile(latencies("traced"), 0.99), 2),
        "window": WINDOW,
        "lockstep_ratio": round(lockstep_ratio, 3),
        "lockstep_updates_per_s": round(lockstep_durable),
        "lockstep_noop_updates_per_s": round(lockstep_noop),
        "lockstep_p50_ms": round(percentile(latencies("untraced lockstep"), 0.5), 2),
        "lockstep_p99_ms": round(percentile(latencies("untraced lockstep"), 0.99), 2),
        "lockstep_noop_p50_ms": round(percentile(latencies("noop lockstep"), 0.5), 2),
        "rss_mb_backlog": round(memory["hwm_mb"], 1),
        "rss_mb_growth_25_to_100": round(growth, 1),
        "wal_mb_backlog_peak": round(memory["wal_mb_peak"], 1),
        "backlog_updates": memory["pending"],
        "backlog_updates_per_s": round(memory["sent"] / memory["seconds"]),
        "tracing_overhead": round(overhead, 3),
        "spans_exported": spans,
        "streams": args.streams,
        "updates_per_request": args.per_request,
        "rounds": args.rounds,
        "ratio_target": RATIO_TARGET,
        "rss_mb_target": RSS_TARGET_MB,
        "wal_mb_target": WAL_TARGET_MB,
        "tracing_overhead_target": OVERHEAD_TARGET,
        "ratio_ok": ratio >= RATIO_TARGET,
        "rss_ok": memory["hwm_mb"] < RSS_TARGET_MB,
        "tracing_overhead_ok": overhead <= OVERHEAD_TARGET,
        "wal_ok": memory["wal_mb_peak"] < WAL_TARGET_MB,
    }
    print(
        f"{args.streams} streams, up to {WINDOW} requests of {args.per_request} updates in "
        f"flight each:\n"
        f"no-op servicer  : {noop_rate:10,.0f} updates/s\n"
        f"Sync (durable)  : {durable_rate:10,.0f} updates/s  ratio {ratio:.2f} "
        f"(target >= {RATIO_TARGET})  p50 {figures['p50_ms']} ms  p99 {figures['p99_ms']} ms\n"
        f"lockstep (each stream waits for every answer): no-op {lockstep_noop:,.0f}, Sync "
        f"{lockstep_durable:,.0f} updates/s, ratio {lockstep_ratio:.2f}  "
        f"p50 {figures['lockstep_p50_ms']} ms  p99 {figures['lockstep_p99_ms']} ms\n"
        f"Sync (traced)   : {traced_rate:10,.0f} updates/s  overhead {overhead:.1%} "
        f"(target <= {OVERHEAD_TARGET:.0%}), {spans} spans exported\n"
        f"backlog {memory['pending']:,}: RSS start {memory['rss_mb_start']:.1f} MB, "
        f"at {memory['rss_mb_at']} MB, end {memory['rss_mb_end']:.1f} MB, "
        f"peak (VmHWM) {memory['hwm_mb']:.1f} MB (target < {RSS_TARGET_MB:.0f}); "
        f"largest WAL {memory['wal_mb_peak']:.1f} MB (target < {WAL_TARGET_MB:.0f})"
    )
    return figures


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    parser.add_argument("--updates", type=int, default=160_000, help="updates per run (160000)")
    parser.add_argument("--streams", type=int, default=8, help="concurrent Sync streams (8)")
    parser.add_argument("--per-request", type=int, default=100, help="updates per request (100)")
    parser.add_argument("--backlog", type=int, default=1_000_000, help="backlog size (1000000)")
    parser.add_argument(
        "--backlog-per-request", type=int, default=500, help="updates per request, backlog (500)"
    )
    parser.add_argument("--noop-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    unit = args.streams * args.backlog_per_request
    if args.backlog % unit:
        parser.error(
            f"--backlog must be a multiple of streams x backlog updates per request ({unit})"
        )
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.noop_server:
        asyncio.run(run_noop_server(arguments.noop_server))
    else:
        print(json.dumps(asyncio.run(main(arguments))))
