"""The client secret and access tokens never reach a log line, a span, an error or a repr;
every call is counted per endpoint and code."""

from __future__ import annotations

import logging
import random

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sandbox import ManualClock, SandboxSettings, asgi_transport, create_app
from service.marketo.client import MarketoClient
from service.marketo.errors import AuthenticationError, MarketoError
from service.marketo.limits import InstanceLimits
from service.marketo.types import SyncAction
from service.settings import RetryPolicy
from service.telemetry.marketo import marketo_observer
from service.telemetry.setup import setup_telemetry
from tests.marketo.conftest import BASE as MOCK_BASE
from tests.marketo.conftest import (
    CLIENT_ID,
    START,
    TOKEN,
    FakeClock,
    FakeMarketo,
    Telemetry,
    error,
)
from tests.marketo.test_sandbox import BASE, SharedClock

SECRET = "very-secret-client-secret-4711"
TOKEN_BODY = {"access_token": TOKEN, "token_type": "bearer", "expires_in": 3600}


async def test_no_secret_or_token_in_logs_spans_errors_or_reprs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    manual = ManualClock(START)
    app = create_app(SandboxSettings(client_secret=SECRET, token_ttl=90), clock=manual)
    clock = SharedClock(manual)
    seen_tokens: set[str] = set()
    errors: list[BaseException] = []

    exporter = InMemorySpanExporter()
    tracing = setup_telemetry({"OTEL_METRICS_EXPORTER": "none"}, span_exporter=exporter)
    observer = marketo_observer(tracing)
    async with httpx.AsyncClient(transport=asgi_transport(app), base_url=BASE) as http:
        client = MarketoClient(
            http,
            base_url=BASE,
            client_id="sandbox-client-id",
            client_secret=SECRET,
            clock=clock,
            limits=InstanceLimits(clock=clock),
            retry=RetryPolicy(max_attempts=2, rng=random.Random(1)),
            observer=observer,
        )
        await http.post(
            "/_sandbox/faults",
            json=[
                {"path_prefix": "/rest/v1/leads.json", "code": "601", "count": 1},
                {"path_prefix": "/rest/v1/lead/", "http_status": 503},
                {"path_prefix": "/rest/v1/leads/partitions.json", "code": "drop"},
            ],
        )
        seen_tokens.add((await client.token()).value)
        await client.sync_leads([{"email": "a@example.com"}], action=SyncAction.UPDATE_ONLY)
        seen_tokens.add((await client.token()).value)
        clock.advance(90)  # the token expired: a second one
        await client.find_leads("email", ["a@example.com"] * 400)
        seen_tokens.add((await client.token()).value)
        await http.post(
            "/_sandbox/faults",
            json=[{"path_prefix": "/rest/v1/leads.json", "http_status": 502, "count": 1}],
        )
        for failing in (
            client.get_lead(1),
            client.partitions(),
            client.sync_leads([{"email": "b@x.com"}], action=SyncAction.CREATE_ONLY),
        ):
            try:
                await failing
            except MarketoError as exc:
                errors.append(exc)
        bad = MarketoClient(
            http,
            base_url=BASE,
            client_id="sandbox-client-id",
            client_secret=SECRET + "-wrong",
            clock=clock,
            limits=InstanceLimits(clock=clock),
            observer=observer,
        )
        try:
            await bad.partitions()
        except MarketoError as exc:
            errors.append(exc)
        reprs = [
            repr(client),
            repr(bad),
            repr(await client.token()),
            str(await client.token()),
            repr(client._tokens),
            repr(client.limits),
        ]

    assert len(seen_tokens) >= 2, "the run should have used more than one token"
    assert len(errors) == 4
    tracing.force_flush()
    spans = exporter.get_finished_spans()
    assert spans, "spans were recorded"
    haystack: list[str] = [r.getMessage() for r in caplog.records]
    haystack += [str(r.args) for r in caplog.records]
    haystack += [f"{s.name} {dict(s.attributes or {})} {s.events}" for s in spans]
    haystack += [f"{e!s} {e!r} {vars(e)}" for e in errors]
    haystack += reprs
    text = "\n".join(haystack)
    for secret in (SECRET, *seen_tokens):
        assert secret not in text
    assert any("marketo" in line for line in haystack)  # the search did see our output


async def test_calls_are_counted_per_endpoint_and_code(
    telemetry: Telemetry,
) -> None:
    def points() -> dict[tuple[str, str], float]:
        out: dict[tuple[str, str], float] = {}
        for attrs, value in telemetry.metric_points("marketo.calls"):
            key = (str(attrs.get("marketo.endpoint")), str(attrs.get("marketo.code")))
            out[key] = out.get(key, 0) + value
        return out

    manual = ManualClock(START)
    app = create_app(SandboxSettings(), clock=manual)
    clock = SharedClock(manual)
    before = points()
    async with httpx.AsyncClient(transport=asgi_transport(app), base_url=BASE) as http:
        await http.post(
            "/_sandbox/faults",
            json=[{"path_prefix": "/rest/v1/leads/partitions.json", "code": "606", "count": 2}],
        )
        client = MarketoClient(
            http,
            base_url=BASE,
            client_id="sandbox-client-id",
            client_secret="sandbox-client-secret",
            clock=clock,
            limits=InstanceLimits(clock=clock),
            retry=RetryPolicy(rng=random.Random(2)),
            observer=telemetry.observer,
        )
        await client.partitions()
    after = points()

    def delta(key: tuple[str, str]) -> float:
        return after.get(key, 0) - before.get(key, 0)

    assert delta(("leads/partitions", "606")) == 2
    assert delta(("leads/partitions", "ok")) == 1
    assert delta(("identity", "ok")) == 1


@pytest.mark.parametrize("secret", ["a", "cre", "sec", "e1"])
async def test_a_short_secret_is_masked_only_where_it_stands_whole(
    marketo: FakeMarketo, http: httpx.AsyncClient, clock: FakeClock, secret: str
) -> None:
    """Masking a short secret wherever its letters occur garbled the rest of Marketo's message
    (and told a reader which letters the secret has)."""
    description = f"Bad client credentials: client_secret={secret} is not valid"
    marketo.route(
        "POST",
        "/identity/oauth/token",
        lambda s: httpx.Response(
            401, json={"error": "unauthorized", "error_description": description}
        ),
    )
    client = MarketoClient(
        http,
        base_url=MOCK_BASE,
        client_id=CLIENT_ID,
        client_secret=secret,
        clock=clock,
        limits=InstanceLimits(clock=clock),
    )
    with pytest.raises(AuthenticationError) as caught:
        await client.partitions()
    assert "Bad client credentials: client_secret=*** is not valid" in str(caught.value)

    marketo.route("POST", "/identity/oauth/token", lambda s: httpx.Response(200, json=TOKEN_BODY))
    marketo.route(
        "GET",
        "/rest/v1/leads/partitions.json",
        lambda s: error("610", f'Requested resource not found: {{"secret":"{secret}"}}'),
    )
    with pytest.raises(MarketoError) as caught_rest:
        await client.partitions()
    assert 'Requested resource not found: {"secret":"***"}' in str(caught_rest.value)
