"""Issue 9, done when: the whole service in process, traced with the real OTLP gRPC exporter into an
in-process receiver; Configure, Activate and a Sync of 1,000 updates against the sandbox; the
exported trace has the documented shape and no secret anywhere."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from service.telemetry.core import Telemetry
from service.telemetry.rpc import server_interceptor
from service.telemetry.setup import setup_telemetry
from tests.harness import (
    CLIENT_SECRET,
    ENDPOINT,
    MUNCHKIN,
    STANDARD_MAPPINGS,
    Service,
    running_service,
    sandbox_token,
    spec,
    update,
)
from tests.telemetry.conftest import otlp_environ
from tests.telemetry.otlp_receiver import OtlpReceiver, ReceivedSpan

SERVICE = "marketo_destination.v1.MarketoDestinationService"
REALIZED = pb.MEMBERSHIP_STATUS_REALIZED
UPDATES = 1_000
PER_REQUEST = 100
STREAMS = 2


async def configure_and_activate(service: Service) -> str:
    configured = await service.stub.Configure(pb.ConfigureRequest(spec=spec()))
    destination_id: str = configured.destination.id
    await service.stub.Activate(
        pb.ActivateRequest(
            destination_id=destination_id,
            audiences=[pb.Audience(id="a1", name="Trace shape a1")],
            mappings=STANDARD_MAPPINGS,
        )
    )
    return destination_id


def profiles(first: int, count: int) -> list[pb.ProfileUpdate]:
    return [
        update(
            f"p{n}",
            f"person{n}@example.com",
            first=f"First{n}",
            last=f"Last{n}",
            audiences={"a1": REALIZED},
        )
        for n in range(first, first + count)
    ]


async def sync_stream(
    service: Service, destination_id: str, batches: Sequence[Sequence[pb.ProfileUpdate]]
) -> int:
    async def requests() -> AsyncIterator[pb.SyncRequest]:
        for index, batch in enumerate(batches):
            yield pb.SyncRequest(
                destination_id=destination_id, updates=batch, request_id=f"r{index}"
            )

    return sum([response.accepted async for response in service.stub.Sync(requests())])


async def sync_all(service: Service, destination_id: str, total: int, streams: int) -> int:
    """``total`` updates over ``streams`` concurrent Sync streams (one Sync span each)."""
    per_stream = total // streams
    work = [
        [
            profiles(s * per_stream + offset, min(PER_REQUEST, per_stream - offset))
            for offset in range(0, per_stream, PER_REQUEST)
        ]
        for s in range(streams)
    ]
    accepted = await asyncio.gather(*(sync_stream(service, destination_id, w) for w in work))
    return sum(accepted)


async def delivered(service: Service, destination_id: str) -> pb.Dataflow:
    async with asyncio.timeout(120):
        while True:
            answer = await service.stub.GetDataflow(
                pb.GetDataflowRequest(destination_id=destination_id)
            )
            flow: pb.Dataflow = answer.dataflow
            if flow.pending == 0:
                return flow
            await asyncio.sleep(0.05)


def ancestors(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> list[ReceivedSpan]:
    """The parent chain of ``span`` (nearest first), as far as it was exported."""
    chain: list[ReceivedSpan] = []
    current = span
    while current.parent_span_id and current.parent_span_id in by_id:
        current = by_id[current.parent_span_id]
        chain.append(current)
    return chain


async def traced_run(
    tmp_path: Path, receiver: OtlpReceiver, updates: int, streams: int
) -> tuple[str, str]:
    """Configure, Activate and Sync ``updates`` over ``streams`` streams, traced into
    ``receiver``; wait for delivery and flush. Returns the destination id and the access token
    the service used."""
    telemetry = setup_telemetry(otlp_environ(receiver))
    try:
        async with running_service(tmp_path, telemetry=telemetry) as service:
            destination_id = await configure_and_activate(service)
            assert await sync_all(service, destination_id, updates, streams) == updates
            flow = await delivered(service, destination_id)
            assert flow.received == updates
            assert flow.activated.created == updates
            token = await sandbox_token(service)
            leads = await service.leads()
        assert len(leads) == updates
        assert telemetry.force_flush()
    finally:
        telemetry.shutdown()
    return destination_id, token


async def test_configure_activate_sync_export_the_documented_trace(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    destination_id, token = await traced_run(tmp_path, receiver, UPDATES, STREAMS)
    spans = receiver.spans()
    by_id = {s.span_id: s for s in spans}
    assert len(by_id) == len(spans), "span ids are unique"
    assert {s.resource.get("service.name") for s in spans} == {"marketo-destination"}

    # --- RPC spans
    rpc = [s for s in spans if s.kind == "SPAN_KIND_SERVER"]
    for method in ("Configure", "Activate", "Sync"):
        named = [s for s in rpc if s.name == f"{SERVICE}/{method}"]
        assert named, f"no {method} span"
        for span in named:
            assert span.attributes["rpc.system"] == "grpc"
            assert span.attributes["rpc.service"] == SERVICE
            assert span.attributes["rpc.method"] == method
            assert span.attributes["rpc.grpc.status_code"] == 0
            assert span.status == "STATUS_CODE_UNSET"
            assert span.parent_span_id == "", "no caller traceparent: the RPC is a root"
    syncs = [s for s in rpc if s.name == f"{SERVICE}/Sync"]
    assert len(syncs) == STREAMS, "one span per Sync stream"
    sync_ids = {(s.trace_id, s.span_id) for s in syncs}

    # --- batch spans: roots of their own traces, linked to the Sync spans
    batches = [s for s in spans if s.name == "dispatch batch"]
    assert batches, "no batch span"
    linked: set[tuple[str, str]] = set()
    for batch in batches:
        assert batch.parent_span_id == ""
        assert batch.trace_id not in {trace for trace, _ in sync_ids}, "a batch is its own trace"
        assert batch.links, f"batch span without links: {batch}"
        assert set(batch.links) <= sync_ids, "every link points at an exported Sync span"
        assert batch.attributes["marketo_destination.batch.links"] == len(set(batch.links))
        assert batch.attributes["marketo_destination.batch.links_dropped"] == 0
        assert batch.attributes["marketo_destination.destination_id"] == destination_id
        assert batch.attributes["marketo.munchkin_id"] == MUNCHKIN
        assert batch.attributes["marketo_destination.sync_type"] == "audience_and_profile"
        assert 1 <= batch.attributes["marketo_destination.batch.records"] <= 300
        linked |= set(batch.links)
    assert linked == sync_ids, "every Sync span is reached from a batch"
    assert sum(b.attributes["marketo_destination.batch.records"] for b in batches) >= UPDATES
    batch_ids = {b.span_id for b in batches}

    # --- mapping spans: children of batch spans
    mappings = [s for s in spans if s.name == "map batch"]
    assert mappings, "no mapping span"
    for mapping in mappings:
        assert mapping.parent_span_id in batch_ids
        parent = by_id[mapping.parent_span_id]
        assert mapping.trace_id == parent.trace_id
        assert 1 <= mapping.attributes["marketo_destination.batch.records"] <= 300
    assert sum(m.attributes["marketo_destination.batch.records"] for m in mappings) >= UPDATES

    # --- Marketo call spans
    calls = [s for s in spans if s.kind == "SPAN_KIND_CLIENT"]
    under_batch: list[ReceivedSpan] = []
    for call in calls:
        assert call.name.startswith("marketo "), call.name
        chain = ancestors(call, by_id)
        if not chain:  # see test_no_marketo_call_is_an_orphan
            continue
        root = chain[-1]
        assert root.parent_span_id == "" and root.trace_id == call.trace_id
        assert root.span_id in batch_ids or root.kind == "SPAN_KIND_SERVER", call.name
        if root.span_id in batch_ids:
            under_batch.append(call)
        attrs = call.attributes
        assert attrs["marketo.endpoint"] in call.name
        assert attrs["http.request.method"] in ("GET", "POST")
        assert attrs["http.response.status_code"] == 200
        assert "filterValues=***" in attrs["url.full"] or "filterValues" not in attrs["url.full"]
        assert attrs["url.full"].lower().startswith(ENDPOINT.lower())
        assert attrs["server.address"].lower() == f"{MUNCHKIN.lower()}.mktorest.com"
        assert attrs["marketo.attempt"] >= 1
        if attrs["marketo.endpoint"] != "identity":
            assert attrs["marketo.code"] == "ok", call
    endpoints = {c.attributes["marketo.endpoint"] for c in under_batch}
    assert {"leads", "leads/sync", "lists/leads/add"} <= endpoints, endpoints
    writes = [
        c
        for c in under_batch
        if c.attributes["http.request.method"] == "POST"
        and c.attributes["marketo.endpoint"] in ("leads/sync", "lists/leads/add")
    ]
    assert writes and all(1 <= c.attributes["marketo.records"] <= 300 for c in writes)
    created = sum(
        c.attributes["marketo.records"]
        for c in writes
        if c.attributes["marketo.endpoint"] == "leads/sync"
    )
    assert created >= UPDATES, "every profile rode in a Sync Leads call"
    activate = next(s for s in rpc if s.name == f"{SERVICE}/Activate")
    assert any(activate in ancestors(c, by_id) for c in calls), (
        "Activate's Marketo calls are its children"
    )

    # --- no secret, token or profile value anywhere in what was exported
    payloads = receiver.payloads()
    assert payloads
    forbidden = [CLIENT_SECRET, token, "person7@example.com", "First7", "Last7"]
    for payload in payloads:
        for secret in forbidden:
            assert secret.encode() not in payload, f"{secret!r} was exported"


async def test_no_marketo_call_is_an_orphan(tmp_path: Path, receiver: OtlpReceiver) -> None:
    """Every Marketo call is made inside an RPC span or a batch span: a call outside both is a
    trace of its own that nothing leads to."""
    await traced_run(tmp_path, receiver, 200, 1)
    spans = receiver.spans()
    by_id = {s.span_id: s for s in spans}
    orphans = [s.name for s in spans if s.kind == "SPAN_KIND_CLIENT" and not ancestors(s, by_id)]
    assert orphans == []


async def test_disabled_telemetry_exports_nothing(tmp_path: Path, receiver: OtlpReceiver) -> None:
    telemetry: Telemetry = setup_telemetry(otlp_environ(receiver, OTEL_SDK_DISABLED="true"))
    assert not telemetry.enabled
    assert server_interceptor(telemetry) is None
    try:
        async with running_service(tmp_path, telemetry=telemetry) as service:
            destination_id = await configure_and_activate(service)
            assert await sync_all(service, destination_id, 200, 1) == 200
            flow = await delivered(service, destination_id)
            assert flow.activated.created == 200
        telemetry.force_flush()
    finally:
        telemetry.shutdown()
    assert receiver.requests == 0
    assert receiver.spans() == []
