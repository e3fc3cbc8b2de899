"""The gRPC server interceptor: one SERVER span per RPC, the child of the caller's
``traceparent``."""

from __future__ import annotations

import contextlib
import inspect
import time
from asyncio import CancelledError
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from opentelemetry import context as otel_context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from service.api.handlers import is_async, rewrap
from service.telemetry.context import parent_context
from service.telemetry.core import Telemetry

__all__ = ["server_interceptor"]

if TYPE_CHECKING:  # generic in the type stubs only
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor

_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_Continuation: TypeAlias = Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]]

# Server-side errors by the RPC semantic conventions; other codes are the caller's problem.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_CODES_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


def server_interceptor(
    telemetry: Telemetry, *, excluded_services: Collection[str] | None = None
) -> _ServerInterceptor | None:
    """The tracing interceptor for ``build_server(..., tracing_interceptor=...)``, or ``None``
    when telemetry is disabled (no interceptor at all: nil overhead).

    One SERVER span per RPC, named ``package.Service/Method``, the child of the caller's W3C
    ``traceparent`` metadata when there is one, with ``rpc.system``, ``rpc.service``,
    ``rpc.method`` and ``rpc.grpc.status_code``, and its duration in the
    ``rpc.server.call.duration`` histogram with the same attributes. Request bodies and metadata
    values are never recorded. ``excluded_services`` (default: ``telemetry.excluded_services``)
    are not traced.
    """
    if not telemetry.enabled:
        return None
    excluded = (
        telemetry.excluded_services if excluded_services is None else frozenset(excluded_services)
    )
    return _TracingInterceptor(telemetry, excluded)


def _status_code(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode | None:
    code: Any = context.code()
    if code is None or isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        return _CODES_BY_VALUE.get(code, grpc.StatusCode.UNKNOWN)
    return grpc.StatusCode.UNKNOWN


class _TracingInterceptor(_ServerInterceptor):
    """Why not opentelemetry-instrumentation-grpc's aio interceptor: it turns every streaming
    handler into an async generator, which breaks the ``context.write`` handlers grpc.aio allows
    (the health service's ``Watch``), and traces an escaped exception with status OK."""

    def __init__(self, telemetry: Telemetry, excluded: frozenset[str]) -> None:
        self._telemetry = telemetry
        self._excluded = excluded

    async def intercept_service(
        self, continuation: _Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> _Handler:
        handler = await continuation(handler_call_details)
        if handler is None:  # an unknown method: grpc answers UNIMPLEMENTED
            return handler
        full = handler_call_details.method.lstrip("/")
        service, _, method = full.partition("/")
        if service in self._excluded or not is_async(handler):
            return handler
        metadata = handler_call_details.invocation_metadata or ()
        traceparent = [v for k, v in metadata if k == "traceparent" and isinstance(v, str)]
        parent = parent_context(traceparent[0] if traceparent else None)
        attributes: dict[str, AttributeValue] = {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": method,
        }
        traced = _Traced(self._telemetry, full, parent, attributes)
        return rewrap(handler, unary=traced.unary, stream=traced.stream) or handler


@dataclass(frozen=True, slots=True)
class _Traced:
    telemetry: Telemetry
    name: str
    parent: otel_context.Context
    attributes: dict[str, AttributeValue]

    @contextlib.contextmanager
    def _span(self, context: grpc.aio.ServicerContext[Any, Any]) -> Iterator[Span]:
        started = time.perf_counter()
        with self.telemetry.tracer.start_as_current_span(
            self.name,
            context=self.parent,
            kind=SpanKind.SERVER,
            attributes=self.attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            code = grpc.StatusCode.UNKNOWN
            try:
                yield span
            except grpc.aio.AbortError:
                code = _status_code(context) or grpc.StatusCode.UNKNOWN
                _finish(span, code)
                raise
            except BaseException as error:
                found = _status_code(context)
                if found is None or found is grpc.StatusCode.OK:
                    found = (
                        grpc.StatusCode.CANCELLED
                        if isinstance(error, (GeneratorExit, CancelledError))
                        else grpc.StatusCode.UNKNOWN
                    )
                code = found
                _finish(span, code, error)
                raise
            else:
                code = _status_code(context) or grpc.StatusCode.OK
                _finish(span, code)
            finally:
                self.telemetry.record_rpc(
                    time.perf_counter() - started,
                    service=str(self.attributes["rpc.service"]),
                    method=str(self.attributes["rpc.method"]),
                    status_code=code.value[0],
                )

    def unary(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def traced(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            with self._span(context):
                return await behavior(request, context)

        return traced

    def stream(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        if not inspect.isasyncgenfunction(behavior):  # writes with context.write
            return self.unary(behavior)

        async def traced(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            with self._span(context):
                async for response in behavior(request, context):
                    yield response

        return traced


def _finish(span: Span, code: grpc.StatusCode, error: BaseException | None = None) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in _SERVER_ERRORS:
        # The code's name only: details and exception messages may quote caller data.
        span.set_status(Status(StatusCode.ERROR, code.name))
        if error is not None and not isinstance(error, grpc.aio.AbortError):
            span.set_attribute("error.type", type(error).__qualname__)
