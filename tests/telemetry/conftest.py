"""Fixtures: an in-process OTLP receiver and telemetry exporting to it with the real exporter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.telemetry.core import Telemetry
from service.telemetry.setup import setup_telemetry
from tests.telemetry.otlp_receiver import OtlpReceiver


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


def otlp_environ(receiver: OtlpReceiver, **extra: str) -> dict[str, str]:
    """The ``OTEL_*`` variables pointing the OTLP exporters at ``receiver``."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        # Metrics go out when a test flushes, never on a timer.
        "OTEL_METRIC_EXPORT_INTERVAL": "3600000",
        **extra,
    }


@pytest.fixture
def telemetry(receiver: OtlpReceiver) -> Iterator[Telemetry]:
    configured = setup_telemetry(otlp_environ(receiver))
    yield configured
    configured.shutdown()
