"""Dataflow alerts: evaluation, in-process pub/sub for WatchAlerts, signed webhooks.

Alert types (`AlertType`), each raised at most once while its condition holds and resolved when it
clears (the store keeps one open alert per destination and type):

- `skipped_rate`: excluded / (activated + excluded) over the last hour above 1 % (AEP's rule);
- `failure_rate`: failed / (activated + excluded + failed) over the last hour above the
  subscription's `failure_rate_threshold`;
- `delivery_delayed`: the oldest pending update older than `delivery_delay_threshold`;
- `quota_exhausted`: Marketo's daily quota is spent, delivery paused until the reset;
- `authentication_failing`: Marketo refuses the destination's credentials;
- `schema_mismatch`: Marketo's lead schema lacks a field the mapping writes, delivery paused;
- `drift`: a reconciliation found a list differing from the desired state by more than 1 %.

"The last hour" is a sliding hour estimated from the hourly dataflow counters: the current hour
plus the previous hour weighted by the part of it still inside the window.

Only the types a destination subscribes to are raised (an empty list means all). Each raised or
resolved alert is published to the destination's watchers (`subscribe`) and, when the
subscription has a `webhook_url`, POSTed there as signed JSON in the background (see
`sign_webhook` and docs/delivery.md for the scheme).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from service.delivery.egress import EgressRefused
from service.domain import AlertState, AlertSubscription, AlertType
from service.marketo.clock import Clock, SystemClock
from service.settings import WebhookSettings
from service.store.base import AlertRecord, DestinationNotFound
from service.store.sql import Store

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "AlertEvent",
    "AlertMonitor",
    "AlertWatcher",
    "sign_webhook",
    "verify_webhook",
]

log = logging.getLogger(__name__)

SKIPPED_RATE_THRESHOLD = 0.01
"""AEP's rule: alert when more than 1 % of the profiles of the last hour were skipped."""

SIGNATURE_HEADER = "X-Marketo-Destination-Signature"
TIMESTAMP_HEADER = "X-Marketo-Destination-Timestamp"
EVENT_HEADER = "X-Marketo-Destination-Event"

HOUR = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """An alert raised or resolved, as watchers and webhooks receive it."""

    state: AlertState
    alert: AlertRecord
    dropped: int = 0
    """Events this watcher lost just before this one because it read too slowly."""

    @property
    def destination_id(self) -> str:
        return self.alert.destination_id

    @property
    def type(self) -> str:
        return self.alert.type

    def to_json(self) -> dict[str, Any]:
        """The webhook payload."""
        alert = self.alert
        return {
            "event": self.state.value,
            "alert_id": alert.id,
            "destination_id": alert.destination_id,
            "type": alert.type,
            "message": alert.message,
            "raised_at": _iso(alert.raised_at),
            "resolved_at": _iso(alert.resolved_at),
            "paused_until": _iso(alert.paused_until),
        }


def sign_webhook(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header value: `sha256=` + hex HMAC-SHA256 of `"<timestamp>." + body`."""
    message = str(timestamp).encode("ascii") + b"." + body
    digest = hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: float = 300.0,
) -> bool:
    """What a receiver checks: a valid signature over the exact body and a fresh timestamp.

    `headers` must be case-insensitive (e.g. `httpx.Headers` or Starlette's) or use the exact
    header names.
    """
    try:
        timestamp = int(headers[TIMESTAMP_HEADER])
        signature = headers[SIGNATURE_HEADER]
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign_webhook(secret, timestamp, body), signature)


class AlertWatcher:
    """One WatchAlerts stream: an async iterator of events with a bounded buffer.

    Registered when created, so nothing published afterwards is missed. A watcher that reads
    too slowly loses the oldest buffered events; the next event it reads says how many
    (`AlertEvent.dropped`). Close it (`aclose`, or `async with`) when done.
    """

    def __init__(self, monitor: AlertMonitor, destination_id: str | None, maxsize: int) -> None:
        self._monitor = monitor
        self.destination_id = destination_id
        self._queue: deque[AlertEvent] = deque()
        self._maxsize = max(1, maxsize)
        self._ready = asyncio.Event()
        self._dropped = 0
        self._closed = False

    def _push(self, event: AlertEvent) -> None:
        if self._closed:
            return
        if len(self._queue) >= self._maxsize:
            self._queue.popleft()
            self._dropped += 1
        self._queue.append(event)
        self._ready.set()

    def __aiter__(self) -> AlertWatcher:
        return self

    async def __anext__(self) -> AlertEvent:
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        event = self._queue.popleft()
        if self._dropped:
            event = replace(event, dropped=self._dropped)
            self._dropped = 0
        return event

    async def aclose(self) -> None:
        """Stop watching; a pending `__anext__` ends the iteration."""
        self._closed = True
        self._queue.clear()
        self._ready.set()
        self._monitor._unsubscribe(self)

    async def __aenter__(self) -> AlertWatcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AlertMonitor:
    """Raises and resolves dataflow alerts and delivers them to watchers and webhooks."""

    def __init__(
        self,
        store: Store,
        *,
        http: httpx.AsyncClient | None = None,
        clock: Clock | None = None,
        check_interval: float = 60.0,
        watcher_queue_size: int = 100,
        webhooks: WebhookSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """`http` sends webhooks (none sent without it; the application gives it a client of
        its own under the egress policy, `service.app.webhook_client`, whose refusals are not
        retried); `check_interval` (s) is how often the
        periodic check re-evaluates the watched destinations (delivery delay needs a timer)."""
        self._store = store
        self._http = http
        self._clock: Clock = clock or SystemClock()
        self._check_interval = check_interval
        self._watcher_queue_size = watcher_queue_size
        self._webhooks = webhooks or WebhookSettings()
        self._rng = rng or random.Random()
        self._watchers: dict[str | None, set[AlertWatcher]] = {}
        self._watched: set[str] = set()
        self._outgoing: dict[str, deque[AlertEvent]] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}
        self._checker: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the periodic check (idempotent)."""
        if self._checker is None:
            self._checker = asyncio.create_task(self._check_periodically(), name="alert checks")

    async def stop(self) -> None:
        """Stop the periodic check and webhook deliveries still waiting; end every watcher."""
        tasks = [t for t in (self._checker, *self._senders.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._checker = None
        self._senders.clear()
        for watchers in list(self._watchers.values()):
            for watcher in list(watchers):
                await watcher.aclose()

    async def idle(self) -> None:
        """Wait until every queued webhook was delivered or given up (tests, shutdown)."""
        while self._senders:
            await asyncio.gather(*list(self._senders.values()), return_exceptions=True)

    # -- conditions ----------------------------------------------------------------------------

    def watch(self, destination_id: str) -> None:
        """Include the destination in the periodic check (until it is deleted)."""
        self._watched.add(destination_id)

    async def check_all(self) -> None:
        """Evaluate every watched destination once (what the periodic check does)."""
        for destination_id in sorted(self._watched):
            try:
                await self.evaluate(destination_id)
            except DestinationNotFound:
                self._watched.discard(destination_id)
            except Exception:
                log.exception("evaluating the alerts of %s failed", destination_id)

    async def evaluate(self, destination_id: str) -> None:
        """Re-check the rate and delay alerts of a destination; raise or resolve them.

        Raises DestinationNotFound when the destination is gone.
        """
        self._watched.add(destination_id)
        subscription = await self._subscription(destination_id)
        now = self._now()
        flow = await self._store.dataflow(destination_id, hours=2, now=now)
        current = flow.runs[0]
        previous = flow.runs[1] if len(flow.runs) > 1 else None
        weight = max(0.0, 1.0 - (now - current.start) / HOUR) if previous else 0.0

        def last_hour(name: str) -> float:
            value = float(getattr(current, name))
            if previous is not None:
                value += weight * getattr(previous, name)
            return value

        activated, excluded, failed = (
            last_hour("activated"),
            last_hour("excluded"),
            last_hour("failed"),
        )

        skipped_total = activated + excluded
        skipped = excluded / skipped_total if skipped_total else 0.0
        await self._set(
            destination_id,
            subscription,
            AlertType.SKIPPED_RATE,
            skipped > SKIPPED_RATE_THRESHOLD,
            lambda: (
                f"{skipped:.1%} of the profiles of the last hour were skipped "
                f"({excluded:.0f} of {skipped_total:.0f}); the threshold is "
                f"{SKIPPED_RATE_THRESHOLD:.0%}"
            ),
        )

        processed = activated + excluded + failed
        failure = failed / processed if processed else 0.0
        threshold = subscription.failure_rate_threshold
        await self._set(
            destination_id,
            subscription,
            AlertType.FAILURE_RATE,
            failure > threshold,
            lambda: (
                f"{failure:.1%} of the profiles of the last hour failed "
                f"({failed:.0f} of {processed:.0f}); the threshold is {threshold:.1%}"
            ),
        )

        age = flow.oldest_pending_age
        delay = subscription.delivery_delay_threshold
        await self._set(
            destination_id,
            subscription,
            AlertType.DELIVERY_DELAYED,
            age is not None and age > delay,
            lambda: (
                f"the oldest pending update has waited {_duration(age)}; "
                f"the threshold is {_duration(delay)}"
            ),
        )

    async def quota_exhausted(self, destination_id: str, paused_until: datetime) -> None:
        """Marketo's daily quota is spent: delivery of the destination waits until the reset."""
        await self._raise_subscribed(
            destination_id,
            AlertType.QUOTA_EXHAUSTED,
            "Marketo's daily API quota is exhausted; delivery is paused until "
            f"{paused_until.astimezone(UTC).isoformat()}",
            paused_until=paused_until,
        )

    async def authentication_failing(self, destination_id: str, detail: str) -> None:
        """Marketo refuses the destination's credentials: nothing is delivered until fixed."""
        await self._raise_subscribed(
            destination_id,
            AlertType.AUTHENTICATION_FAILING,
            f"Marketo authentication is failing: {detail}; fix the destination's "
            "client id and secret",
        )

    async def schema_mismatch(self, destination_id: str, reason: str) -> None:
        """The instance's lead schema lacks fields the mapping writes (`reason` names them):
        delivery of the destination is paused until the schema or the mapping changes."""
        await self._raise_subscribed(
            destination_id,
            AlertType.SCHEMA_MISMATCH,
            f"{reason}; delivery is paused and updates are kept until the field is back in "
            "Marketo or the mapping no longer writes it",
        )

    async def drift(self, destination_id: str, lists: Sequence[str]) -> None:
        """A reconciliation of the destination ended: raise DRIFT naming the `lists` whose
        drift found exceeded the threshold, or resolve it when there are none (the caller
        passes none only for a run that covered every list of the destination)."""
        if lists:
            await self._raise_subscribed(
                destination_id,
                AlertType.DRIFT,
                "Marketo lists differ from the desired state by more than 1 %: "
                + "; ".join(lists)
                + " (members missing or unexpected)",
            )
        else:
            await self._resolve(destination_id, AlertType.DRIFT)

    async def recovered(self, destination_id: str) -> None:
        """A batch went through: resolve the quota, authentication and schema alerts."""
        for alert_type in (
            AlertType.QUOTA_EXHAUSTED,
            AlertType.AUTHENTICATION_FAILING,
            AlertType.SCHEMA_MISMATCH,
        ):
            await self._resolve(destination_id, alert_type)

    # -- pub/sub --------------------------------------------------------------------------------

    def subscribe(self, destination_id: str | None) -> AlertWatcher:
        """Watch the alerts raised and resolved from now on (`None`: every destination).

        To show the open alerts too, subscribe first, then read `store.open_alerts`.
        """
        watcher = AlertWatcher(self, destination_id, self._watcher_queue_size)
        self._watchers.setdefault(destination_id, set()).add(watcher)
        return watcher

    def _unsubscribe(self, watcher: AlertWatcher) -> None:
        watchers = self._watchers.get(watcher.destination_id)
        if watchers is not None:
            watchers.discard(watcher)
            if not watchers:
                del self._watchers[watcher.destination_id]

    def _publish(self, event: AlertEvent, subscription: AlertSubscription) -> None:
        for key in (event.destination_id, None):
            for watcher in list(self._watchers.get(key, ())):
                watcher._push(event)
        if subscription.webhook_url and self._http is not None:
            self._enqueue_webhook(event)

    # -- raising and resolving ------------------------------------------------------------------

    async def _subscription(self, destination_id: str) -> AlertSubscription:
        record = await self._store.get_destination(destination_id, tenant=None)
        return record.spec.alerts

    async def _set(
        self,
        destination_id: str,
        subscription: AlertSubscription,
        alert_type: AlertType,
        holds: bool,
        message: Callable[[], str],
    ) -> None:
        if holds and _subscribed(subscription, alert_type):
            await self._raise(destination_id, alert_type, message(), subscription)
        else:
            await self._resolve(destination_id, alert_type, subscription)

    async def _raise(
        self,
        destination_id: str,
        alert_type: AlertType,
        message: str,
        subscription: AlertSubscription | None = None,
        *,
        paused_until: datetime | None = None,
    ) -> None:
        record, new = await self._store.raise_alert(
            destination_id, alert_type.value, message, paused_until=paused_until, now=self._now()
        )
        if new:
            log.warning("alert %s raised for %s: %s", alert_type, destination_id, message)
            subscription = subscription or await self._subscription(destination_id)
            self._publish(AlertEvent(AlertState.RAISED, record), subscription)

    async def _raise_subscribed(
        self,
        destination_id: str,
        alert_type: AlertType,
        message: str,
        *,
        paused_until: datetime | None = None,
    ) -> None:
        """Raise the alert when the destination subscribes to its type."""
        subscription = await self._subscription(destination_id)
        if _subscribed(subscription, alert_type):
            await self._raise(
                destination_id, alert_type, message, subscription, paused_until=paused_until
            )

    async def _resolve(
        self,
        destination_id: str,
        alert_type: AlertType,
        subscription: AlertSubscription | None = None,
    ) -> None:
        record = await self._store.resolve_alert(destination_id, alert_type.value, now=self._now())
        if record is not None:
            log.info("alert %s resolved for %s", alert_type, destination_id)
            subscription = subscription or await self._subscription(destination_id)
            self._publish(AlertEvent(AlertState.RESOLVED, record), subscription)

    async def _check_periodically(self) -> None:
        while True:
            await self._clock.sleep(self._check_interval)
            await self.check_all()

    # -- webhooks -------------------------------------------------------------------------------

    def _enqueue_webhook(self, event: AlertEvent) -> None:
        """Queue the event for the destination's sender (one per destination keeps order)."""
        queue = self._outgoing.setdefault(event.destination_id, deque())
        if len(queue) >= self._webhooks.queue_size:
            lost = queue.popleft()
            log.warning("webhook of %s dropped: too many undelivered alerts", lost.alert.id)
        queue.append(event)
        if event.destination_id not in self._senders:
            self._senders[event.destination_id] = asyncio.create_task(
                self._send_queue(event.destination_id), name=f"webhooks {event.destination_id}"
            )

    async def _send_queue(self, destination_id: str) -> None:
        queue = self._outgoing[destination_id]
        try:
            while queue:
                event = queue.popleft()
                try:
                    await self._send(event)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("webhook for alert %s failed", event.alert.id)
        finally:
            self._senders.pop(destination_id, None)
            if not queue:
                self._outgoing.pop(destination_id, None)

    async def _send(self, event: AlertEvent) -> None:
        """POST one event, retried with exponential backoff on 5xx, 408, 429 and network errors.

        The destination's current URL and secret are read at send time, so a Configure that
        fixes them helps the retries too.
        """
        assert self._http is not None
        settings = self._webhooks
        body = json.dumps(event.to_json(), separators=(",", ":"), sort_keys=True).encode()
        for attempt in range(1, settings.max_attempts + 1):
            try:
                record = await self._store.get_destination(event.destination_id, tenant=None)
            except DestinationNotFound:
                return
            subscription = record.spec.alerts
            if not subscription.webhook_url:
                return
            timestamp = int(self._clock.now())
            headers = {
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: str(timestamp),
                EVENT_HEADER: f"{event.alert.id}.{event.state.value}",
            }
            if subscription.webhook_secret:
                headers[SIGNATURE_HEADER] = sign_webhook(
                    subscription.webhook_secret, timestamp, body
                )
            try:
                # Only the status counts: the body is never read, so a receiver whose answer
                # never ends (or is huge) neither holds this sender nor fills memory. The whole
                # attempt is bounded too: one trickling its answer a byte at a time, each within
                # the read timeout, would otherwise hold a connection of the shared pool.
                async with (
                    asyncio.timeout(settings.attempt_seconds),
                    self._http.stream(
                        "POST",
                        subscription.webhook_url,
                        content=body,
                        headers=headers,
                        timeout=settings.timeout,
                    ) as response,
                ):
                    status = response.status_code
            except EgressRefused as error:
                log.warning("webhook for alert %s not sent: %s", event.alert.id, error)
                return
            except httpx.HTTPError as error:
                problem = f"{type(error).__name__}"
            except TimeoutError:
                problem = f"no answer within {settings.attempt_seconds:g} s"
            else:
                if 200 <= status < 300:
                    return
                problem = f"HTTP {status}"
                if status < 500 and status not in (408, 429):
                    log.warning(
                        "webhook for alert %s refused (%s); not retried", event.alert.id, problem
                    )
                    return
            if attempt == settings.max_attempts:
                log.warning(
                    "webhook for alert %s given up after %d attempts (%s)",
                    event.alert.id,
                    attempt,
                    problem,
                )
                return
            await self._clock.sleep(settings.delay(attempt, self._rng))

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.now(), tz=UTC)


def _subscribed(subscription: AlertSubscription, alert_type: AlertType) -> bool:
    return not subscription.types or alert_type.value in subscription.types


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def _duration(value: timedelta | None) -> str:
    seconds = int(value.total_seconds()) if value is not None else 0
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {seconds} s"
    return f"{seconds} s"
