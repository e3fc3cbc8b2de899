"""OpenTelemetry, wired once: providers from ``OTEL_*``, the gRPC server interceptor, the Marketo
HTTP transport wrapper, batch spans with links, and the service's metric instruments.

Tracing stays at the edges (the interceptor and the transport); business code only calls the small
helpers here (:meth:`Telemetry.batch_span`, :meth:`Telemetry.record_outcomes` ...), which never
see profile attribute values, secrets or tokens.

The trace of one profile update::

    caller span ──▶ Sync (SERVER span, parent = the caller's traceparent)
                       │ current_trace_context() stored with the update in the outbox
                       ▼
    dispatch batch (root span, one link per stored traceparent)
        ├── map batch
        ├── marketo GET leads          (CLIENT span, from TracingTransport)
        └── marketo POST leads/sync

Nothing here runs at import time: :func:`setup_telemetry` builds the providers and, only when
asked (``set_global=True``, what ``serve`` does), installs them as the global providers so the
instruments created with the OpenTelemetry API elsewhere (the Marketo client's call metrics)
are exported too.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import re
from asyncio import CancelledError
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
)
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import parse_qsl

import grpc
import httpx
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace import sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from service.api.handlers import is_async, rewrap
from service.telemetry.logs import redact_query

__all__ = [
    "DEFAULT_EXCLUDED_SERVICES",
    "DEFAULT_SERVICE_NAME",
    "MAX_LINKS",
    "QueueSample",
    "Telemetry",
    "TracingTransport",
    "annotate_marketo_call",
    "batch_attributes",
    "current_trace_context",
    "endpoint_of",
    "instrument_transport",
    "note_limiter_wait",
    "redact_url",
    "sampler_from_env",
    "server_interceptor",
    "setup_telemetry",
]

_log = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "marketo-destination"
"""``service.name`` when ``OTEL_SERVICE_NAME`` is unset."""

MAX_LINKS = 128
"""Most span links on one batch span (the SDK's default link limit); the rest are counted."""

DEFAULT_EXCLUDED_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")
"""gRPC services not traced unless ``OTEL_PYTHON_GRPC_EXCLUDED_SERVICES`` says otherwise:
container health probes would bury the real traces."""

_W3C = TraceContextTextMapPropagator()
_SCOPE = "service.telemetry"
_TRUE = frozenset({"true", "1", "yes", "on"})

if TYPE_CHECKING:  # generic in the type stubs only
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor

_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_Continuation: TypeAlias = Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]]


# ---------------------------------------------------------------------------------- providers


@dataclass(frozen=True, slots=True)
class QueueSample:
    """One observation of the outbox for the queue gauges: ``instance`` is the Marketo instance
    key (or Munchkin ID) the drainer serves."""

    instance: str
    depth: int
    """Updates waiting (not yet retired)."""
    oldest_age_seconds: float
    """Age of the oldest waiting update; 0 when the queue is empty."""


class Telemetry:
    """The service's tracer and meter providers and its instruments.

    Built by :func:`setup_telemetry`; when disabled (``OTEL_SDK_DISABLED=true``) every provider
    is a no-op, :func:`server_interceptor` returns ``None`` and :func:`instrument_transport`
    returns the transport unchanged, so tracing costs nothing.
    """

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider,
        meter_provider: metrics.MeterProvider,
        enabled: bool,
        excluded_services: Collection[str] = DEFAULT_EXCLUDED_SERVICES,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.enabled = enabled
        self.excluded_services = frozenset(excluded_services)
        self.tracer = tracer_provider.get_tracer(_SCOPE)
        meter = meter_provider.get_meter(_SCOPE)
        self._records = meter.create_counter(
            "marketo_destination.records",
            unit="{record}",
            description="Profile updates dispatched, by outcome",
        )
        self._batch_size = meter.create_histogram(
            "marketo_destination.batch.size",
            unit="{record}",
            description="Updates per dispatched batch",
        )
        self._limiter_wait = meter.create_histogram(
            "marketo.limiter.wait",
            unit="s",
            description="Time a Marketo call waited for the instance's rate and concurrency limits",
        )
        self._queue_sources: list[Callable[[], Iterable[QueueSample]]] = []
        meter.create_observable_gauge(
            "marketo_destination.outbox.depth",
            callbacks=[self._observe_depth],
            unit="{update}",
            description="Updates waiting in the outbox, per Marketo instance",
        )
        meter.create_observable_gauge(
            "marketo_destination.outbox.oldest_age",
            callbacks=[self._observe_age],
            unit="s",
            description="Age of the oldest update waiting in the outbox, per Marketo instance",
        )

    # -------------------------------------------------------------------- lifecycle

    def force_flush(self, timeout_millis: int = 10_000) -> bool:
        """Exports every finished span and the current metrics now; ``True`` when all went."""
        done = True
        if isinstance(self.tracer_provider, SdkTracerProvider):
            done = self.tracer_provider.force_flush(timeout_millis) and done
        if isinstance(self.meter_provider, SdkMeterProvider):
            done = self.meter_provider.force_flush(timeout_millis) and done
        return done

    def shutdown(self) -> None:
        """Flushes and stops the exporters. Call once, when the server has stopped."""
        if isinstance(self.tracer_provider, SdkTracerProvider):
            self.tracer_provider.shutdown()
        if isinstance(self.meter_provider, SdkMeterProvider):
            self.meter_provider.shutdown()

    # -------------------------------------------------------------------- spans

    @contextlib.contextmanager
    def batch_span(
        self,
        links: Iterable[str | None],
        attributes: Mapping[str, AttributeValue] | None = None,
        *,
        name: str = "dispatch batch",
    ) -> Iterator[Span]:
        """A span for one dispatched batch, the root of its own trace, linked to the Sync span
        of each update it carries.

        ``links`` are the traceparents stored with the updates (``None`` and unreadable ones are
        skipped, duplicates merged, at most :data:`MAX_LINKS` kept); the span says how many in
        ``marketo_destination.batch.links`` and ``marketo_destination.batch.links_dropped``.
        ``attributes`` name the batch: :func:`batch_attributes` builds them. The span is current
        inside the block, so Marketo calls made there are its children.
        """
        if not self.enabled:
            yield trace.INVALID_SPAN
            return
        contexts, dropped = _link_contexts(links)
        attrs: dict[str, AttributeValue] = dict(attributes or {})
        attrs["marketo_destination.batch.links"] = len(contexts)
        attrs["marketo_destination.batch.links_dropped"] = dropped
        # A drainer started inside an RPC inherits that RPC's context; a batch is its own trace.
        with self.tracer.start_as_current_span(
            name,
            context=otel_context.Context(),
            kind=SpanKind.INTERNAL,
            attributes=attrs,
            links=[Link(c) for c in contexts],
        ) as span:
            yield span

    @contextlib.contextmanager
    def mapping_span(
        self, records: int, attributes: Mapping[str, AttributeValue] | None = None
    ) -> Iterator[Span]:
        """A child span of the current (batch) span around mapping ``records`` updates."""
        if not self.enabled:
            yield trace.INVALID_SPAN
            return
        attrs: dict[str, AttributeValue] = dict(attributes or {})
        attrs["marketo_destination.batch.records"] = records
        with self.tracer.start_as_current_span("map batch", attributes=attrs) as span:
            yield span

    # -------------------------------------------------------------------- metrics

    def record_outcomes(
        self, counts: Mapping[str, int], *, destination_id: str, sync_type: str | None = None
    ) -> None:
        """Adds the outcome counts of one batch (``{"updated": 280, "skipped": 3, ...}``)."""
        base: dict[str, AttributeValue] = {"marketo_destination.destination_id": destination_id}
        if sync_type:
            base["marketo_destination.sync_type"] = sync_type
        for outcome, count in counts.items():
            if count:
                self._records.add(count, {**base, "marketo_destination.outcome": outcome})

    def record_batch(self, size: int, *, instance: str) -> None:
        """Records the number of updates in one dispatched batch of the Marketo ``instance``."""
        self._batch_size.record(size, {"marketo.instance": instance})

    def record_limiter_wait(self, seconds: float, *, instance: str) -> None:
        """Records how long one Marketo call waited for its instance's limits (the transport
        does it for calls annotated with :func:`note_limiter_wait`)."""
        self._limiter_wait.record(seconds, {"marketo.instance": instance})

    def observe_queue(self, source: Callable[[], Iterable[QueueSample]]) -> None:
        """Registers ``source`` to feed the outbox gauges at each metric collection.

        ``source`` runs on the exporter's thread: it must return numbers already known (the
        dispatcher's last snapshot), never query the store.
        """
        self._queue_sources.append(source)

    def _samples(self) -> list[QueueSample]:
        samples: list[QueueSample] = []
        for source in self._queue_sources:
            try:
                samples.extend(source())
            except Exception:  # a broken gauge must not stop the export of the rest
                _log.exception("outbox gauge source failed")
        return samples

    def _observe_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(s.depth, {"marketo.instance": s.instance}) for s in self._samples()]

    def _observe_age(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(s.oldest_age_seconds, {"marketo.instance": s.instance})
            for s in self._samples()
        ]


def batch_attributes(
    *,
    destination_id: str,
    munchkin_id: str | None = None,
    sync_type: str | None = None,
    records: int | None = None,
) -> dict[str, AttributeValue]:
    """The attributes naming a batch: destination, Munchkin ID, sync type, size. Nothing else
    about a batch belongs in a span."""
    attrs: dict[str, AttributeValue] = {"marketo_destination.destination_id": destination_id}
    if munchkin_id:
        attrs["marketo.munchkin_id"] = munchkin_id
    if sync_type:
        attrs["marketo_destination.sync_type"] = sync_type
    if records is not None:
        attrs["marketo_destination.batch.records"] = records
    return attrs


def setup_telemetry(
    environ: Mapping[str, str],
    *,
    span_exporter: SpanExporter | None = None,
    metric_reader: MetricReader | None = None,
    resource_attributes: Mapping[str, AttributeValue] | None = None,
    set_global: bool = False,
) -> Telemetry:
    """Builds the providers from the ``OTEL_*`` variables of ``environ``.

    Read here: ``OTEL_SDK_DISABLED``, ``OTEL_SERVICE_NAME`` (default ``marketo-destination``),
    ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` / ``_ARG``, ``OTEL_TRACES_EXPORTER`` and
    ``OTEL_METRICS_EXPORTER`` (``otlp``, the default, or ``none``),
    ``OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]ENDPOINT``, ``OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]
    INSECURE``, ``OTEL_METRIC_EXPORT_INTERVAL``, ``OTEL_PYTHON_GRPC_EXCLUDED_SERVICES``. The OTLP
    exporters read the rest (headers, certificates, compression, timeout) from the process
    environment themselves.

    ``span_exporter`` / ``metric_reader`` replace the OTLP ones (tests). With ``set_global`` the
    providers become the global ones (once per process; the service does it, tests need not).
    """
    excluded = _excluded_services(environ)
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return Telemetry(
            tracer_provider=trace.NoOpTracerProvider(),
            meter_provider=metrics.NoOpMeterProvider(),
            enabled=False,
            excluded_services=excluded,
        )
    resource = Resource.create(
        {
            **_parse_resource_attributes(environ.get("OTEL_RESOURCE_ATTRIBUTES", "")),
            "service.name": environ.get("OTEL_SERVICE_NAME", "").strip() or DEFAULT_SERVICE_NAME,
            **(resource_attributes or {}),
        }
    )
    tracer_provider = SdkTracerProvider(resource=resource, sampler=sampler_from_env(environ))
    if span_exporter is None and _exporter_name(environ, "TRACES") == "otlp":
        span_exporter = _otlp_span_exporter(environ)
    if span_exporter is not None:
        tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))

    readers: list[MetricReader] = []
    if metric_reader is not None:
        readers.append(metric_reader)
    elif _exporter_name(environ, "METRICS") == "otlp":
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        interval = environ.get("OTEL_METRIC_EXPORT_INTERVAL")
        readers.append(
            PeriodicExportingMetricReader(
                _otlp_metric_exporter(environ),
                export_interval_millis=float(interval) if interval else None,
            )
        )
    meter_provider = SdkMeterProvider(resource=resource, metric_readers=readers)
    if set_global:
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
    return Telemetry(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        enabled=True,
        excluded_services=excluded,
    )


def sampler_from_env(environ: Mapping[str, str]) -> sampling.Sampler:
    """The sampler named by ``OTEL_TRACES_SAMPLER`` (default ``parentbased_always_on``)."""
    name = environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    raw_arg = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    try:
        ratio = min(max(float(raw_arg), 0.0), 1.0) if raw_arg else 1.0
    except ValueError:
        _log.warning("OTEL_TRACES_SAMPLER_ARG is not a number; using 1.0")
        ratio = 1.0
    table: dict[str, Callable[[], sampling.Sampler]] = {
        "always_on": lambda: sampling.ALWAYS_ON,
        "always_off": lambda: sampling.ALWAYS_OFF,
        "traceidratio": lambda: sampling.TraceIdRatioBased(ratio),
        "parentbased_always_on": lambda: sampling.ParentBased(sampling.ALWAYS_ON),
        "parentbased_always_off": lambda: sampling.ParentBased(sampling.ALWAYS_OFF),
        "parentbased_traceidratio": lambda: sampling.ParentBased(sampling.TraceIdRatioBased(ratio)),
    }
    if name not in table:
        _log.warning("unknown OTEL_TRACES_SAMPLER %r; using parentbased_always_on", name)
        name = "parentbased_always_on"
    return table[name]()


def _exporter_name(environ: Mapping[str, str], signal: str) -> str:
    value = environ.get(f"OTEL_{signal}_EXPORTER", "otlp").strip().lower() or "otlp"
    if value not in ("otlp", "none"):
        _log.warning("OTEL_%s_EXPORTER=%s is not supported; using otlp", signal, value)
        return "otlp"
    return value


def _otlp_args(environ: Mapping[str, str], signal: str) -> dict[str, Any]:
    args: dict[str, Any] = {}
    endpoint = environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if endpoint:
        args["endpoint"] = endpoint
    insecure = environ.get(f"OTEL_EXPORTER_OTLP_{signal}_INSECURE") or environ.get(
        "OTEL_EXPORTER_OTLP_INSECURE"
    )
    if insecure:
        args["insecure"] = insecure.strip().lower() in _TRUE
    return args


def _otlp_span_exporter(environ: Mapping[str, str]) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(**_otlp_args(environ, "TRACES"))


def _otlp_metric_exporter(environ: Mapping[str, str]) -> MetricExporter:
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter(**_otlp_args(environ, "METRICS"))


def _parse_resource_attributes(raw: str) -> dict[str, AttributeValue]:
    attrs: dict[str, AttributeValue] = {}
    for item in raw.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            attrs[key.strip()] = value.strip()
    return attrs


def _excluded_services(environ: Mapping[str, str]) -> frozenset[str]:
    raw = environ.get("OTEL_PYTHON_GRPC_EXCLUDED_SERVICES")
    if raw is None:
        return frozenset(DEFAULT_EXCLUDED_SERVICES)
    return frozenset(s.strip() for s in raw.split(",") if s.strip())


# ---------------------------------------------------------------------------------- context


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


def _span_context_of(traceparent: str) -> SpanContext | None:
    carrier = {"traceparent": traceparent}
    span_context = trace.get_current_span(_W3C.extract(carrier)).get_span_context()
    return span_context if span_context.is_valid else None


def _link_contexts(traceparents: Iterable[str | None]) -> tuple[list[SpanContext], int]:
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


# ---------------------------------------------------------------------------------- gRPC server

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
    ``rpc.method`` and ``rpc.grpc.status_code``. Request bodies and metadata values are never
    recorded. ``excluded_services`` (default: ``telemetry.excluded_services``) are not traced.
    """
    if not telemetry.enabled:
        return None
    excluded = (
        telemetry.excluded_services if excluded_services is None else frozenset(excluded_services)
    )
    return _TracingInterceptor(telemetry.tracer, excluded)


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

    def __init__(self, tracer: trace.Tracer, excluded: frozenset[str]) -> None:
        self._tracer = tracer
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
        carrier = {"traceparent": traceparent[0]} if traceparent else {}
        parent = _W3C.extract(carrier) if carrier else otel_context.Context()
        attributes: dict[str, AttributeValue] = {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": method,
        }
        traced = _Traced(self._tracer, full, parent, attributes)
        return rewrap(handler, unary=traced.unary, stream=traced.stream) or handler


@dataclass(frozen=True, slots=True)
class _Traced:
    tracer: trace.Tracer
    name: str
    parent: otel_context.Context
    attributes: dict[str, AttributeValue]

    @contextlib.contextmanager
    def _span(self, context: grpc.aio.ServicerContext[Any, Any]) -> Iterator[Span]:
        with self.tracer.start_as_current_span(
            self.name,
            context=self.parent,
            kind=SpanKind.SERVER,
            attributes=self.attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except grpc.aio.AbortError:
                _finish(span, _status_code(context) or grpc.StatusCode.UNKNOWN)
                raise
            except BaseException as error:
                code = _status_code(context)
                if code is None or code is grpc.StatusCode.OK:
                    code = (
                        grpc.StatusCode.CANCELLED
                        if isinstance(error, (GeneratorExit, CancelledError))
                        else grpc.StatusCode.UNKNOWN
                    )
                _finish(span, code, error)
                raise
            else:
                _finish(span, _status_code(context) or grpc.StatusCode.OK)

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


# ---------------------------------------------------------------------------------- Marketo HTTP


@dataclass(frozen=True, slots=True)
class _CallNotes:
    endpoint: str | None
    attempt: int | None
    records: int | None


_call_notes: ContextVar[_CallNotes | None] = ContextVar("marketo_call_notes", default=None)
_limiter_wait: ContextVar[float | None] = ContextVar("marketo_limiter_wait", default=None)


def note_limiter_wait(seconds: float) -> None:
    """Tells :class:`TracingTransport` how long the next HTTP call of this task waited for the
    instance's limits; it becomes the span's ``marketo.limiter.wait`` and a
    ``marketo.limiter.wait`` measurement. Call it right after the limiter admits the call."""
    _limiter_wait.set(seconds)


@contextlib.contextmanager
def annotate_marketo_call(
    *, endpoint: str | None = None, attempt: int | None = None, records: int | None = None
) -> Iterator[None]:
    """Tells :class:`TracingTransport` about the HTTP calls made inside the block: the client's
    endpoint name, the retry ``attempt`` (1 for the first) and how many records are sent.

    Anything not given is inferred from the request where possible (endpoint from the path,
    records from a JSON ``input`` list or the ``filterValues``/``id`` query parameters).
    """
    token = _call_notes.set(_CallNotes(endpoint, attempt, records))
    try:
        yield
    finally:
        _call_notes.reset(token)


_ID_SEGMENT = re.compile(r"^\d+$")
_VERSION_SEGMENT = re.compile(r"^v\d+$")
_SUCCESS_FALSE = re.compile(rb'"success"\s*:\s*false')
# The code is looked for in the first `errors` array only: a lazy scan from every `"errors"`
# to the next `]` would take quadratic time on a body repeating it.
_ERRORS = re.compile(rb'"errors"\s*:\s*\[\s*\{')
_CODE = re.compile(rb'"code"\s*:\s*"?(\w+)')
_SKIPPED = re.compile(rb'"status"\s*:\s*"skipped"')


def endpoint_of(path: str) -> str:
    """The Marketo endpoint of a URL path, without ids, version or ``.json``:
    ``/rest/v1/lists/42/leads.json`` -> ``lists/leads``, ``/rest/asset/v1/folders.json`` ->
    ``asset/folders``, ``/bulk/v1/leads/batch/7.json`` -> ``bulk/leads/batch``,
    ``/identity/oauth/token`` -> ``identity``."""
    segments = [s.removesuffix(".json") for s in path.split("/") if s]
    if not segments:
        return "/"
    if segments[0] == "identity":
        return "identity"
    if segments[0] == "rest":
        segments = segments[1:]
    kept = [s for s in segments if not _ID_SEGMENT.match(s) and not _VERSION_SEGMENT.match(s)]
    return "/".join(kept) or "/"


def redact_url(url: httpx.URL) -> str:
    """``url`` without fragment or user info, its query string's values masked but the
    parameter names kept (:func:`service.telemetry.logs.redact_query`): query strings carry
    profile attribute values (``filterValues``) and, in Identity calls, credentials."""
    port = f":{url.port}" if url.port is not None else ""
    query = url.query.decode("ascii", "replace")
    return f"{url.scheme}://{url.host}{port}{url.path}" + (
        f"?{redact_query(query)}" if query else ""
    )


def _records_of(request: httpx.Request) -> int | None:
    query = parse_qsl(request.url.query.decode("ascii", "replace"), keep_blank_values=True)
    for key, value in query:
        if key == "filterValues":
            return value.count(",") + 1 if value else 0
    ids = sum(1 for key, _ in query if key == "id")
    if ids:
        return ids
    if "json" not in request.headers.get("content-type", ""):
        return None
    try:
        body = request.content
    except httpx.RequestNotRead:
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    items = parsed.get("input") if isinstance(parsed, dict) else None
    return len(items) if isinstance(items, list) else None


class TracingTransport(httpx.AsyncBaseTransport):
    """Wraps the Marketo client's transport: one CLIENT span per HTTP call.

    Attributes: ``marketo.endpoint``, ``http.request.method``, ``http.response.status_code``,
    ``url.full`` (redacted by :func:`redact_url`), ``server.address``, ``marketo.code`` (the
    first error code when the body says ``"success": false``; ``ok`` otherwise),
    ``marketo.records``, ``marketo.records.skipped``, ``marketo.attempt``,
    ``marketo.limiter.wait`` (see :func:`note_limiter_wait`). Headers (the
    ``Authorization`` bearer token), query string values and bodies are never recorded.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, telemetry: Telemetry) -> None:
        self._inner = inner
        self._telemetry = telemetry
        self._tracer = telemetry.tracer

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        notes = _call_notes.get()
        endpoint = (notes.endpoint if notes else None) or endpoint_of(request.url.path)
        attrs: dict[str, AttributeValue] = {
            "marketo.endpoint": endpoint,
            "http.request.method": request.method,
            "url.full": redact_url(request.url),
            "server.address": request.url.host,
        }
        if request.url.port is not None:
            attrs["server.port"] = request.url.port
        records = notes.records if notes and notes.records is not None else _records_of(request)
        if records is not None:
            attrs["marketo.records"] = records
        if notes and notes.attempt is not None:
            attrs["marketo.attempt"] = notes.attempt
        waited = _limiter_wait.get()
        if waited is not None:
            _limiter_wait.set(None)
            attrs["marketo.limiter.wait"] = waited
            self._telemetry.record_limiter_wait(waited, instance=request.url.host)
        with self._tracer.start_as_current_span(
            f"marketo {request.method} {endpoint}",
            kind=SpanKind.CLIENT,
            attributes=attrs,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                response = await self._inner.handle_async_request(request)
            except Exception as error:
                # The exception's type only: messages may quote the URL.
                span.set_attribute("error.type", type(error).__qualname__)
                span.set_status(Status(StatusCode.ERROR, type(error).__qualname__))
                raise
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 400:
                span.set_attribute("error.type", str(response.status_code))
                span.set_status(Status(StatusCode.ERROR, f"HTTP {response.status_code}"))
                return response
            if "json" in response.headers.get("content-type", ""):
                await _annotate_body(span, response, endpoint)
            return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def _error_code(body: bytes) -> str:
    """The code of the first error of a Marketo envelope, or `unknown`."""
    errors = _ERRORS.search(body)
    if errors is None:
        return "unknown"
    end = body.find(b"]", errors.end())
    match = _CODE.search(body, errors.end(), end if end >= 0 else len(body))
    return match.group(1).decode("ascii", "replace") if match else "unknown"


async def _annotate_body(span: Span, response: httpx.Response, endpoint: str) -> None:
    # The client reads the body anyway; reading it here keeps it for the client. Only the
    # envelope's code and the count of skipped records are taken from it, never a value.
    body = await response.aread()
    if _SUCCESS_FALSE.search(body):
        code = _error_code(body)
        span.set_attribute("marketo.code", code)
        span.set_status(Status(StatusCode.ERROR, f"Marketo {code}"))
        return
    if endpoint != "identity":
        span.set_attribute("marketo.code", "ok")
        skipped = len(_SKIPPED.findall(body))
        if skipped:
            span.set_attribute("marketo.records.skipped", skipped)


def instrument_transport(
    inner: httpx.AsyncBaseTransport, telemetry: Telemetry
) -> httpx.AsyncBaseTransport:
    """``inner`` wrapped in a :class:`TracingTransport`, or ``inner`` itself when telemetry is
    disabled. Build the process's one ``httpx.AsyncClient`` over the result."""
    if not telemetry.enabled:
        return inner
    return TracingTransport(inner, telemetry)
