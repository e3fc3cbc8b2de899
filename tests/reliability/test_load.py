"""Load: many concurrent `Sync` streams against the service as a subprocess (over a sandbox
subprocess). Asserts no error and exact counts; reports the p99 acknowledgement latency and the
service's peak RSS (no timing assertion: the figures go to docs/reliability.md)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import grpc
import httpx
import pytest

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from service._proto.marketo_destination.v1 import destination_pb2_grpc as pb_grpc
from tests.harness import STANDARD_MAPPINGS, spec, update
from tests.processes import ServiceProcess, dataflow, rss_kib, sandbox_process, stub
from tests.reliability.profile import PROFILE, record

DESTINATIONS = 5


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def one_stream(
    client: pb_grpc.MarketoDestinationServiceStub, destination_id: str, stream: int
) -> list[float]:
    """Send the stream's requests one after the other, each after the previous one's
    acknowledgement; returns each request's acknowledgement latency (s)."""
    call = client.Sync()
    latencies: list[float] = []
    size = PROFILE.load_request_size
    for start in range(0, PROFILE.load_updates, size):
        request = pb.SyncRequest(
            destination_id=destination_id,
            request_id=f"s{stream}-{start}",
            updates=[
                update(
                    f"s{stream}-p{i}",
                    f"s{stream}-user{i}@example.com",
                    first=f"F{i}",
                    audiences={"a1": pb.MEMBERSHIP_STATUS_REALIZED},
                )
                for i in range(start, min(start + size, PROFILE.load_updates))
            ],
        )
        sent = time.perf_counter()
        await call.write(request)
        response = await call.read()
        latencies.append(time.perf_counter() - sent)
        assert isinstance(response, pb.SyncResponse), response
        assert response.request_id == request.request_id
        assert response.accepted == len(request.updates) and not response.rejected, response
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF  # type: ignore[attr-defined]
    assert await call.code() == grpc.StatusCode.OK
    return latencies


async def all_streams(port: int, ids: list[str]) -> tuple[list[list[float]], float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        client = pb_grpc.MarketoDestinationServiceStub(channel)
        started = time.perf_counter()
        results = await asyncio.gather(
            *(
                one_stream(client, ids[stream % DESTINATIONS], stream)
                for stream in range(PROFILE.load_streams)
            )
        )
        return list(results), time.perf_counter() - started


def test_concurrent_sync_streams(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        endpoint = stack.enter_context(sandbox_process())
        httpx.post(f"{endpoint}/_sandbox/reset", json={"window_seconds": 2}).raise_for_status()
        service = ServiceProcess(tmp_path / "data", endpoint)
        stack.callback(lambda: service.kill() if service.alive() else None)
        channel, client = stub(service.port)
        ids = []
        with channel:
            for index in range(DESTINATIONS):
                connection = pb.MarketoConnection(
                    munchkin_id="123-ABC-456",
                    client_id="sandbox-client-id",
                    client_secret="sandbox-client-secret",
                    endpoint=endpoint,
                )
                configured = client.Configure(
                    pb.ConfigureRequest(spec=spec(name=f"Load {index}", connection=connection))
                )
                ids.append(configured.destination.id)
                client.Activate(
                    pb.ActivateRequest(
                        destination_id=ids[-1],
                        audiences=[pb.Audience(id="a1", name=f"Load {index}")],
                        mappings=STANDARD_MAPPINGS,
                    )
                )
        started = time.perf_counter()
        results, elapsed = asyncio.run(all_streams(service.port, ids))
        total = PROFILE.load_streams * PROFILE.load_updates
        received = sum(dataflow(service.port, i).received for i in ids)
        assert received == total
        deadline = time.monotonic() + 200 * (5 if PROFILE.name == "long" else 1)
        while sum(dataflow(service.port, i).pending for i in ids):
            if time.monotonic() > deadline:
                flows = [dataflow(service.port, i) for i in ids]
                pytest.fail(f"not delivered in time: {flows}\n{service.log.read_text()[-5000:]}")
            time.sleep(0.2)
        delivered = time.perf_counter() - started
        flows = [dataflow(service.port, i) for i in ids]
        peak = rss_kib(service.pid, "VmHWM")
        service.stop()
    assert all(not flow.failed for flow in flows), [dict(f.failed) for f in flows]
    assert sum(f.activated.created + f.activated.updated for f in flows) == total
    latencies = [latency for stream in results for latency in stream]
    record(
        "load",
        {
            "streams": PROFILE.load_streams,
            "updates_per_stream": PROFILE.load_updates,
            "updates_per_request": PROFILE.load_request_size,
            "requests": len(latencies),
            "ack_latency_p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
            "ack_latency_p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
            "ack_latency_max_ms": round(max(latencies) * 1000, 1),
            "ingest_updates_per_second": round(total / elapsed),
            "seconds_to_acknowledge_all": round(elapsed, 1),
            "seconds_to_deliver_all": round(delivered, 1),
            "service_peak_rss_mib": round(peak / 1024, 1),
        },
    )
