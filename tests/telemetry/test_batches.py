"""Batch spans linked to the Sync spans of their updates, mapping spans, and the metrics."""

from __future__ import annotations

from opentelemetry import trace

from service.telemetry.context import MAX_LINKS, current_trace_context
from service.telemetry.core import QueueSample, Telemetry, batch_attributes
from tests.telemetry.otlp_receiver import OtlpReceiver


def sync_contexts(telemetry: Telemetry, count: int) -> list[str]:
    """Traceparents as the Sync handler stores them: one per update, from inside its span."""
    stored: list[str] = []
    for i in range(count):
        with telemetry.tracer.start_as_current_span(f"Sync {i}"):
            context = current_trace_context()
            assert context is not None
            stored.append(context)
    return stored


def test_no_trace_context_outside_a_span() -> None:
    assert current_trace_context() is None


def test_batch_span_links_every_sync_span_once(
    telemetry: Telemetry, receiver: OtlpReceiver
) -> None:
    stored = sync_contexts(telemetry, 3)
    carried = [stored[0], stored[1], stored[0], None, "garbage", stored[2], stored[1]]
    attrs = batch_attributes(
        destination_id="dest-1", munchkin_id="123-ABC-456", sync_type="create_and_update"
    )
    # Started inside an unrelated span (a drainer started by an RPC): still its own trace.
    with (
        telemetry.tracer.start_as_current_span("Activate") as activate,
        telemetry.batch_span(carried, attrs) as batch,
    ):
        batch_context = current_trace_context()
        with telemetry.mapping_span(len(carried), attrs):
            pass
    assert telemetry.force_flush()

    spans = {s.name: s for s in receiver.spans()}
    batch_span = spans["dispatch batch"]
    assert batch_span.parent_span_id == ""
    assert batch_span.trace_id != f"{activate.get_span_context().trace_id:032x}"
    assert batch_context is not None
    assert batch_context.startswith(f"00-{batch_span.trace_id}-{batch_span.span_id}-")
    assert batch.get_span_context().span_id == int(batch_span.span_id, 16)
    sync_ids = {(s.trace_id, s.span_id) for n, s in spans.items() if n.startswith("Sync ")}
    assert sorted(batch_span.links) == sorted(sync_ids)
    assert batch_span.attributes == {
        "marketo_destination.destination_id": "dest-1",
        "marketo.munchkin_id": "123-ABC-456",
        "marketo_destination.sync_type": "create_and_update",
        "marketo_destination.batch.links": 3,
        "marketo_destination.batch.links_dropped": 0,
    }
    mapping = spans["map batch"]
    assert (mapping.trace_id, mapping.parent_span_id) == (batch_span.trace_id, batch_span.span_id)
    assert mapping.attributes["marketo_destination.batch.records"] == len(carried)


def test_links_are_capped_and_the_rest_counted(
    telemetry: Telemetry, receiver: OtlpReceiver
) -> None:
    stored = sync_contexts(telemetry, MAX_LINKS + 22)
    with telemetry.batch_span(stored + stored, batch_attributes(destination_id="d")):
        pass
    assert telemetry.force_flush()
    (batch,) = [s for s in receiver.spans() if s.name == "dispatch batch"]
    assert len(batch.links) == MAX_LINKS
    assert batch.dropped_links == 0
    assert batch.attributes["marketo_destination.batch.links"] == MAX_LINKS
    assert batch.attributes["marketo_destination.batch.links_dropped"] == 22


def test_marketo_calls_inside_a_batch_are_its_children(telemetry: Telemetry) -> None:
    with telemetry.batch_span([], batch_attributes(destination_id="d")) as batch:
        current = trace.get_current_span()
    assert current is batch


def test_metrics_are_exported_with_otlp(telemetry: Telemetry, receiver: OtlpReceiver) -> None:
    telemetry.record_outcomes(
        {"updated": 280, "created": 15, "skipped": 5, "failed": 0},
        destination_id="dest-1",
        sync_type="create_and_update",
    )
    telemetry.record_batch(300, instance="123-abc-456")
    telemetry.record_limiter_wait(0.25, instance="123-abc-456")
    telemetry.observe_queue(
        lambda: [QueueSample("123-abc-456", depth=1200, oldest_age_seconds=4.5)]
    )

    def broken() -> list[QueueSample]:
        raise RuntimeError("store gone")

    telemetry.observe_queue(broken)
    assert telemetry.force_flush()

    outcomes = {
        p.attributes["marketo_destination.outcome"]: p.value
        for p in receiver.points("marketo_destination.records")
    }
    assert outcomes == {"updated": 280, "created": 15, "skipped": 5}
    (record,) = receiver.points("marketo_destination.records")[:1]
    assert record.attributes["marketo_destination.destination_id"] == "dest-1"
    assert record.resource["service.name"] == "marketo-destination"
    (size,) = receiver.points("marketo_destination.batch.size")
    assert (size.value, size.histogram_sum) == (1, 300)
    (wait,) = receiver.points("marketo.limiter.wait")
    assert wait.histogram_sum == 0.25
    (depth,) = receiver.points("marketo_destination.outbox.depth")
    assert (depth.value, depth.attributes) == (1200, {"marketo.instance": "123-abc-456"})
    (age,) = receiver.points("marketo_destination.outbox.oldest_age")
    assert age.value == 4.5
