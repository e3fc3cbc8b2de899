"""Providers from the ``OTEL_*`` variables: resource, sampler, OTLP exporters, or nothing at all.

Nothing here runs at import time: :func:`setup_telemetry` builds the providers and, only when
asked (``set_global=True``, what ``serve`` does), installs them as the global ones, so that
anything using the OpenTelemetry API directly (a plugin, say) is exported too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace import sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.util.types import AttributeValue

from service.telemetry.core import DEFAULT_EXCLUDED_SERVICES, Telemetry

if TYPE_CHECKING:
    from service.telemetry.prometheus import MetricsEndpoint

__all__ = ["DEFAULT_SERVICE_NAME", "sampler_from_env", "setup_telemetry"]

_log = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "marketo-destination"
"""``service.name`` when ``OTEL_SERVICE_NAME`` is unset."""

_TRUE = frozenset({"true", "1", "yes", "on"})


def setup_telemetry(
    environ: Mapping[str, str],
    *,
    span_exporter: SpanExporter | None = None,
    metric_reader: MetricReader | None = None,
    resource_attributes: Mapping[str, AttributeValue] | None = None,
    set_global: bool = False,
    metrics_address: str = "",
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
    With ``metrics_address`` (``HOST:PORT``), the metrics are also served for Prometheus there
    (:class:`~service.telemetry.prometheus.MetricsEndpoint`), whatever
    ``OTEL_METRICS_EXPORTER`` says; ``OSError`` when the port is taken.
    """
    excluded = _excluded_services(environ)
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        if metrics_address:
            _log.warning("OTEL_SDK_DISABLED is set: no metrics are served at %s", metrics_address)
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
    endpoint: MetricsEndpoint | None = None
    if metrics_address:
        from service.telemetry.prometheus import MetricsEndpoint

        endpoint = MetricsEndpoint(metrics_address)
        readers.append(endpoint.reader)
    meter_provider = SdkMeterProvider(resource=resource, metric_readers=readers)
    if set_global:
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
    telemetry = Telemetry(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        enabled=True,
        excluded_services=excluded,
    )
    if endpoint is not None:
        try:
            endpoint.start()
        except OSError:
            telemetry.shutdown()
            raise
        telemetry.metrics_endpoint = endpoint
    return telemetry


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
