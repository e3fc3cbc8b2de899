"""An in-process OTLP/gRPC receiver: the collector's trace and metrics services on a free port.

Point the real exporter at it with ``OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint`` (plain
``http://`` is insecure). It runs a threaded (not asyncio) gRPC server, so a test may flush the
SDK synchronously from the event loop without deadlocking::

    with OtlpReceiver() as receiver:
        telemetry = setup_telemetry({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint})
        ...
        telemetry.force_flush()
        spans = receiver.spans()
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

__all__ = ["OtlpReceiver", "ReceivedPoint", "ReceivedSpan", "attribute_values"]


def _value(any_value: common_pb2.AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in any_value.kvlist_value.values}
    return getattr(any_value, kind)


def _attrs(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span, decoded. Ids are lowercase hex, as in a ``traceparent``."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: str
    """``SPAN_KIND_SERVER``, ``SPAN_KIND_CLIENT``, ``SPAN_KIND_INTERNAL`` ..."""
    status: str
    """``STATUS_CODE_UNSET``, ``STATUS_CODE_OK`` or ``STATUS_CODE_ERROR``."""
    status_message: str
    attributes: dict[str, Any]
    links: list[tuple[str, str]]
    """(trace id, span id) of each link."""
    events: list[tuple[str, dict[str, Any]]]
    resource: dict[str, Any]
    scope: str
    dropped_links: int = 0


@dataclass(frozen=True)
class ReceivedPoint:
    """One exported metric data point: the metric's name, its attributes and its value (the sum
    or gauge value; for a histogram, the count and sum)."""

    metric: str
    attributes: dict[str, Any]
    value: float
    histogram_sum: float | None = None
    resource: dict[str, Any] = field(default_factory=dict)


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._receiver._received(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, context: Any
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        self._receiver._received(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class OtlpReceiver:
    """Collects every OTLP trace and metrics export request it receives."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._trace_requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self._metric_requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self._server: grpc.Server | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>``, for ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OtlpReceiver:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        add_traces: Any = trace_service_pb2_grpc.add_TraceServiceServicer_to_server
        add_metrics: Any = metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server
        add_traces(_Traces(self), server)
        add_metrics(_Metrics(self), server)
        self.port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(None)
            self._server = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _received(self, request: Any) -> None:
        with self._lock:
            if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
                self._trace_requests.append(request)
            else:
                self._metric_requests.append(request)

    # ------------------------------------------------------------------ reading

    @property
    def requests(self) -> int:
        """How many export requests (traces and metrics) arrived."""
        with self._lock:
            return len(self._trace_requests) + len(self._metric_requests)

    def payloads(self) -> list[bytes]:
        """Every request as received, serialized: search them for strings that must not leak."""
        with self._lock:
            requests: list[Any] = [*self._trace_requests, *self._metric_requests]
        return [r.SerializeToString() for r in requests]

    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far, in arrival order."""
        with self._lock:
            requests = list(self._trace_requests)
        return list(self._iter_spans(requests))

    @staticmethod
    def _iter_spans(
        requests: list[trace_service_pb2.ExportTraceServiceRequest],
    ) -> Iterator[ReceivedSpan]:
        for request in requests:
            for resource_spans in request.resource_spans:
                resource = _attrs(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        yield ReceivedSpan(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            kind=trace_pb2.Span.SpanKind.Name(span.kind),
                            status=trace_pb2.Status.StatusCode.Name(span.status.code),
                            status_message=span.status.message,
                            attributes=_attrs(span.attributes),
                            links=[
                                (link.trace_id.hex(), link.span_id.hex()) for link in span.links
                            ],
                            events=[(e.name, _attrs(e.attributes)) for e in span.events],
                            resource=resource,
                            scope=scope_spans.scope.name,
                            dropped_links=span.dropped_links_count,
                        )

    def points(self, metric: str | None = None) -> list[ReceivedPoint]:
        """Every metric data point received (of ``metric`` only, when given)."""
        with self._lock:
            requests = list(self._metric_requests)
        points: list[ReceivedPoint] = []
        for request in requests:
            for resource_metrics in request.resource_metrics:
                resource = _attrs(resource_metrics.resource.attributes)
                for scope_metrics in resource_metrics.scope_metrics:
                    for m in scope_metrics.metrics:
                        if metric is not None and m.name != metric:
                            continue
                        points.extend(_points(m, resource))
        return points


def _points(m: Any, resource: dict[str, Any]) -> list[ReceivedPoint]:
    kind = m.WhichOneof("data")
    out: list[ReceivedPoint] = []
    if kind in ("sum", "gauge"):
        for p in getattr(m, kind).data_points:
            number = p.as_int if p.WhichOneof("value") == "as_int" else p.as_double
            out.append(ReceivedPoint(m.name, _attrs(p.attributes), float(number), None, resource))
    elif kind == "histogram":
        for p in m.histogram.data_points:
            out.append(ReceivedPoint(m.name, _attrs(p.attributes), float(p.count), p.sum, resource))
    return out


def attribute_values(spans: list[ReceivedSpan]) -> list[str]:
    """Every attribute value (span, event, resource) of ``spans``, as text."""
    values: list[str] = []
    for span in spans:
        sources = [span.attributes, span.resource, *(attrs for _, attrs in span.events)]
        for attrs in sources:
            values.extend(str(v) for v in attrs.values())
        values.append(span.name)
        values.append(span.status_message)
    return values
