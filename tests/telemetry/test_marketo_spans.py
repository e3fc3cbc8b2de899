"""Marketo call spans from the client's observer, against the sandbox in process."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from sandbox import ManualClock, SandboxSettings, asgi_transport, create_app
from service.marketo.client import MarketoClient
from service.marketo.limits import InstanceLimits
from service.marketo.observer import Call, endpoint_of
from service.marketo.types import SyncAction
from service.settings import RetryPolicy
from service.telemetry.core import Telemetry, batch_attributes
from service.telemetry.marketo import (
    MarketoTelemetry,
    marketo_observer,
    redact_url,
)
from tests.harness import service_logging
from tests.telemetry.otlp_receiver import OtlpReceiver, ReceivedSpan, attribute_values

BASE = "https://123-ABC-456.mktorest.com"
SECRET = "sandbox-client-secret"
START = 1_780_000_000.0


class SharedClock:
    """The client's clock over the sandbox's: sleeping advances both, never waits."""

    def __init__(self, manual: ManualClock) -> None:
        self.manual = manual

    def now(self) -> float:
        return self.manual.now()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)
        if seconds > 0:
            self.manual.advance(seconds)


@dataclass
class Marketo:
    http: httpx.AsyncClient
    control: httpx.AsyncClient
    client: MarketoClient
    observer: MarketoTelemetry

    async def fault(self, **fault: Any) -> None:
        response = await self.control.post("/_sandbox/faults", json=[fault])
        assert response.status_code == 200, response.text


@pytest.fixture
async def marketo(telemetry: Telemetry) -> AsyncIterator[Marketo]:
    manual = ManualClock(START)
    # The legacy access_token parameter (refused by default since 2026) stays on here: one test
    # sends it on purpose to check the token never reaches a span.
    app = create_app(SandboxSettings(accept_access_token_param=True), clock=manual)
    observer = marketo_observer(telemetry)
    assert isinstance(observer, MarketoTelemetry)
    clock = SharedClock(manual)
    async with (
        httpx.AsyncClient(transport=asgi_transport(app), base_url=BASE) as http,
        httpx.AsyncClient(transport=asgi_transport(app), base_url=BASE) as control,
    ):
        client = MarketoClient(
            http,
            base_url=f"{BASE}/rest",
            client_id="sandbox-client-id",
            client_secret=SECRET,
            clock=clock,
            limits=InstanceLimits(clock=clock),
            retry=RetryPolicy(rng=random.Random(3)),
            observer=observer,
        )
        yield Marketo(http, control, client, observer)


def calls(receiver: OtlpReceiver) -> list[ReceivedSpan]:
    return [s for s in receiver.spans() if s.kind == "SPAN_KIND_CLIENT"]


async def test_marketo_calls_in_a_batch_carry_the_documented_attributes(
    marketo: Marketo,
    telemetry: Telemetry,
    receiver: OtlpReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    people = [{"email": f"person{i}@example.com", "firstName": f"Zelda{i}"} for i in range(320)]
    attrs = batch_attributes(destination_id="dest-1", munchkin_id="123-ABC-456")
    with telemetry.batch_span([], attrs):
        created = await marketo.client.sync_leads(people, action=SyncAction.CREATE_OR_UPDATE)
        found = await marketo.client.find_leads("email", [p["email"] for p in people[:40]])
    token = (await marketo.client.token()).value
    assert len(created) == 320 and len(found) == 40
    assert telemetry.force_flush()

    (batch,) = [s for s in receiver.spans() if s.name == "dispatch batch"]
    spans = calls(receiver)
    by_endpoint: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        by_endpoint.setdefault(span.attributes["marketo.endpoint"], []).append(span)
        assert span.trace_id == batch.trace_id  # under the batch (directly or via the client)
        assert span.attributes["server.address"] == "123-abc-456.mktorest.com"
        assert "@" not in span.attributes["url.full"]  # no e-mail from a look-up's query
    assert set(by_endpoint) == {"identity", "leads", "leads/sync"}

    (identity,) = by_endpoint["identity"]
    assert identity.name == "marketo POST identity"
    assert identity.attributes["url.full"] == f"{BASE.lower()}/identity/oauth/token"
    assert identity.attributes["http.response.status_code"] == 200
    assert "marketo.code" not in identity.attributes

    writes = by_endpoint["leads/sync"]
    assert {s.attributes["http.request.method"] for s in writes} == {"POST"}
    assert sorted(s.attributes["marketo.records"] for s in writes) == [20, 300]
    assert {s.attributes["marketo.code"] for s in writes} == {"ok"}
    (lookup,) = by_endpoint["leads"]
    assert lookup.attributes["http.request.method"] == "GET"
    assert lookup.attributes["marketo.records"] == 40
    path, _, query = lookup.attributes["url.full"].partition("?")
    assert path == f"{BASE.lower()}/rest/v1/leads.json"
    # The parameter names stay; the looked-up values do not.
    assert "filterType=email" in query.split("&")
    assert "filterValues=***" in query.split("&")

    # No secret, token or profile value anywhere in what was exported or logged.
    text = " ".join(attribute_values(receiver.spans()))
    assert caplog.records  # the client logs each call at DEBUG
    logged = caplog.text
    for forbidden in (SECRET, token, "person1@example.com", "Zelda"):
        assert forbidden not in text
        assert forbidden not in logged
        for payload in receiver.payloads():
            assert forbidden.encode() not in payload


async def test_marketo_errors_and_skipped_records_are_traced(
    marketo: Marketo, telemetry: Telemetry, receiver: OtlpReceiver
) -> None:
    people = [{"email": f"dup{i}@example.com"} for i in range(3)]
    await marketo.client.sync_leads(people, action=SyncAction.CREATE_OR_UPDATE)

    again = await marketo.client.sync_leads(people, action=SyncAction.CREATE_ONLY)
    assert {r.status for r in again} == {"skipped"}
    await marketo.fault(path_prefix="/rest/v1/leads.json", code="604", count=1)
    assert await marketo.client.find_leads("email", ["nobody@example.com"]) == []
    assert telemetry.force_flush()

    spans = [
        s for s in calls(receiver) if s.attributes["marketo.endpoint"] in ("leads", "leads/sync")
    ]
    codes = [s.attributes.get("marketo.code") for s in spans]
    assert codes == ["ok", "ok", "604", "ok"]
    assert spans[1].attributes["marketo.records.skipped"] == 3
    assert "marketo.records.skipped" not in spans[0].attributes
    failed = spans[2]
    assert failed.status == "STATUS_CODE_ERROR"
    assert failed.status_message == "Marketo 604"
    assert spans[3].status == "STATUS_CODE_UNSET"


async def test_the_client_can_name_the_call_and_its_attempt(
    marketo: Marketo, telemetry: Telemetry, receiver: OtlpReceiver
) -> None:
    token = (await marketo.client.token()).value
    request = marketo.http.build_request(
        "POST",
        "/rest/v1/leads.json",
        params={"access_token": token},
        json={"input": [{"email": "a@example.com"}]},
    )
    with marketo.observer.exchange(
        Call(request, attempt=2, endpoint="leads/sync", records=7, limiter_wait=1.5)
    ) as exchange:
        response = await marketo.http.send(request)
        exchange.answered(response)
    assert response.status_code == 200
    assert response.json()["success"] is True  # the observer left the body readable
    assert telemetry.force_flush()
    span = calls(receiver)[-1]
    assert span.name == "marketo POST leads/sync"
    assert span.attributes["marketo.endpoint"] == "leads/sync"
    assert span.attributes["marketo.attempt"] == 2
    assert span.attributes["marketo.records"] == 7
    assert span.attributes["marketo.limiter.wait"] == 1.5
    (wait,) = receiver.points("marketo.limiter.wait")
    assert (wait.histogram_sum, wait.attributes) == (
        1.5,
        {"marketo.instance": "123-abc-456.mktorest.com"},
    )
    # A call told of no wait records none.
    request = marketo.http.build_request(
        "GET", "/rest/v1/lead/1.json", params={"access_token": token}
    )
    with marketo.observer.exchange(Call(request, attempt=1, endpoint="lead")) as exchange:
        exchange.answered(await marketo.http.send(request))
    assert telemetry.force_flush()
    assert "marketo.limiter.wait" not in calls(receiver)[-1].attributes
    assert token not in " ".join(attribute_values(receiver.spans()))


async def test_transport_failures_are_traced_by_type(
    telemetry: Telemetry, receiver: OtlpReceiver
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot reach {request.url}", request=request)

    observer = marketo_observer(telemetry)
    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
        request = http.build_request("POST", f"{BASE}/identity/oauth/token?client_secret={SECRET}")
        with pytest.raises(httpx.ConnectError), observer.exchange(Call(request, attempt=1)):
            await http.send(request)
    assert telemetry.force_flush()
    (span,) = calls(receiver)
    assert span.status == "STATUS_CODE_ERROR"
    assert span.attributes["error.type"] == "ConnectError"
    assert SECRET not in " ".join(attribute_values([span]))
    assert span.events == []


@pytest.mark.parametrize(
    ("path", "endpoint"),
    [
        ("/identity/oauth/token", "identity"),
        ("/rest/v1/leads.json", "leads"),
        ("/rest/v1/lead/42.json", "lead"),
        ("/rest/v1/lists/42/leads.json", "lists/leads"),
        ("/rest/v1/lists/42/leads/ismember.json", "lists/leads/ismember"),
        ("/rest/v1/leads/describe2.json", "leads/describe2"),
        ("/rest/asset/v1/staticList/42/delete.json", "asset/staticList/delete"),
        ("/rest/asset/v1/folder/byName.json", "asset/folder/byName"),
        ("/bulk/v1/leads/batch/7/failures.json", "bulk/leads/batch/failures"),
    ],
)
def test_endpoint_is_the_path_without_ids(path: str, endpoint: str) -> None:
    assert endpoint_of(path) == endpoint


def test_redacted_urls_keep_parameter_names_but_no_value_or_credentials() -> None:
    url = httpx.URL(
        "https://user:pw@123-abc-456.mktorest.com:8443/identity/oauth/token"
        "?grant_type=client_credentials&client_id=x&client_secret=y#frag"
    )
    assert redact_url(url) == (
        "https://123-abc-456.mktorest.com:8443/identity/oauth/token"
        "?grant_type=***&client_id=***&client_secret=***"
    )
    lookup = httpx.URL(
        "https://123-abc-456.mktorest.com/rest/v1/leads.json"
        "?filterType=email&filterValues=a%40example.com,b%40example.com&fields=email,id"
    )
    assert redact_url(lookup) == (
        "https://123-abc-456.mktorest.com/rest/v1/leads.json"
        "?filterType=email&filterValues=***&fields=email,id"
    )


async def test_a_lookup_logs_and_traces_no_personal_value(
    marketo: Marketo,
    telemetry: Telemetry,
    receiver: OtlpReceiver,
) -> None:
    # A local part found nowhere else, so that it shows whether or not the "@" is encoded.
    emails = [f"qzxperson{i}@example.com" for i in range(5)]
    attrs = batch_attributes(destination_id="dest-1", munchkin_id="123-ABC-456")
    with service_logging() as logs, telemetry.batch_span([], attrs):
        await marketo.client.sync_leads(
            [{"email": e} for e in emails], action=SyncAction.CREATE_OR_UPDATE
        )
        found = await marketo.client.find_leads("email", emails, ["email"])
        await marketo.client.find_leads("email", ["qzxnobody@example.com"])
    assert len(found) == 5
    assert telemetry.force_flush()

    # The capture works: the client's own DEBUG lines about these calls are there.
    assert any(r.name.startswith("service.marketo") for r in logs.records)
    lookups = [s for s in calls(receiver) if s.attributes["marketo.endpoint"] == "leads"]
    assert len(lookups) == 2
    for text in logs.texts():
        assert "qzx" not in text, text
    for value in attribute_values(receiver.spans()):
        assert "qzx" not in value
    for payload in receiver.payloads():
        assert b"qzx" not in payload
