"""Providers from OTEL_* variables: service name, sampler, exporters off, SDK disabled."""

from __future__ import annotations

from opentelemetry import trace

from service.marketo.observer import NO_OBSERVER
from service.telemetry.context import current_trace_context
from service.telemetry.core import QueueSample, batch_attributes
from service.telemetry.marketo import marketo_observer
from service.telemetry.rpc import server_interceptor
from service.telemetry.setup import sampler_from_env, setup_telemetry
from tests.telemetry.conftest import otlp_environ
from tests.telemetry.otlp_receiver import OtlpReceiver


def test_disabled_sdk_exports_nothing_and_adds_nothing(receiver: OtlpReceiver) -> None:
    telemetry = setup_telemetry(otlp_environ(receiver, OTEL_SDK_DISABLED="true"))
    assert not telemetry.enabled
    assert server_interceptor(telemetry) is None
    assert marketo_observer(telemetry) is NO_OBSERVER

    with telemetry.batch_span(["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]) as span:
        assert not span.is_recording()
        assert current_trace_context() is None
        with telemetry.mapping_span(3):
            pass
    with telemetry.tracer.start_as_current_span("anything"):
        assert current_trace_context() is None
    telemetry.record_outcomes({"updated": 1}, destination_id="d")
    telemetry.record_batch(1, instance="i")
    telemetry.record_limiter_wait(0.1, instance="i")
    telemetry.record_marketo_call(endpoint="leads", method="GET", code="ok", seconds=0.1)
    telemetry.record_marketo_retry(endpoint="leads", action="transient")
    telemetry.observe_queue(lambda: [QueueSample("i", 1, 1.0)])
    assert telemetry.force_flush()
    telemetry.shutdown()
    assert receiver.requests == 0


def test_enabled_sdk_exports_to_the_same_receiver(receiver: OtlpReceiver) -> None:
    # The counterpart of the test above: the same calls do reach the receiver when enabled.
    telemetry = setup_telemetry(otlp_environ(receiver, OTEL_SERVICE_NAME="dest-under-test"))
    with telemetry.batch_span([], batch_attributes(destination_id="d")):
        pass
    telemetry.record_batch(1, instance="i")
    telemetry.shutdown()
    (span,) = receiver.spans()
    assert span.resource["service.name"] == "dest-under-test"
    assert receiver.points("marketo_destination.batch.size")


def test_always_off_sampler_records_no_span(receiver: OtlpReceiver) -> None:
    telemetry = setup_telemetry(otlp_environ(receiver, OTEL_TRACES_SAMPLER="always_off"))
    with telemetry.batch_span([], batch_attributes(destination_id="d")) as span:
        assert not span.is_recording()
    telemetry.shutdown()
    assert receiver.spans() == []


def test_exporters_can_be_turned_off_one_by_one(receiver: OtlpReceiver) -> None:
    telemetry = setup_telemetry(
        otlp_environ(receiver, OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none")
    )
    with telemetry.batch_span([], batch_attributes(destination_id="d")):
        pass
    telemetry.record_batch(1, instance="i")
    telemetry.shutdown()
    assert receiver.requests == 0


def test_sampler_names() -> None:
    assert "ParentBased" in sampler_from_env({}).get_description()
    assert (
        "AlwaysOffSampler"
        in sampler_from_env({"OTEL_TRACES_SAMPLER": "always_off"}).get_description()
    )
    ratio = sampler_from_env(
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}
    )
    assert "0.25" in ratio.get_description()
    assert "ParentBased" in sampler_from_env({"OTEL_TRACES_SAMPLER": "bogus"}).get_description()


def test_setup_sets_no_global_provider_unless_asked(receiver: OtlpReceiver) -> None:
    before = trace.get_tracer_provider()
    telemetry = setup_telemetry(otlp_environ(receiver))
    assert trace.get_tracer_provider() is before
    telemetry.shutdown()
