"""The service's Prometheus exposition after some Sync traffic, scraped from a running service.

The service and the Marketo sandbox run as processes on loopback ports; the service serves its
metrics (``MARKETO_DEST_METRICS_ADDRESS=127.0.0.1:0``) and takes a few Sync requests, one of
them with an update the mapping rejects. Shared by the scrape test
(tests/telemetry/test_prometheus.py) and the deploy-files test, which checks that the Grafana
dashboard asks for names found here.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from tests.harness import STANDARD_MAPPINGS, connection, spec, update
from tests.processes import ServiceProcess, sandbox_process, stub, wait_for

__all__ = ["PROFILES", "Scrape", "scrape_after_traffic"]

PROFILES = 40
"""Profiles sent; their ids are ``metrics-p<i>``, their e-mails ``metrics<i>@example.com``."""


@dataclass(frozen=True)
class Scrape:
    """One scrape of ``/metrics``: the raw text and its samples."""

    text: str
    destination_id: str
    samples: tuple[Sample, ...]

    @property
    def names(self) -> frozenset[str]:
        """Every sample name (``_bucket``, ``_count``, ``_sum``, ``_total`` included)."""
        return frozenset(s.name for s in self.samples)

    def find(self, name: str, **labels: str) -> list[Sample]:
        """The samples called ``name`` whose labels include ``labels``."""
        return [
            s
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]


def parse(text: str, destination_id: str) -> Scrape:
    samples = tuple(s for family in text_string_to_metric_families(text) for s in family.samples)
    return Scrape(text, destination_id, samples)


def scrape_after_traffic(data_dir: Path) -> Scrape:
    """Starts a sandbox and the service, sends traffic, waits until it is delivered and the
    destination's backlog gauge shows it, and returns that scrape."""
    env = {
        "MARKETO_DEST_METRICS_ADDRESS": "127.0.0.1:0",
        "OTEL_SDK_DISABLED": "false",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
    }
    with sandbox_process() as endpoint:
        service = ServiceProcess(data_dir, endpoint, env)
        found = re.search(r"Prometheus metrics at (\S+)", service.log.read_text())
        assert found, service.log.read_text()
        url = found.group(1)
        channel, client = stub(service.port)
        with channel:
            # No endpoint: the service's default, the sandbox process.
            configure = pb.ConfigureRequest(spec=spec(connection=connection(endpoint="")))
            destination_id = client.Configure(configure).destination.id
            client.Activate(
                pb.ActivateRequest(
                    destination_id=destination_id,
                    audiences=[pb.Audience(id="a1", name="Metrics")],
                    mappings=STANDARD_MAPPINGS,
                )
            )
            updates = [
                update(
                    f"metrics-p{i}",
                    f"metrics{i}@example.com",
                    audiences={"a1": pb.MEMBERSHIP_STATUS_REALIZED},
                )
                for i in range(PROFILES)
            ]
            requests = [
                pb.SyncRequest(destination_id=destination_id, updates=updates[i : i + 10])
                for i in range(0, PROFILES, 10)
            ]
            accepted = sum(r.accepted for r in client.Sync(iter(requests)))
            assert accepted == PROFILES
        wait_for(service.port, destination_id, lambda f: f.pending == 0 and f.received == PROFILES)
        deadline = time.monotonic() + 60
        while True:
            scrape = parse(httpx.get(url, timeout=10).text, destination_id)
            depth = scrape.find(
                "marketo_destination_outbox_depth",
                marketo_destination_destination_id=destination_id,
            )
            if depth and depth[0].value == 0 and scrape.find("marketo_destination_records_total"):
                break
            assert time.monotonic() < deadline, (
                f"the gauges never showed the destination:\n{scrape.text}"
            )
            time.sleep(0.2)
        service.stop()
    return scrape
