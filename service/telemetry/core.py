"""The service's telemetry: its tracer and meter providers, its instruments and the batch spans.

One :class:`Telemetry` is built by :func:`service.telemetry.setup.setup_telemetry` and injected
wherever something is recorded: the RPC interceptor (:mod:`service.telemetry.rpc`), the Marketo
client (through :mod:`service.telemetry.marketo`) and the dispatcher. Business code only calls
the small helpers here (:meth:`Telemetry.batch_span`, :meth:`Telemetry.record_outcomes` ...),
which never see profile attribute values, secrets or tokens.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.trace import Link, Span, SpanKind
from opentelemetry.util.types import AttributeValue

from service.telemetry.context import link_contexts

if TYPE_CHECKING:
    from service.telemetry.prometheus import MetricsEndpoint

__all__ = [
    "DEFAULT_EXCLUDED_SERVICES",
    "DURATION_BUCKETS",
    "QueueSample",
    "QuotaSample",
    "Telemetry",
    "batch_attributes",
]

_log = logging.getLogger(__name__)

DEFAULT_EXCLUDED_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")
"""gRPC services not traced unless ``OTEL_PYTHON_GRPC_EXCLUDED_SERVICES`` says otherwise:
container health probes would bury the real traces."""

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
"""Bucket boundaries (s) of the duration histograms, as OpenTelemetry's semantic conventions
advise for ``rpc.server.call.duration`` and ``http.client.request.duration``."""

_Sample = TypeVar("_Sample")

_SCOPE = "service.telemetry"
_MARKETO_SCOPE = "service.marketo"


@dataclass(frozen=True, slots=True)
class QueueSample:
    """One observation of the outbox for the queue gauges: ``instance`` is the Marketo instance
    key (or Munchkin ID) the drainer serves."""

    instance: str
    depth: int
    """Updates waiting (not yet retired)."""
    oldest_age_seconds: float
    """Age of the oldest waiting update; 0 when the queue is empty."""
    destination_id: str | None = None
    """The destination the figures are about; ``None`` when they cover the whole instance."""

    def attributes(self) -> dict[str, AttributeValue]:
        """The gauge's labels: the instance, and the destination when the sample names one."""
        attrs: dict[str, AttributeValue] = {"marketo.instance": self.instance}
        if self.destination_id is not None:
            attrs["marketo_destination.destination_id"] = self.destination_id
        return attrs


@dataclass(frozen=True, slots=True)
class QuotaSample:
    """Today's use of one Marketo instance's daily API quota, as this process counts it."""

    instance: str
    ours: int
    """Calls this process made today (Marketo's own count when the Usage API said more)."""
    others: int
    """Calls of the instance's other API users, as the Usage API last said."""
    remaining: int
    """Calls this process may still make today (quota - reserve - ours - others, at least 0)."""


class Telemetry:
    """The service's tracer and meter providers and its instruments.

    Built by :func:`~service.telemetry.setup.setup_telemetry`; when disabled
    (``OTEL_SDK_DISABLED=true``) every provider is a no-op,
    :func:`~service.telemetry.rpc.server_interceptor` returns ``None`` and
    :func:`~service.telemetry.marketo.marketo_observer` the observer that records nothing, so
    tracing costs nothing.
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
        self._rpc_duration = meter.create_histogram(
            "rpc.server.call.duration",
            unit="s",
            description="Duration of the RPCs the service answered",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        marketo = meter_provider.get_meter(_MARKETO_SCOPE)
        self._http_duration = marketo.create_histogram(
            "http.client.request.duration",
            unit="s",
            description="Duration of the HTTP requests sent to Marketo",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._marketo_calls = marketo.create_counter(
            "marketo.calls", unit="{call}", description="Marketo REST calls by endpoint and code"
        )
        self._marketo_retries = marketo.create_counter(
            "marketo.retries",
            unit="{call}",
            description="Marketo calls retried, by endpoint and action",
        )
        self._marketo_duration = marketo.create_histogram(
            "marketo.call.duration",
            unit="s",
            description="Duration of Marketo REST calls",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
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
        self._quota_sources: list[Callable[[], Iterable[QuotaSample]]] = []
        marketo.create_observable_gauge(
            "marketo.daily_quota.used",
            callbacks=[self._observe_quota_used],
            unit="{call}",
            description="Calls counted against the Marketo instance's daily quota today, "
            "by caller (this service or the instance's other API users)",
        )
        marketo.create_observable_gauge(
            "marketo.daily_quota.remaining",
            callbacks=[self._observe_quota_remaining],
            unit="{call}",
            description="Calls this service may still make today on the Marketo instance",
        )
        self.metrics_endpoint: MetricsEndpoint | None = None
        """The Prometheus endpoint serving these metrics, when one was asked for."""

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
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.stop()
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
        skipped, duplicates merged, at most :data:`~service.telemetry.context.MAX_LINKS` kept);
        the span says how many in ``marketo_destination.batch.links`` and
        ``marketo_destination.batch.links_dropped``.
        ``attributes`` name the batch: :func:`batch_attributes` builds them. The span is current
        inside the block, so Marketo calls made there are its children.
        """
        if not self.enabled:
            yield trace.INVALID_SPAN
            return
        contexts, dropped = link_contexts(links)
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

    def record_rpc(self, seconds: float, *, service: str, method: str, status_code: int) -> None:
        """Records the duration of one answered RPC, by service, method and gRPC status code."""
        self._rpc_duration.record(
            seconds,
            {
                "rpc.system": "grpc",
                "rpc.service": service,
                "rpc.method": method,
                "rpc.grpc.status_code": status_code,
            },
        )

    def record_http_client(
        self,
        seconds: float,
        *,
        method: str,
        server_address: str,
        status_code: int | None,
        error_type: str | None,
    ) -> None:
        """Records the duration of one HTTP request sent to Marketo: its method, host, status
        code (``None`` when no answer came) and error type (``None`` when it succeeded)."""
        attributes: dict[str, AttributeValue] = {
            "http.request.method": method,
            "server.address": server_address,
        }
        if status_code is not None:
            attributes["http.response.status_code"] = status_code
        if error_type is not None:
            attributes["error.type"] = error_type
        self._http_duration.record(seconds, attributes)

    def record_limiter_wait(self, seconds: float, *, instance: str) -> None:
        """Records how long one Marketo call waited for its instance's limits."""
        self._limiter_wait.record(seconds, {"marketo.instance": instance})

    def record_marketo_call(self, *, endpoint: str, method: str, code: str, seconds: float) -> None:
        """Counts one attempt of a Marketo call and records its duration, by endpoint, method
        and Marketo ``code`` (``ok``, a Marketo or HTTP code, a transport exception's name)."""
        attributes: dict[str, AttributeValue] = {
            "marketo.endpoint": endpoint,
            "http.request.method": method,
            "marketo.code": code,
        }
        self._marketo_calls.add(1, attributes)
        self._marketo_duration.record(seconds, attributes)

    def record_marketo_retry(self, *, endpoint: str, action: str) -> None:
        """Counts one retry of a Marketo call, by endpoint and the ``action`` that led to it."""
        self._marketo_retries.add(1, {"marketo.endpoint": endpoint, "marketo.action": action})

    def observe_queue(self, source: Callable[[], Iterable[QueueSample]]) -> None:
        """Registers ``source`` to feed the outbox gauges at each metric collection.

        ``source`` runs on the exporter's thread: it must return numbers already known (the
        dispatcher's last snapshot), never query the store.
        """
        self._queue_sources.append(source)

    def observe_quota(self, source: Callable[[], Iterable[QuotaSample]]) -> None:
        """Registers ``source`` to feed the daily quota gauges at each metric collection; like
        :meth:`observe_queue`'s, it runs on the exporter's thread and reads numbers in memory."""
        self._quota_sources.append(source)

    def _observe_quota_used(self, options: CallbackOptions) -> Iterable[Observation]:
        observations: list[Observation] = []
        for s in _gather(self._quota_sources, "quota"):
            for caller, used in (("self", s.ours), ("others", s.others)):
                labels = {"marketo.instance": s.instance, "marketo.caller": caller}
                observations.append(Observation(used, labels))
        return observations

    def _observe_quota_remaining(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(s.remaining, {"marketo.instance": s.instance})
            for s in _gather(self._quota_sources, "quota")
        ]

    def _observe_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(s.depth, s.attributes()) for s in _gather(self._queue_sources, "outbox")
        ]

    def _observe_age(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(s.oldest_age_seconds, s.attributes())
            for s in _gather(self._queue_sources, "outbox")
        ]


def _gather(sources: Iterable[Callable[[], Iterable[_Sample]]], gauge: str) -> list[_Sample]:
    """What every source of a gauge says now; a failing source is logged and skipped (a broken
    gauge must not stop the export of the rest)."""
    samples: list[_Sample] = []
    for source in sources:
        try:
            samples.extend(source())
        except Exception:
            _log.exception("%s gauge source failed", gauge)
    return samples


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
