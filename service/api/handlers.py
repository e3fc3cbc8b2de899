"""Re-wrapping a gRPC method handler's behaviour: shared by the server interceptors (errors,
access control, tracing), which each wrap a handler the same way whatever its kind."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeAlias

import grpc

_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_Wrap: TypeAlias = Callable[[Any], Any]


def is_async(handler: _Handler) -> bool:
    """Whether the handler's behaviour is a coroutine or async generator function (grpc.aio)."""
    behavior = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
    return inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)


def rewrap(
    handler: _Handler,
    *,
    unary: _Wrap,
    stream: _Wrap,
    single_request_deserializer: Callable[[Any], Any] | None = None,
) -> _Handler | None:
    """The handler with its behaviour wrapped by `unary` (one response) or `stream` (a stream of
    responses); `single_request_deserializer`, when given, replaces the deserializer of the
    kinds that take one request. None when the handler has no behaviour."""
    deserialize = handler.request_deserializer
    single = single_request_deserializer or deserialize
    serialize = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            unary(handler.unary_unary), request_deserializer=single, response_serializer=serialize
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            unary(handler.stream_unary),
            request_deserializer=deserialize,
            response_serializer=serialize,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            stream(handler.unary_stream), request_deserializer=single, response_serializer=serialize
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            stream(handler.stream_stream),
            request_deserializer=deserialize,
            response_serializer=serialize,
        )
    return None
