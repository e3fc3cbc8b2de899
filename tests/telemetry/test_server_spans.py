"""RPC spans: a real grpc.aio server from build_server, the tracing interceptor outermost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service._proto.marketo_destination.v1 import destination_pb2_grpc
from service.api.interceptors import ErrorInterceptor
from service.api.server import build_server
from service.settings import Settings
from service.telemetry.context import current_trace_context
from service.telemetry.core import Telemetry
from service.telemetry.rpc import server_interceptor
from tests.telemetry.otlp_receiver import OtlpReceiver, ReceivedSpan, attribute_values

SECRET = "Bearer sekret-access-token-0123456789"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER = f"00-{TRACE_ID}-{CALLER_SPAN}-01"


def raw(channel: grpc.aio.Channel) -> Any:
    """The channel, for raw-bytes calls the type stubs cannot describe."""
    return channel


def placeholder_servicer() -> Any:
    """The generated base servicer: these tests do not call the v1 service (built elsewhere)."""
    return destination_pb2_grpc.MarketoDestinationServiceServicer()


class Probe:
    """A tiny raw-bytes service: what the handlers saw of the trace context."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []

    async def unary(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        self.seen.append(current_trace_context())
        if request == b"not-found":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        if request == b"crash":
            raise RuntimeError(f"boom with {SECRET}")
        return request

    async def chat(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        async for request in requests:
            self.seen.append(current_trace_context())
            yield request.upper()

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        return grpc.method_handlers_generic_handler(
            "test.Probe",
            {
                "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
                "Chat": grpc.stream_stream_rpc_method_handler(self.chat),
            },
        )


@pytest.fixture
async def served(telemetry: Telemetry) -> AsyncIterator[tuple[grpc.aio.Channel, Probe]]:
    """The probe service behind the interceptors in build_server's order (tracing outermost,
    then errors); build_server itself refuses methods outside the v1 permission table."""
    probe = Probe()
    tracing = server_interceptor(telemetry, excluded_services=())
    assert tracing is not None
    server = grpc.aio.server(interceptors=[tracing, ErrorInterceptor()])
    server.add_generic_rpc_handlers((probe.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel, probe
    await server.stop(None)


@pytest.fixture
async def built(settings: Settings, telemetry: Telemetry) -> AsyncIterator[grpc.aio.Channel]:
    """A server from build_server with the tracing interceptor, health traced too."""
    server, port = await build_server(
        settings,
        servicer=placeholder_servicer(),
        tracing_interceptor=server_interceptor(telemetry, excluded_services=()),
    )
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    await server.stop(None)


def only(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    matching = [s for s in spans if s.name == name]
    assert len(matching) == 1, [s.name for s in spans]
    return matching[0]


async def test_unary_rpc_span_is_a_child_of_the_callers_traceparent(
    served: tuple[grpc.aio.Channel, Probe], telemetry: Telemetry, receiver: OtlpReceiver
) -> None:
    channel, probe = served
    unary = raw(channel).unary_unary("/test.Probe/Unary")
    metadata = (("traceparent", CALLER), ("authorization", SECRET))
    assert await unary(b"hi", metadata=metadata) == b"hi"
    assert telemetry.force_flush()

    span = only(receiver.spans(), "test.Probe/Unary")
    assert span.kind == "SPAN_KIND_SERVER"
    assert (span.trace_id, span.parent_span_id) == (TRACE_ID, CALLER_SPAN)
    assert span.attributes == {
        "rpc.system": "grpc",
        "rpc.service": "test.Probe",
        "rpc.method": "Unary",
        "rpc.grpc.status_code": 0,
    }
    assert span.status == "STATUS_CODE_UNSET"
    assert span.resource["service.name"] == "marketo-destination"
    # The handler runs inside the span: what it would store in the outbox points at it.
    assert probe.seen == [f"00-{TRACE_ID}-{span.span_id}-01"]
    assert "sekret" not in " ".join(attribute_values(receiver.spans()))


async def test_without_traceparent_the_rpc_starts_a_trace(
    served: tuple[grpc.aio.Channel, Probe], telemetry: Telemetry, receiver: OtlpReceiver
) -> None:
    channel, _ = served
    await raw(channel).unary_unary("/test.Probe/Unary")(b"x")
    assert telemetry.force_flush()
    span = only(receiver.spans(), "test.Probe/Unary")
    assert span.parent_span_id == ""
    assert span.trace_id != TRACE_ID


async def test_failed_calls_carry_their_status(
    served: tuple[grpc.aio.Channel, Probe], telemetry: Telemetry, receiver: OtlpReceiver
) -> None:
    channel, _ = served
    unary = raw(channel).unary_unary("/test.Probe/Unary")
    with pytest.raises(grpc.aio.AioRpcError) as not_found:
        await unary(b"not-found")
    assert not_found.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as crashed:
        await unary(b"crash")
    assert crashed.value.code() is grpc.StatusCode.INTERNAL

    # The caller gets the status as the server sends it, before the server's span ends: wait
    # (bounded) for both spans to be exported.
    for _ in range(100):
        assert telemetry.force_flush()
        spans = [s for s in receiver.spans() if s.name == "test.Probe/Unary"]
        by_code = {s.attributes["rpc.grpc.status_code"]: s for s in spans}
        if len(spans) >= 2:
            break
        await asyncio.sleep(0.05)
    assert set(by_code) == {5, 13}
    # NOT_FOUND is the caller's problem (semantic conventions); INTERNAL is ours.
    assert by_code[5].status == "STATUS_CODE_UNSET"
    assert by_code[13].status == "STATUS_CODE_ERROR"
    # The error interceptor runs inside the span: the failure is traced with its real status.
    assert by_code[13].status_message == "INTERNAL"
    assert "sekret" not in " ".join(attribute_values(spans))


async def test_bidirectional_stream_is_one_span(
    served: tuple[grpc.aio.Channel, Probe], telemetry: Telemetry, receiver: OtlpReceiver
) -> None:
    channel, probe = served
    chat = raw(channel).stream_stream("/test.Probe/Chat")
    call = chat(metadata=(("traceparent", CALLER),))
    replies = []
    for word in (b"a", b"b", b"c"):
        await call.write(word)
        replies.append(await call.read())
    await call.done_writing()
    assert replies == [b"A", b"B", b"C"]
    assert await call.code() is grpc.StatusCode.OK
    assert telemetry.force_flush()

    span = only(receiver.spans(), "test.Probe/Chat")
    assert (span.trace_id, span.parent_span_id) == (TRACE_ID, CALLER_SPAN)
    assert span.attributes["rpc.grpc.status_code"] == 0
    assert set(probe.seen) == {f"00-{TRACE_ID}-{span.span_id}-01"}


async def test_build_server_traces_rpcs_with_the_callers_parent(
    built: grpc.aio.Channel, telemetry: Telemetry, receiver: OtlpReceiver
) -> None:
    stub = health_pb2_grpc.HealthStub(built)
    metadata = (("traceparent", CALLER), ("authorization", SECRET))
    response = await stub.Check(health_pb2.HealthCheckRequest(), metadata=metadata)
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    # Watch writes with context.write (no generator): the interceptor must keep that style.
    watch = stub.Watch(health_pb2.HealthCheckRequest())
    first = await watch.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await stub.Check(health_pb2.HealthCheckRequest(service="nope"))
    assert unknown.value.code() is grpc.StatusCode.NOT_FOUND
    assert telemetry.force_flush()

    checks = [s for s in receiver.spans() if s.name == "grpc.health.v1.Health/Check"]
    assert len(checks) == 2
    traced, failed = sorted(checks, key=lambda s: s.trace_id != TRACE_ID)
    assert (traced.trace_id, traced.parent_span_id) == (TRACE_ID, CALLER_SPAN)
    assert traced.kind == "SPAN_KIND_SERVER"
    assert traced.attributes["rpc.grpc.status_code"] == 0
    assert failed.attributes["rpc.grpc.status_code"] == 5
    assert "sekret" not in " ".join(attribute_values(receiver.spans()))
    for payload in receiver.payloads():
        assert b"sekret" not in payload


async def test_health_is_not_traced_by_default(
    settings: Settings, telemetry: Telemetry, receiver: OtlpReceiver
) -> None:
    server, port = await build_server(
        settings,
        servicer=placeholder_servicer(),
        tracing_interceptor=server_interceptor(telemetry),
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    finally:
        await server.stop(None)
    assert telemetry.force_flush()
    assert receiver.spans() == []
