"""The Prometheus endpoint: what a running service exposes after Sync traffic, the labels it
keeps bounded, and an exposition ``promtool check metrics`` accepts."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from datetime import UTC, datetime

import httpx
import pytest

from service.store.base import Backlog, PendingStats
from service.telemetry.core import QueueSample, QuotaSample
from service.telemetry.setup import setup_telemetry
from service.usecases.gauges import GaugeFigures
from tests.scrape import PROFILES, Scrape, parse

SERVICE = "marketo_destination.v1.MarketoDestinationService"
QUIET = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}


def test_rpc_durations_follow_the_rpc_conventions(scraped_metrics: Scrape) -> None:
    (count,) = scraped_metrics.find(
        "rpc_server_call_duration_seconds_count",
        rpc_system="grpc",
        rpc_service=SERVICE,
        rpc_method="Sync",
        rpc_grpc_status_code="0",
    )
    assert count.value == 1
    configure = scraped_metrics.find(
        "rpc_server_call_duration_seconds_bucket", rpc_method="Configure", le="+Inf"
    )
    assert [s.value for s in configure] == [1]
    # GetDataflow was polled at least once until delivery ended.
    assert scraped_metrics.find("rpc_server_call_duration_seconds_count", rpc_method="GetDataflow")


def test_marketo_requests_follow_the_http_client_conventions(scraped_metrics: Scrape) -> None:
    posts = scraped_metrics.find(
        "http_client_request_duration_seconds_count",
        http_request_method="POST",
        server_address="127.0.0.1",
        http_response_status_code="200",
    )
    assert posts and sum(s.value for s in posts) >= 2  # a token, a lead upsert at least
    assert not scraped_metrics.find("http_client_request_duration_seconds_count", error_type="500")


def test_marketo_calls_count_by_endpoint_and_code(scraped_metrics: Scrape) -> None:
    calls = scraped_metrics.find("marketo_calls_total", marketo_code="ok")
    endpoints = {s.labels["marketo_endpoint"] for s in calls}
    assert {"identity", "leads/sync", "lists/leads/add"} <= endpoints, endpoints
    assert {s.labels["http_request_method"] for s in calls} <= {"GET", "POST", "DELETE"}


def test_outcomes_count_by_kind(scraped_metrics: Scrape) -> None:
    records = scraped_metrics.find(
        "marketo_destination_records_total",
        marketo_destination_destination_id=scraped_metrics.destination_id,
    )
    by_outcome = {s.labels["marketo_destination_outcome"]: s.value for s in records}
    assert sum(by_outcome.values()) >= PROFILES, by_outcome
    assert by_outcome.get("failed", 0) == 0


def test_backlog_gauges_per_destination(scraped_metrics: Scrape) -> None:
    labels = {"marketo_destination_destination_id": scraped_metrics.destination_id}
    (depth,) = scraped_metrics.find("marketo_destination_outbox_depth", **labels)
    (age,) = scraped_metrics.find("marketo_destination_outbox_oldest_age_seconds", **labels)
    assert depth.value == 0 and age.value == 0
    assert depth.labels["marketo_instance"] == age.labels["marketo_instance"] != ""


def test_daily_quota_used_and_left(scraped_metrics: Scrape) -> None:
    (ours,) = scraped_metrics.find("marketo_daily_quota_used", marketo_caller="self")
    (others,) = scraped_metrics.find("marketo_daily_quota_used", marketo_caller="others")
    (left,) = scraped_metrics.find("marketo_daily_quota_remaining")
    assert ours.value >= 2
    # The service's default budget: 50,000 a day less a reserve of 5,000.
    assert left.value == 45_000 - ours.value - others.value
    assert ours.labels["marketo_instance"] == left.labels["marketo_instance"]


def test_no_label_names_a_profile(scraped_metrics: Scrape) -> None:
    values = {v for s in scraped_metrics.samples for v in s.labels.values()}
    assert not [v for v in values if "metrics-p" in v or "@example.com" in v]
    label_names = {k for s in scraped_metrics.samples for k in s.labels}
    assert not label_names & {"profile_id", "dedupe_value", "email", "url_full"}


def test_promtool_accepts_the_exposition(scraped_metrics: Scrape) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package)")
    checked = subprocess.run(
        [promtool, "check", "metrics"],
        input=scraped_metrics.text,
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_endpoint_serves_what_the_providers_record() -> None:
    telemetry = setup_telemetry(QUIET, metrics_address="127.0.0.1:0")
    try:
        assert telemetry.metrics_endpoint is not None
        telemetry.record_rpc(0.02, service="s.v1.S", method="M", status_code=5)
        telemetry.observe_queue(lambda: [QueueSample("i", 7, 3.5, destination_id="d1")])
        telemetry.observe_quota(lambda: [QuotaSample("i", ours=10, others=4, remaining=86)])
        scrape = parse(httpx.get(telemetry.metrics_endpoint.url).text, "d1")
    finally:
        telemetry.shutdown()
    (count,) = scrape.find("rpc_server_call_duration_seconds_count", rpc_grpc_status_code="5")
    assert count.value == 1
    (le_25ms,) = scrape.find("rpc_server_call_duration_seconds_bucket", le="0.025")
    assert le_25ms.value == 1  # the seconds buckets of the conventions, not milliseconds'
    (depth,) = scrape.find("marketo_destination_outbox_depth", marketo_instance="i")
    assert (depth.value, depth.labels["marketo_destination_destination_id"]) == (7, "d1")
    used = {s.labels["marketo_caller"]: s.value for s in scrape.find("marketo_daily_quota_used")}
    assert used == {"self": 10, "others": 4}
    assert [s.value for s in scrape.find("marketo_daily_quota_remaining")] == [86]


def test_the_endpoint_stops_with_the_telemetry() -> None:
    telemetry = setup_telemetry(QUIET, metrics_address="127.0.0.1:0")
    assert telemetry.metrics_endpoint is not None
    port = telemetry.metrics_endpoint.port
    telemetry.shutdown()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_a_taken_port_is_an_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            setup_telemetry(QUIET, metrics_address=f"127.0.0.1:{port}")


def test_no_endpoint_when_the_sdk_is_disabled() -> None:
    telemetry = setup_telemetry({"OTEL_SDK_DISABLED": "true"}, metrics_address="127.0.0.1:0")
    assert telemetry.metrics_endpoint is None


class _Store:
    def __init__(self, backlogs: list[Backlog]) -> None:
        self.reads = 0
        self._backlogs = backlogs

    async def backlogs(self) -> list[Backlog]:
        self.reads += 1
        return self._backlogs


class _Connections:
    def quota_samples(self) -> list[QuotaSample]:
        return [QuotaSample("123-abc-456.mktorest.com", ours=5, others=2, remaining=44_993)]


class _Clock:
    def now(self) -> float:
        return 1_800_000_000.0

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def test_gauge_figures_are_read_at_start_and_kept_for_the_exporters() -> None:
    enqueued = datetime.fromtimestamp(1_800_000_000.0 - 42.5, UTC)
    store = _Store(
        [
            Backlog("d1", "i1", PendingStats(7, enqueued)),
            Backlog("d2", "i1", PendingStats(0, None)),
        ]
    )
    telemetry = setup_telemetry(QUIET, metrics_address="127.0.0.1:0")
    gauges = GaugeFigures(store, _Connections(), telemetry, interval=3600, clock=_Clock())  # type: ignore[arg-type]
    try:
        await gauges.start()
        assert telemetry.metrics_endpoint is not None
        text = (await asyncio.to_thread(httpx.get, telemetry.metrics_endpoint.url)).text
    finally:
        await gauges.stop()
        telemetry.shutdown()
    scrape = parse(text, "d1")
    ages = {
        s.labels["marketo_destination_destination_id"]: s.value
        for s in scrape.find("marketo_destination_outbox_oldest_age_seconds", marketo_instance="i1")
    }
    assert ages == {"d1": 42.5, "d2": 0}
    (depth,) = scrape.find(
        "marketo_destination_outbox_depth", marketo_destination_destination_id="d1"
    )
    assert depth.value == 7
    assert [s.value for s in scrape.find("marketo_daily_quota_remaining")] == [44_993]
    assert store.reads == 1  # a scrape reads the last figures, never the store
