"""Shared fixtures: a clock that never sleeps, a scripted Marketo over MockTransport, and the
service's telemetry over in-memory OpenTelemetry exporters."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service.marketo.client import MarketoClient
from service.marketo.limits import InstanceLimits
from service.marketo.observer import MarketoObserver
from service.settings import RetryPolicy
from service.telemetry.marketo import marketo_observer
from service.telemetry.setup import setup_telemetry

BASE = "https://123-ABC-456.mktorest.com"
CLIENT_ID = "test-client-id"
SECRET = "s3cr3t-client-secret-value"
TOKEN = "cdf01657-110d-4155-99a7-f986b2ff13a0:int"
START = 1_780_000_000.0  # 2026-05-28, a fixed instant: no test reads the wall clock


class FakeClock:
    """Time moves only when someone sleeps (or a test advances it); sleeping never waits."""

    def __init__(self, start: float = START, on_advance: Callable[[float], None] | None = None):
        self._now = start
        self.slept: list[float] = []
        self._on_advance = on_advance

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self._now += seconds
            if self._on_advance is not None:
                self._on_advance(seconds)

    async def sleep(self, seconds: float) -> None:
        import asyncio

        self.slept.append(seconds)
        target = self._now + max(0.0, seconds)
        await asyncio.sleep(0)
        # Concurrent sleepers each wake at or after their own target; time never goes back.
        self.advance(target - self._now)


@dataclass
class Seen:
    """One request the scripted Marketo received."""

    method: str
    path: str
    params: dict[str, list[str]]
    headers: httpx.Headers
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode())


Handler = Callable[[Seen], httpx.Response | dict[str, Any] | list[Any]]


@dataclass
class FakeMarketo:
    """Routes `(method, path)` to handlers; Identity answers with TOKEN by default."""

    routes: dict[tuple[str, str], Handler] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    token_ttl: float = 3600
    identity_calls: int = 0

    def route(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method, path)] = handler

    def calls(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        seen = Seen(
            request.method,
            request.url.path,
            parse_qs(request.url.query.decode()),
            request.headers,
            request.read(),
        )
        self.seen.append(seen)
        if request.url.path == "/identity/oauth/token":
            self.identity_calls += 1
            handler = self.routes.get(("POST", request.url.path))
            if handler is None:
                return httpx.Response(
                    200,
                    json={
                        "access_token": TOKEN,
                        "token_type": "bearer",
                        "expires_in": self.token_ttl,
                        "scope": "api@example.com",
                    },
                )
        else:
            handler = self.routes.get((request.method, request.url.path))
            if handler is None:
                return httpx.Response(200, json=error("610", "Requested resource not found"))
        out = handler(seen)
        if isinstance(out, httpx.Response):
            return out
        return httpx.Response(200, json=out)


def ok(result: list[Any], **extra: Any) -> dict[str, Any]:
    return {"requestId": "e42b#14272d07d78", "success": True, "result": result, **extra}


def error(code: str, message: str) -> dict[str, Any]:
    return {
        "requestId": "e42b#14272d07d78",
        "success": False,
        "errors": [{"code": code, "message": message}],
    }


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def marketo() -> FakeMarketo:
    return FakeMarketo()


@pytest.fixture
async def http(marketo: FakeMarketo) -> Any:
    async with httpx.AsyncClient(transport=httpx.MockTransport(marketo)) as client:
        yield client


@pytest.fixture
def make_client(http: httpx.AsyncClient, clock: FakeClock) -> Callable[..., MarketoClient]:
    def make(**kw: Any) -> MarketoClient:
        kw.setdefault("limits", InstanceLimits(clock=clock))
        kw.setdefault("retry", RetryPolicy(rng=__import__("random").Random(7)))
        return MarketoClient(
            http, base_url=BASE, client_id=CLIENT_ID, client_secret=SECRET, clock=clock, **kw
        )

    return make


@dataclass
class Telemetry:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    observer: MarketoObserver
    """What a client given it records goes to `spans` and `metrics`."""

    def metric_points(self, name: str) -> list[tuple[dict[str, Any], float]]:
        data = self.metrics.get_metrics_data()
        out: list[tuple[dict[str, Any], float]] = []
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        for point in metric.data.data_points:
                            out.append((dict(point.attributes or {}), getattr(point, "value", 0)))
        return out


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    """The service's telemetry with in-memory exporters, and the Marketo observer over it."""
    spans = InMemorySpanExporter()
    metrics = InMemoryMetricReader()
    service = setup_telemetry({}, span_exporter=spans, metric_reader=metrics)
    yield Telemetry(spans, metrics, marketo_observer(service))
    service.shutdown()
