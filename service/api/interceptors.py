"""The server interceptor that reports errors.

:class:`ErrorInterceptor` wraps every RPC handler, unary or streaming. A
:class:`~service.errors.DestinationError` becomes ``context.abort`` with the error's status code,
its message and its ``google.rpc`` details (packed into ``grpc-status-details-bin`` by
grpcio-status). Any other exception becomes ``INTERNAL`` with a generic message; its traceback is
logged, never sent.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from grpc_status import rpc_status

from service.api.handlers import is_async, rewrap
from service.api.sync_checks import nul_violations
from service.errors import DestinationError, InvalidArgument

__all__ = ["INTERNAL_MESSAGE", "ErrorInterceptor"]

_log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal error; the service log has the details"
"""The only thing a caller learns about an unexpected exception."""

UNPARSABLE_MESSAGE = "the request message could not be parsed"
"""INVALID_ARGUMENT message for a request the server cannot decode (e.g. nested too deeply)."""

_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_Continuation: TypeAlias = Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]]

if TYPE_CHECKING:  # generic in the type stubs only
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


def status_of(error: DestinationError) -> grpc.Status:
    """The gRPC status (code, message, ``google.rpc`` details) that reports ``error``."""
    details = []
    for detail in error.details():
        packed = any_pb2.Any()
        packed.Pack(detail)
        details.append(packed)
    proto = status_pb2.Status(code=error.status.value[0], message=error.message, details=details)
    status: grpc.Status = rpc_status.to_status(proto)
    return status


async def _report(
    error: Exception, method: str, context: grpc.aio.ServicerContext[Any, Any]
) -> NoReturn:
    if isinstance(error, DestinationError):
        _log.info("%s failed: %s %s", method, error.status.name, error.message)
        status = status_of(error)
        await context.abort(status.code, status.details, status.trailing_metadata)
    if isinstance(error, DecodeError):
        # A streamed request the caller encoded but the server cannot decode: the caller's fault.
        _log.info("%s failed: INVALID_ARGUMENT %s", method, error)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{UNPARSABLE_MESSAGE}: {error}")
    _log.error("%s failed with an unexpected error", method, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


class _Refused:
    """Stands for a unary request refused as it was read (it could not be decoded, or a string
    in it holds a NUL character), so the handler can report why."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A unary request deserializer that returns `_Refused` instead of raising (grpc.aio would
    answer UNKNOWN), and for a request with a NUL character in any string: nothing the service
    stores may hold one (PostgreSQL's text cannot), so it is refused here, naming each such
    field, for every RPC at once."""
    if deserialize is None:
        return None
    parse = deserialize

    def tolerant(data: bytes) -> Any:
        try:
            request = parse(data)
        except DecodeError as error:
            return _Refused(error)
        if b"\0" in data:  # a NUL in a string is encoded as a zero byte
            violations = nul_violations(request)
            if violations:
                return _Refused(InvalidArgument(violations))
        return request

    return tolerant


def _wrap_unary_response(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            if isinstance(request, _Refused):
                raise request.error
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _report(error, method, context)

    return wrapper


def _wrap_stream_response(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    # grpc.aio picks the calling convention from the function type: an async generator yields
    # responses, a coroutine function writes them with context.write. Keep the original's type.
    if inspect.isasyncgenfunction(behavior):

        async def generator(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            try:
                if isinstance(request, _Refused):
                    raise request.error
                async for response in behavior(request, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await _report(error, method, context)

        return generator
    return _wrap_unary_response(behavior, method)


class ErrorInterceptor(_ServerInterceptor):
    """Turns exceptions raised by handlers into gRPC statuses (see the module docstring)."""

    async def intercept_service(
        self, continuation: _Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> _Handler:
        handler = await continuation(handler_call_details)
        if handler is None or not is_async(handler):
            return handler
        method = handler_call_details.method
        wrapped = rewrap(
            handler,
            unary=lambda behavior: _wrap_unary_response(behavior, method),
            stream=lambda behavior: _wrap_stream_response(behavior, method),
            single_request_deserializer=_tolerant(handler.request_deserializer),
        )
        return wrapped or handler
