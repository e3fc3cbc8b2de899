"""Alert rules, WatchAlerts pub/sub and signed webhooks, over a real store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from typing import Any

import httpx

from service.domain import AlertState, AlertSubscription, AlertType, Outcome, OutcomeKind
from service.settings import WebhookSettings
from service.store.base import DestinationRecord
from service.usecases.alerts import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    AlertMonitor,
    sign_webhook,
    verify_webhook,
)
from tests.dispatch.conftest import WEBHOOK_SECRET, Env, SteppingClock, profile

WEBHOOK_URL = "https://hooks.example.com/marketo-alerts"


async def record_outcomes(env: Env, destination_id: str, kinds: Sequence[OutcomeKind]) -> None:
    """Queue one update per kind and retire it with an outcome of that kind."""
    base = len((await env.store.list_outcomes(destination_id, page_size=1000)).items)
    updates = [profile(base + i, audiences=()) for i in range(len(kinds))]
    await env.append(destination_id, updates)
    entries = await env.due()
    entries = [e for e in entries if e.destination_id == destination_id]
    outcomes = [
        Outcome(
            e.update.update_id,
            e.update.profile_id,
            None,
            kind,
            reason="no dedupe value" if kind is OutcomeKind.EXCLUDED else "",
            marketo_code="1003" if kind is OutcomeKind.FAILED else "",
        )
        for e, kind in zip(entries, kinds, strict=True)
    ]
    await env.store.retire(entries, outcomes, now=env.clock.datetime())


async def open_types(env: Env, destination_id: str) -> set[str]:
    return {alert.type for alert in await env.store.open_alerts(destination_id)}


async def plain_destination(env: Env, alerts: AlertSubscription | None = None) -> DestinationRecord:
    return await env.destination(audiences=(), alerts=alerts)


async def test_skipped_rate_above_one_percent_raises_and_below_resolves(env: Env) -> None:
    destination = await plain_destination(env)
    await record_outcomes(
        env, destination.id, [OutcomeKind.ACTIVATED] * 99 + [OutcomeKind.EXCLUDED]
    )
    await env.alerts.evaluate(destination.id)
    assert await open_types(env, destination.id) == set(), "exactly 1 % is not above 1 %"

    await record_outcomes(env, destination.id, [OutcomeKind.EXCLUDED])
    await env.alerts.evaluate(destination.id)
    (alert,) = await env.store.open_alerts(destination.id)
    assert alert.type == AlertType.SKIPPED_RATE
    assert "2.0%" in alert.message

    await env.alerts.evaluate(destination.id)
    assert len(await env.store.open_alerts(destination.id)) == 1, "raised once while it holds"

    await record_outcomes(env, destination.id, [OutcomeKind.ACTIVATED] * 150)
    await env.alerts.evaluate(destination.id)
    assert await open_types(env, destination.id) == set()


async def test_the_rate_window_is_the_last_hour(env: Env) -> None:
    destination = await plain_destination(env)
    await record_outcomes(env, destination.id, [OutcomeKind.ACTIVATED, OutcomeKind.EXCLUDED])
    await env.alerts.evaluate(destination.id)
    assert await open_types(env, destination.id) == {AlertType.SKIPPED_RATE}
    env.clock.advance(2 * 3600)
    await env.alerts.evaluate(destination.id)
    assert await open_types(env, destination.id) == set()


async def test_failure_rate_uses_the_subscription_threshold(env: Env) -> None:
    destination = await plain_destination(env, AlertSubscription(failure_rate_threshold=0.10))
    await record_outcomes(env, destination.id, [OutcomeKind.ACTIVATED] * 9 + [OutcomeKind.FAILED])
    await env.alerts.evaluate(destination.id)
    assert AlertType.FAILURE_RATE not in await open_types(env, destination.id)
    await record_outcomes(env, destination.id, [OutcomeKind.FAILED])
    await env.alerts.evaluate(destination.id)
    assert await open_types(env, destination.id) == {AlertType.FAILURE_RATE}
    await record_outcomes(env, destination.id, [OutcomeKind.ACTIVATED] * 20)
    await env.alerts.evaluate(destination.id)
    assert await open_types(env, destination.id) == set()


async def test_delivery_delay_follows_the_oldest_pending_update(env: Env) -> None:
    subscription = AlertSubscription(delivery_delay_threshold=timedelta(minutes=10))
    # a member of the activated audience: delivered, not skipped
    destination = await env.destination(alerts=subscription)
    await env.append(destination.id, [profile(1)])
    env.alerts.watch(destination.id)
    env.clock.advance(10 * 60)
    await env.alerts.check_all()
    assert await open_types(env, destination.id) == set(), "exactly the threshold is not over"
    env.clock.advance(1)
    await env.alerts.check_all()
    (alert,) = await env.store.open_alerts(destination.id)
    assert alert.type == AlertType.DELIVERY_DELAYED
    assert "10 min 1 s" in alert.message

    dispatcher = env.dispatcher()
    assert await dispatcher.drain_once(env.instance_key) == 1  # evaluates after the batch
    assert await open_types(env, destination.id) == set()


async def test_the_periodic_check_runs_on_the_clock(env: Env) -> None:
    monitor = AlertMonitor(env.store, clock=env.clock, check_interval=60)
    subscription = AlertSubscription(delivery_delay_threshold=timedelta(minutes=1))
    destination = await plain_destination(env, subscription)
    await env.append(destination.id, [profile(1, audiences=())])
    monitor.watch(destination.id)
    await monitor.start()
    try:
        for _ in range(3):
            env.clock.advance(60)
            for _ in range(20):
                await asyncio.sleep(0.001)
        assert await open_types(env, destination.id) == {AlertType.DELIVERY_DELAYED}
    finally:
        await monitor.stop()


async def test_only_subscribed_types_are_raised(env: Env) -> None:
    destination = await plain_destination(env, AlertSubscription(types=("failure_rate",)))
    await record_outcomes(env, destination.id, [OutcomeKind.EXCLUDED, OutcomeKind.ACTIVATED])
    await env.alerts.evaluate(destination.id)
    await env.alerts.quota_exhausted(destination.id, env.clock.datetime() + timedelta(hours=3))
    await env.alerts.authentication_failing(destination.id, "bad secret")
    assert await open_types(env, destination.id) == set()
    await record_outcomes(env, destination.id, [OutcomeKind.FAILED])
    await env.alerts.evaluate(destination.id)
    assert await open_types(env, destination.id) == {AlertType.FAILURE_RATE}


async def test_watchers_get_raised_and_resolved_events(env: Env) -> None:
    destination = await plain_destination(env)
    other = await env.destination(name="other", audiences=())
    watcher = env.alerts.subscribe(destination.id)
    everything = env.alerts.subscribe(None)
    until = env.clock.datetime() + timedelta(hours=5)
    await env.alerts.quota_exhausted(other.id, until)
    await env.alerts.quota_exhausted(destination.id, until)
    await env.alerts.quota_exhausted(destination.id, until)  # still open: no new event
    await env.alerts.recovered(destination.id)

    raised = await anext(watcher)
    assert (raised.state, raised.type, raised.destination_id) == (
        AlertState.RAISED,
        AlertType.QUOTA_EXHAUSTED,
        destination.id,
    )
    assert raised.alert.paused_until == until
    resolved = await anext(watcher)
    assert resolved.state is AlertState.RESOLVED and resolved.alert.resolved_at is not None
    assert [(await anext(everything)).destination_id for _ in range(3)] == [
        other.id,
        destination.id,
        destination.id,
    ]

    await watcher.aclose()
    assert [event async for event in watcher] == []


async def test_a_slow_watcher_loses_the_oldest_events_and_is_told(env: Env) -> None:
    monitor = AlertMonitor(env.store, clock=env.clock, watcher_queue_size=2)
    destination = await plain_destination(env)
    async with monitor.subscribe(destination.id) as watcher:
        for _ in range(3):  # six events, nobody reading: publishing never waits
            await monitor.authentication_failing(destination.id, "bad secret")
            await monitor.recovered(destination.id)
        first = await anext(watcher)
        second = await anext(watcher)
    assert (first.state, first.dropped) == (AlertState.RAISED, 4)
    assert (second.state, second.dropped) == (AlertState.RESOLVED, 0)


def test_the_signature_covers_timestamp_and_exact_body() -> None:
    body = b'{"a":1}'
    signature = sign_webhook("secret", 1_700_000_000, body)
    assert signature.startswith("sha256=") and len(signature) == 7 + 64
    headers = httpx.Headers({SIGNATURE_HEADER: signature, TIMESTAMP_HEADER: "1700000000"})
    assert verify_webhook("secret", headers, body, now=1_700_000_010)
    assert not verify_webhook("other", headers, body, now=1_700_000_010)
    assert not verify_webhook("secret", headers, b'{"a": 1}', now=1_700_000_010)
    assert not verify_webhook("secret", headers, body, now=1_700_001_000), "stale timestamp"
    moved = httpx.Headers({SIGNATURE_HEADER: signature, TIMESTAMP_HEADER: "1700000001"})
    assert not verify_webhook("secret", moved, body, now=1_700_000_010)


async def test_webhooks_are_signed_and_retried_until_accepted(env: Env) -> None:
    received: list[httpx.Request] = []
    verdicts: list[bool] = []
    answers = iter([500, 503, 200])

    def receiver(request: httpx.Request) -> httpx.Response:
        received.append(request)
        verdicts.append(
            verify_webhook(WEBHOOK_SECRET, request.headers, request.content, now=env.clock.now())
        )
        return httpx.Response(next(answers))

    async with httpx.AsyncClient(transport=httpx.MockTransport(receiver)) as http:
        monitor = AlertMonitor(
            env.store,
            http=http,
            clock=SteppingClock(env.clock),
            webhooks=WebhookSettings(max_attempts=5, base_delay=2.0),
            rng=random.Random(1),
        )
        subscription = AlertSubscription(webhook_url=WEBHOOK_URL, webhook_secret=WEBHOOK_SECRET)
        destination = await plain_destination(env, subscription)
        started = env.clock.now()
        await monitor.authentication_failing(destination.id, "bad secret")
        await monitor.idle()

    assert len(received) == 3
    assert verdicts == [True, True, True]
    assert env.clock.now() - started >= 2.0, "retries wait (on the clock)"
    assert {str(r.url) for r in received} == {WEBHOOK_URL}
    payload = json.loads(received[-1].content)
    assert payload["event"] == "raised"
    assert payload["type"] == "authentication_failing"
    assert payload["destination_id"] == destination.id
    assert "bad secret" in payload["message"]
    assert len({r.headers["X-Marketo-Destination-Event"] for r in received}) == 1


@contextlib.asynccontextmanager
async def webhook_monitor(
    env: Env, receiver: Callable[[httpx.Request], Any], webhooks: WebhookSettings
) -> AsyncIterator[tuple[AlertMonitor, str]]:
    """A monitor sending webhooks to `receiver`, and a destination subscribed to them."""
    async with httpx.AsyncClient(transport=httpx.MockTransport(receiver)) as http:
        monitor = AlertMonitor(
            env.store, http=http, clock=SteppingClock(env.clock), webhooks=webhooks
        )
        subscription = AlertSubscription(webhook_url=WEBHOOK_URL, webhook_secret=WEBHOOK_SECRET)
        destination = await plain_destination(env, subscription)
        yield monitor, destination.id


async def test_webhooks_give_up_after_the_attempts_and_on_client_errors(env: Env) -> None:
    calls: list[int] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(500 if len(calls) <= 3 else 404)

    async with webhook_monitor(env, receiver, WebhookSettings(max_attempts=3)) as (monitor, dst):
        await monitor.authentication_failing(dst, "bad secret")
        await monitor.idle()
        assert len(calls) == 3
        await monitor.recovered(dst)
        await monitor.idle()
        assert len(calls) == 4, "a 404 is not retried"


async def test_a_hanging_webhook_never_blocks_delivery(env: Env) -> None:
    gate = asyncio.Event()

    async def receiver(request: httpx.Request) -> httpx.Response:
        await gate.wait()
        return httpx.Response(200)

    async with httpx.AsyncClient(transport=httpx.MockTransport(receiver)) as http:
        env.alerts = AlertMonitor(env.store, http=http, clock=SteppingClock(env.clock))
        subscription = AlertSubscription(webhook_url=WEBHOOK_URL, webhook_secret=WEBHOOK_SECRET)
        destination = await env.destination(client_id="revoked", audiences=(), alerts=subscription)
        await env.append(destination.id, [profile(1, audiences=())])
        dispatcher = env.dispatcher()
        assert await asyncio.wait_for(dispatcher.drain_once(env.instance_key), 30) == 1
        assert await open_types(env, destination.id) == {AlertType.AUTHENTICATION_FAILING}
        gate.set()
        await env.alerts.idle()


class EndlessBody(httpx.AsyncByteStream):
    """A response body that never ends: `burst` bytes at once, then nothing more, ever."""

    def __init__(self, burst: int) -> None:
        self.burst = burst
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunk = b"x" * 65_536
        while self.sent < self.burst:
            self.sent += len(chunk)
            yield chunk
        await asyncio.Event().wait()
        yield b""  # never reached


async def test_a_webhook_answer_whose_body_never_ends_is_not_read(env: Env) -> None:
    bodies: list[EndlessBody] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        bodies.append(EndlessBody(burst=32 * 1024 * 1024))
        return httpx.Response(500 if len(bodies) == 1 else 200, stream=bodies[-1])

    async with webhook_monitor(env, receiver, WebhookSettings(max_attempts=3)) as (monitor, dst):
        await monitor.authentication_failing(dst, "bad secret")
        # A generous guard: the sender, reading the body, never came back.
        await asyncio.wait_for(monitor.idle(), 60)
    assert len(bodies) == 2, "the 500 is retried, the 200 accepted, whatever their bodies"
    assert all(body.sent <= 65_536 for body in bodies), [body.sent for body in bodies]


async def test_a_webhook_attempt_that_never_answers_ends_and_is_retried(env: Env) -> None:
    calls: list[int] = []

    async def receiver(request: httpx.Request) -> httpx.Response:
        # A receiver that trickles its answer (a byte now and then, each within the read
        # timeout) looks like this to the sender: an answer that never comes.
        calls.append(1)
        if len(calls) == 1:
            await asyncio.Event().wait()
        return httpx.Response(200)

    webhooks = WebhookSettings(max_attempts=3, timeout=0.05)
    async with webhook_monitor(env, receiver, webhooks) as (monitor, dst):
        await monitor.authentication_failing(dst, "bad secret")
        await asyncio.wait_for(monitor.idle(), 60)  # a generous guard against the hang
    assert len(calls) == 2, "the attempt that never answered is cut and tried again"
