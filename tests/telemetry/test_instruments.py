"""The metric instruments the service exports: names, kinds, units, descriptions, scopes and
the attributes each is recorded with stay as they are (dashboards and alerts read them)."""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    InMemoryMetricReader,
    Sum,
)

from service.telemetry.core import DURATION_BUCKETS, QueueSample, QuotaSample, Telemetry

_CALLS = ("marketo.endpoint", "http.request.method", "marketo.code")
_OUTBOX = ("marketo.instance", "marketo_destination.destination_id")

EXPORTED = {
    (
        "service.telemetry",
        "marketo_destination.records",
        "sum",
        "{record}",
        "Profile updates dispatched, by outcome",
        (
            "marketo_destination.destination_id",
            "marketo_destination.outcome",
            "marketo_destination.sync_type",
        ),
    ),
    (
        "service.telemetry",
        "marketo_destination.batch.size",
        "histogram",
        "{record}",
        "Updates per dispatched batch",
        ("marketo.instance",),
    ),
    (
        "service.telemetry",
        "marketo.limiter.wait",
        "histogram",
        "s",
        "Time a Marketo call waited for the instance's rate and concurrency limits",
        ("marketo.instance",),
    ),
    (
        "service.telemetry",
        "rpc.server.call.duration",
        "histogram",
        "s",
        "Duration of the RPCs the service answered",
        ("rpc.grpc.status_code", "rpc.method", "rpc.service", "rpc.system"),
    ),
    (
        "service.marketo",
        "http.client.request.duration",
        "histogram",
        "s",
        "Duration of the HTTP requests sent to Marketo",
        ("error.type", "http.request.method", "http.response.status_code", "server.address"),
    ),
    (
        "service.marketo",
        "marketo.calls",
        "sum",
        "{call}",
        "Marketo REST calls by endpoint and code",
        tuple(sorted(_CALLS)),
    ),
    (
        "service.marketo",
        "marketo.retries",
        "sum",
        "{call}",
        "Marketo calls retried, by endpoint and action",
        ("marketo.action", "marketo.endpoint"),
    ),
    (
        "service.marketo",
        "marketo.call.duration",
        "histogram",
        "s",
        "Duration of Marketo REST calls",
        tuple(sorted(_CALLS)),
    ),
    (
        "service.telemetry",
        "marketo_destination.outbox.depth",
        "gauge",
        "{update}",
        "Updates waiting in the outbox, per Marketo instance",
        tuple(sorted(_OUTBOX)),
    ),
    (
        "service.telemetry",
        "marketo_destination.outbox.oldest_age",
        "gauge",
        "s",
        "Age of the oldest update waiting in the outbox, per Marketo instance",
        tuple(sorted(_OUTBOX)),
    ),
    (
        "service.marketo",
        "marketo.daily_quota.used",
        "gauge",
        "{call}",
        "Calls counted against the Marketo instance's daily quota today, by caller (this "
        "service or the instance's other API users)",
        ("marketo.caller", "marketo.instance"),
    ),
    (
        "service.marketo",
        "marketo.daily_quota.remaining",
        "gauge",
        "{call}",
        "Calls this service may still make today on the Marketo instance",
        ("marketo.instance",),
    ),
}

_KINDS: dict[type[Any], str] = {Sum: "sum", Histogram: "histogram", Gauge: "gauge"}


def test_every_instrument_is_exported_as_before() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    telemetry = Telemetry(
        tracer_provider=trace.NoOpTracerProvider(), meter_provider=provider, enabled=True
    )
    telemetry.observe_queue(lambda: [QueueSample("i", 3, 1.5, destination_id="d")])
    telemetry.observe_quota(lambda: [QuotaSample("i", ours=5, others=2, remaining=90)])
    telemetry.record_outcomes({"updated": 2}, destination_id="d", sync_type="profile_only")
    telemetry.record_batch(2, instance="i")
    telemetry.record_limiter_wait(0.1, instance="i")
    telemetry.record_rpc(0.2, service="s", method="m", status_code=0)
    telemetry.record_http_client(
        0.3, method="POST", server_address="h", status_code=500, error_type="500"
    )
    telemetry.record_marketo_call(endpoint="e", method="POST", code="ok", seconds=0.3)
    telemetry.record_marketo_retry(endpoint="e", action="retry")

    data = reader.get_metrics_data()
    assert data is not None
    exported = set()
    bounds: dict[str, tuple[float, ...]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                attributes = {key for point in metric.data.data_points for key in point.attributes}
                exported.add(
                    (
                        scope.scope.name,
                        metric.name,
                        _KINDS[type(metric.data)],
                        metric.unit,
                        metric.description,
                        tuple(sorted(attributes)),
                    )
                )
                if isinstance(metric.data, Histogram):
                    bounds[metric.name] = tuple(metric.data.data_points[0].explicit_bounds)
    provider.shutdown()

    assert exported == EXPORTED
    assert {name for name, value in bounds.items() if value == DURATION_BUCKETS} == {
        "rpc.server.call.duration",
        "http.client.request.duration",
        "marketo.call.duration",
    }
    assert bounds["marketo.limiter.wait"] == bounds["marketo_destination.batch.size"] != ()
