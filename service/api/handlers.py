"""Re-wrapping a gRPC method handler's behaviour: shared by the server interceptors (errors,
access control, tracing), which each wrap a handler the same way whatever its kind."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeAlias

import grpc

_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_Wrap: TypeAlias = Callable[[Any], Any]

_KINDS: tuple[tuple[str, Callable[..., _Handler]], ...] = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)
"""Each kind of handler (the attribute holding its behaviour) and the grpc factory of that kind."""


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
    for kind, make in _KINDS:
        behavior = getattr(handler, kind)
        if behavior is None:
            continue
        takes_one, returns_stream = kind.startswith("unary_"), kind.endswith("_stream")
        wrapped = stream(behavior) if returns_stream else unary(behavior)
        deserialize = handler.request_deserializer
        if takes_one and single_request_deserializer is not None:
            deserialize = single_request_deserializer
        return make(
            wrapped,
            request_deserializer=deserialize,
            response_serializer=handler.response_serializer,
        )
    return None
