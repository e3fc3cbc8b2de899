"""W3C trace context: the ``traceparent`` stored with each update, read back as a parent or as
the links of a batch span."""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanContext
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["MAX_LINKS", "current_trace_context", "link_contexts", "parent_context"]

MAX_LINKS = 128
"""Most span links on one batch span (the SDK's default link limit); the rest are counted."""

_W3C = TraceContextTextMapPropagator()


def current_trace_context() -> str | None:
    """The W3C ``traceparent`` of the current span (store it with an update in the outbox), or
    ``None`` outside any valid span."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return (
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
        f"{int(span_context.trace_flags):02x}"
    )


def parent_context(traceparent: str | None) -> otel_context.Context:
    """The context whose current span is the one ``traceparent`` names; an empty context (a new
    trace) without one."""
    if not traceparent:
        return otel_context.Context()
    return _W3C.extract({"traceparent": traceparent})


def _span_context_of(traceparent: str) -> SpanContext | None:
    span_context = trace.get_current_span(parent_context(traceparent)).get_span_context()
    return span_context if span_context.is_valid else None


def link_contexts(traceparents: Iterable[str | None]) -> tuple[list[SpanContext], int]:
    """The distinct span contexts of ``traceparents``, at most :data:`MAX_LINKS`, and how many
    more distinct ones there were."""
    kept: dict[tuple[int, int], SpanContext] = {}
    dropped: set[tuple[int, int]] = set()
    for traceparent in traceparents:
        if not traceparent:
            continue
        span_context = _span_context_of(traceparent)
        if span_context is None:
            continue
        key = (span_context.trace_id, span_context.span_id)
        if key in kept:
            continue
        if len(kept) < MAX_LINKS:
            kept[key] = span_context
        else:
            dropped.add(key)
    return list(kept.values()), len(dropped)
