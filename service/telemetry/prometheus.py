"""The Prometheus endpoint: the service's metrics in the text exposition format at ``/metrics``.

OpenTelemetry's Prometheus exporter is a second metric reader on the service's MeterProvider,
beside the OTLP one: both read the same instruments, so a name means the same thing in both.
Each endpoint has a registry of its own (not ``prometheus_client``'s global one), so that two
providers in one process (tests) never mix their metrics. The HTTP server runs on a daemon
thread of its own; a scrape collects the metrics then and there (observable gauges included).

The endpoint has no authentication: it shows counts, durations and gauges labelled by
destination, Marketo instance, endpoint and code, never a profile's id or value.
"""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIServer

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from prometheus_client import CollectorRegistry, start_http_server

__all__ = ["MetricsEndpoint"]

_log = logging.getLogger(__name__)


class MetricsEndpoint:
    """A metric reader for a MeterProvider and the HTTP endpoint Prometheus scrapes it at.

    Build it, pass :attr:`reader` to the MeterProvider, then :meth:`start` it.
    """

    def __init__(self, address: str) -> None:
        """``address`` is ``HOST:PORT`` (``[::1]:9464`` for IPv6; port 0 picks a free one)."""
        host, _, port = address.rpartition(":")
        self._host = host.removeprefix("[").removesuffix("]")
        self._port = int(port)
        self.registry = CollectorRegistry(auto_describe=True)
        self.reader = PrometheusMetricReader(registry=self.registry, disable_target_info=False)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port listened on (the one picked when the address asked for port 0)."""
        return self._server.server_port if self._server is not None else self._port

    @property
    def url(self) -> str:
        """Where the metrics are scraped from."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> None:
        """Listens; a port already in use raises ``OSError``."""
        self._server, self._thread = start_http_server(
            self._port, addr=self._host, registry=self.registry
        )
        _log.info("Prometheus metrics at %s", self.url)

    def stop(self) -> None:
        """Stops listening (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
