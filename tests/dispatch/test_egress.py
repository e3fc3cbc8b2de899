"""The egress policy at delivery: a stored endpoint no longer allowed is not called, and a
webhook the policy refuses at send time is given up at once, never retried."""

from __future__ import annotations

import httpx
import pytest

from service.delivery.egress import OriginList, WebhookTransport
from service.domain import AlertSubscription
from service.settings import LimitSettings, WebhookSettings
from service.usecases.alerts import AlertMonitor
from service.usecases.connections import MarketoConnections
from tests.dispatch.conftest import BASE_URL, Env, SteppingClock, profile
from tests.netfakes import FakeResolver, Listener, RecordingBackend


async def test_a_stored_endpoint_no_longer_allowed_is_not_called(env: Env) -> None:
    destination = await env.destination(audiences=())
    await env.append(destination.id, [profile(0, audiences=())])
    before = (await env.calls())["by_endpoint"]
    # The service restarted with a policy that no longer lists the destination's endpoint.
    env.connections = MarketoConnections(
        env.http,
        default_endpoint=BASE_URL,
        allowed_endpoints=OriginList.parse("https://*.example.test"),
        limits=LimitSettings(share=1.0),
        clock=SteppingClock(env.clock),
    )
    dispatcher = env.dispatcher()
    assert await dispatcher.drain_once(env.instance_key) == 1
    assert (await env.calls())["by_endpoint"] == before, "nothing was sent to the endpoint"
    (entry,) = await env.outbox()
    assert "MARKETO_DEST_ALLOWED_ENDPOINTS" in entry.last_error
    assert entry.attempts == 1, "the update waits; it is not failed"
    assert await env.pending(destination.id) == 1


@pytest.mark.parametrize("answer", ["127.0.0.1", "10.1.2.3", "169.254.169.254", "::1", "fc00::1"])
async def test_a_webhook_refused_at_send_time_is_not_retried(env: Env, answer: str) -> None:
    resolver = FakeResolver({"hooks.example.test": [answer]})
    backend = RecordingBackend()
    transport = WebhookTransport(OriginList(), resolver=resolver, backend=backend)
    async with Listener() as listener, httpx.AsyncClient(transport=transport) as http:
        env.alerts = AlertMonitor(
            env.store,
            http=http,
            clock=SteppingClock(env.clock),
            webhooks=WebhookSettings(max_attempts=4),
        )
        url = f"https://hooks.example.test:{listener.port}/alerts"
        destination = await env.destination(audiences=(), alerts=AlertSubscription(webhook_url=url))
        await env.alerts.authentication_failing(destination.id, "test")
        await env.alerts.idle()
        assert resolver.lookups == [("hooks.example.test", listener.port)], "one try only"
        assert backend.connects == []
        assert listener.connections == 0


async def test_identity_text_stays_out_of_the_authentication_alert(env: Env) -> None:
    hostile = "root:x:0:0 INTERNAL-ONLY-TEXT"

    def identity(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": "unauthorized", "error_description": hostile})

    async with httpx.AsyncClient(transport=httpx.MockTransport(identity)) as http:
        env.connections = MarketoConnections(
            http, default_endpoint=BASE_URL, clock=SteppingClock(env.clock)
        )
        destination = await env.destination(audiences=())
        await env.append(destination.id, [profile(0, audiences=())])
        assert await env.dispatcher().drain_once(env.instance_key) == 1
    (alert,) = await env.store.open_alerts(destination.id)
    assert alert.type == "authentication_failing"
    assert "client id or secret" in alert.message
    assert "INTERNAL-ONLY-TEXT" not in alert.message
