"""A loopback gRPC proxy in front of a real service: forwards Sync calls as bytes, and fails the
calls a test plans (RESOURCE_EXHAUSTED with a RetryInfo, UNAVAILABLE after the service answered),
recording each call's metadata."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

SERVICE = "marketo_destination.v1.MarketoDestinationService"


def retry_info_trailer(code: grpc.StatusCode, message: str, delay: timedelta) -> Any:
    """The trailing metadata of a status carrying a google.rpc.RetryInfo of ``delay``."""
    detail = any_pb2.Any()
    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromTimedelta(delay)
    detail.Pack(info)
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return (("grpc-status-details-bin", status.SerializeToString()),)


@dataclass
class Fault:
    """What the proxy does to one Sync call: read ``requests`` requests, forward them to the
    service (``forward``) and wait for its answers, which it drops; then fail the call with
    ``code``, with a RetryInfo of ``retry_after`` when given."""

    requests: int
    code: grpc.StatusCode
    forward: bool = False
    retry_after: timedelta | None = None


@dataclass
class Proxy:
    port: int
    faults: list[Fault]
    metadata: list[dict[str, str]] = field(default_factory=list)
    forwarded: int = 0


@contextlib.asynccontextmanager
async def sync_proxy(upstream_port: int, faults: list[Fault]) -> AsyncIterator[Proxy]:
    """A proxy of Sync to the service on ``upstream_port``; the n-th call meets ``faults[n]``
    (calls past the list are forwarded untouched)."""
    path = f"/{SERVICE}/Sync"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{upstream_port}") as upstream:
        forward = upstream.stream_stream(path)
        server = grpc.aio.server()
        proxy = Proxy(0, list(faults))

        async def sync(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
            metadata = {m.key: m.value for m in context.invocation_metadata()}
            proxy.metadata.append(metadata)
            passed = [(k, v) for k, v in metadata.items() if k in ("authorization", "traceparent")]
            if not proxy.faults:
                call = forward(requests, metadata=passed)
                async for answer in call:
                    proxy.forwarded += 1
                    yield answer
                return
            fault = proxy.faults.pop(0)
            taken = [await anext(requests) for _ in range(fault.requests)]
            if fault.forward:
                call = forward(iter(taken), metadata=passed)
                answers = [answer async for answer in call]
                assert len(answers) == fault.requests
            trailer = ()
            if fault.retry_after is not None:
                trailer = retry_info_trailer(fault.code, "planned", fault.retry_after)
            await context.abort(fault.code, "planned by the test", trailing_metadata=trailer)

        handler = grpc.method_handlers_generic_handler(
            SERVICE, {"Sync": grpc.stream_stream_rpc_method_handler(sync)}
        )
        server.add_generic_rpc_handlers((handler,))
        proxy.port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            yield proxy
        finally:
            await server.stop(None)
