"""Failures: transient faults wait and succeed later, quota pauses, bad credentials, crashes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from service.domain import AlertType, Outcome, OutcomeKind
from service.store.base import DestinationState, FencingError, OutboxEntry, Watermark
from service.store.sql import Store
from tests.dispatch.conftest import Env, connection, drain_all, eventually, profile

LEADS = "/rest/v1/leads.json"


def emails(leads: Sequence[dict[str, Any]]) -> list[str]:
    return sorted(lead["fields"]["email"] for lead in leads)


@pytest.mark.parametrize(
    "fault",
    [
        {"code": 604},
        {"code": 608},
        {"http_status": 502},
        {"drop": True},
    ],
    ids=["604", "608", "http-502", "dropped"],
)
async def test_transient_faults_defer_the_batch_and_it_succeeds_later(
    env: Env, fault: dict[str, Any]
) -> None:
    destination = await env.destination()
    await env.append(destination.id, [profile(n) for n in range(5)])
    dispatcher = env.dispatcher()
    await env.fault(path_prefix=LEADS, **fault)  # outlasts the client's own retries

    assert await dispatcher.drain_once(env.instance_key) == 5
    entries = await env.outbox()
    assert len(entries) == 5
    assert {e.attempts for e in entries} == {1}
    assert all(e.last_error.startswith("UnavailableError") for e in entries), entries[0]
    assert min(e.not_before for e in entries) > env.clock.datetime()
    assert await dispatcher.drain_once(env.instance_key) == 0, "not due before the backoff"

    await env.clear_faults()
    env.clock.advance(timedelta(minutes=5).total_seconds())
    assert await drain_all(env, dispatcher) == 5
    assert emails(await env.leads()) == [f"person{n}@example.com" for n in range(5)]
    assert await env.pending(destination.id) == 0


async def test_backoff_grows_with_attempts_and_stays_bounded(env: Env) -> None:
    destination = await env.destination()
    await env.append(destination.id, [profile(0)])
    dispatcher = env.dispatcher()
    await env.fault(path_prefix=LEADS, code=604)
    waits = []
    for _ in range(8):
        assert await dispatcher.drain_once(env.instance_key) == 1
        (entry,) = await env.outbox()
        # Measured from the end of the batch: the client's own retries already moved the clock.
        waits.append((entry.not_before - env.clock.datetime()).total_seconds())
        env.clock.advance(waits[-1] + 0.001)
    assert entry.attempts == 8
    assert waits[:5] == sorted(waits[:5]) and len(set(waits[:5])) == 5
    assert 4 <= waits[0] <= 5  # 5 s base, up to 20 % jitter
    assert all(wait <= 5 * 60 for wait in waits)  # the cap
    assert waits[-1] >= 0.8 * 5 * 60


async def test_601_mid_run_is_refreshed_without_deferring(env: Env) -> None:
    destination = await env.destination()
    await env.append(destination.id, [profile(n) for n in range(5)])
    dispatcher = env.dispatcher()
    await env.fault(path_prefix=LEADS, code=601, count=1)
    assert await dispatcher.drain_once(env.instance_key) == 5
    assert await env.outbox() == []
    assert len(await env.leads()) == 5
    assert (await env.calls())["by_code"].get("601") == 1


async def test_607_pauses_the_instance_and_resumes_after_the_reset(env: Env) -> None:
    first = await env.destination(name="first")
    second = await env.destination(name="second", audiences=("aud-2",))
    await env.append(first.id, [profile(n) for n in range(4)])
    await env.append(second.id, [profile(n, audiences=("aud-2",), prefix="s") for n in range(4)])
    dispatcher = env.dispatcher()
    await env.fault(path_prefix=LEADS, code=607, count=1)

    assert await dispatcher.drain_once(env.instance_key) == 8
    paused_until = dispatcher.paused_until(env.instance_key)
    assert paused_until is not None and paused_until > env.clock.datetime()
    entries = await env.outbox()
    assert len(entries) == 8
    assert {e.not_before for e in entries} == {paused_until}
    assert all("quota" in e.last_error for e in entries)
    assert {e.attempts for e in entries} == {0}, "a quota pause is not a failed attempt"
    for destination in (first, second):
        record = await env.store.get_destination(destination.id, tenant=None)
        assert record.state is DestinationState.QUOTA_PAUSED
        assert record.paused_until == paused_until
        (alert,) = await env.store.open_alerts(destination.id)
        assert alert.type == AlertType.QUOTA_EXHAUSTED
        assert alert.paused_until == paused_until
    assert await dispatcher.drain_once(env.instance_key) == 0

    env.clock.advance((paused_until - env.clock.datetime()).total_seconds() + 1)
    assert dispatcher.paused_until(env.instance_key) is None
    assert await drain_all(env, dispatcher) == 8
    assert len(await env.leads()) == 4  # the same four people in both destinations
    for destination in (first, second):
        record = await env.store.get_destination(destination.id, tenant=None)
        assert record.state is DestinationState.ACTIVE
        assert await env.store.open_alerts(destination.id) == []
        outcomes = (await env.store.list_outcomes(destination.id)).items
        assert Counter(o.outcome.kind for o in outcomes) == {OutcomeKind.ACTIVATED: 4}


async def test_failing_authentication_raises_the_alert_and_recovers(env: Env) -> None:
    destination = await env.destination(client_id="revoked-client")
    await env.append(destination.id, [profile(n) for n in range(3)])
    dispatcher = env.dispatcher()
    assert await dispatcher.drain_once(env.instance_key) == 3

    record = await env.store.get_destination(destination.id, tenant=None)
    assert record.state is DestinationState.AUTH_FAILING
    (alert,) = await env.store.open_alerts(destination.id)
    assert alert.type == AlertType.AUTHENTICATION_FAILING
    entries = await env.outbox()
    assert len(entries) == 3
    assert all(e.last_error.startswith("AuthenticationError 401") for e in entries)
    assert "sandbox-client-secret" not in entries[0].last_error

    spec = replace(
        record.spec,
        connection=replace(record.spec.connection, client_id=connection().client_id),
    )
    await env.store.update_destination(replace(record, spec=spec))  # the user fixed the id
    env.clock.advance(60)
    assert await drain_all(env, dispatcher) == 3
    record = await env.store.get_destination(destination.id, tenant=None)
    assert record.state is DestinationState.ACTIVE
    assert await env.store.open_alerts(destination.id) == []
    assert len(await env.leads()) == 3


class Crash(BaseException):
    """The process dies (nothing after this point runs)."""


class CrashingStore:
    """A store whose retire dies after Marketo was written: a crash at the worst moment."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def retire(self, *args: Any, **kwargs: Any) -> None:
        raise Crash


async def test_restart_resumes_from_the_outbox_without_duplicate_leads(env: Env) -> None:
    destination = await env.destination()
    await env.append(destination.id, [profile(n) for n in range(30)])
    first = env.dispatcher(batch_size=10)
    assert await first.drain_once(env.instance_key) == 10

    crashing = env.dispatcher(CrashingStore(env.store), batch_size=10)
    with pytest.raises(Crash):
        await crashing.drain_once(env.instance_key)
    assert len(await env.leads()) == 20, "written to Marketo, never retired"
    env.dispatchers.clear()  # the process is gone: no orderly stop

    await env.reopen()
    assert await env.pending(destination.id) == 20
    restarted = env.dispatcher(batch_size=10, holder="replica-2")
    assert await restarted.drain_once(env.instance_key) == 0, "the dead holder's lease is live"
    env.clock.advance(31)
    assert await drain_all(env, restarted) == 20

    leads = await env.leads()
    assert emails(leads) == sorted(f"person{n}@example.com" for n in range(30))
    outcomes = (await env.store.list_outcomes(destination.id, page_size=100)).items
    assert sorted(o.outcome.update_id for o in outcomes) == sorted(f"u-{n}" for n in range(30))
    (list_id,) = [a.marketo_list_id for a in await env.store.activations(destination.id)]
    assert sorted((await env.lists())[list_id]) == sorted(lead["id"] for lead in leads)


class TakenOverStore:
    """Another replica takes the lease while this one's batch is in flight."""

    def __init__(self, store: Store, env: Env) -> None:
        self._store = store
        self._env = env

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def retire(
        self,
        entries: Sequence[OutboxEntry],
        outcomes: Sequence[Outcome],
        watermarks: Sequence[Watermark] = (),
        **kwargs: Any,
    ) -> None:
        self._env.clock.advance(31)
        taken = await self._store.acquire_lease(
            self._env.instance_key, "replica-2", timedelta(seconds=30)
        )
        assert taken is not None
        await self._store.retire(entries, outcomes, watermarks, **kwargs)


async def test_a_drainer_with_a_stale_lease_cannot_retire(env: Env) -> None:
    destination = await env.destination()
    await env.append(destination.id, [profile(n) for n in range(5)])
    stale = env.dispatcher(TakenOverStore(env.store, env))
    with pytest.raises(FencingError):
        await stale.drain_once(env.instance_key)
    assert await env.pending(destination.id) == 5
    assert (await env.store.list_outcomes(destination.id)).items == ()

    current = env.dispatcher(holder="replica-2")
    assert await drain_all(env, current) == 5
    assert len(await env.leads()) == 5
    assert len((await env.store.list_outcomes(destination.id)).items) == 5


class FailingOnceStore:
    """`desired_state` breaks once: an unexpected error in the middle of a batch."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def desired_state(self, destination_id: str, profile_ids: Sequence[str]) -> Any:
        if not self.failed:
            self.failed = True
            raise RuntimeError("disk hiccup")
        return await self._store.desired_state(destination_id, profile_ids)


async def test_an_unexpected_error_defers_the_batch_and_nothing_is_lost(env: Env) -> None:
    destination = await env.destination()
    await env.append(destination.id, [profile(n) for n in range(5)])
    dispatcher = env.dispatcher(FailingOnceStore(env.store))
    assert await dispatcher.drain_once(env.instance_key) == 5
    entries = await env.outbox()
    assert len(entries) == 5
    assert all(e.last_error == "internal error: RuntimeError: disk hiccup" for e in entries)
    env.clock.advance(60)
    assert await drain_all(env, dispatcher) == 5
    assert len(await env.leads()) == 5


class DeletingStore:
    """The destination is deleted while its batch is in flight."""

    def __init__(self, store: Store, victim: str) -> None:
        self._store = store
        self._victim = victim

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def desired_state(self, destination_id: str, profile_ids: Sequence[str]) -> Any:
        marks = await self._store.desired_state(destination_id, profile_ids)
        if destination_id == self._victim:
            await self._store.delete_destination(destination_id, tenant="tenant-a")
        return marks


async def test_a_destination_deleted_mid_batch_disappears_cleanly(env: Env) -> None:
    doomed = await env.destination(name="doomed")
    kept = await env.destination(name="kept", audiences=("aud-2",))
    await env.append(doomed.id, [profile(n) for n in range(3)])
    await env.append(kept.id, [profile(n, audiences=("aud-2",), prefix="k") for n in range(3)])
    dispatcher = env.dispatcher(DeletingStore(env.store, doomed.id))
    assert await dispatcher.drain_once(env.instance_key) == 6
    assert await env.outbox() == []
    assert await env.pending(kept.id) == 0
    assert len((await env.store.list_outcomes(kept.id)).items) == 3
    assert await dispatcher.drain_once(env.instance_key) == 0


async def test_a_running_drainer_goes_on_after_an_unexpected_error(env: Env) -> None:
    destination = await env.destination()
    dispatcher = env.dispatcher(FailingOnceStore(env.store), linger=0.0, poll_interval=10.0)
    await dispatcher.start()
    await env.append(destination.id, [profile(n) for n in range(5)])
    dispatcher.notify(env.instance_key, destination.id)

    async def deferred() -> bool:
        return any(e.last_error for e in await env.outbox())

    await eventually(deferred, what="the failed batch was deferred")
    assert await env.pending(destination.id) == 5
    await eventually(
        lambda: _none_pending(env, destination.id),
        what="delivered on retry",
        clock=env.clock,
        tick=1.0,
    )
    assert len(await env.leads()) == 5


async def test_two_replicas_deliver_everything_exactly_once(env: Env) -> None:
    destination = await env.destination()
    replicas = [env.dispatcher(holder=f"replica-{i}", linger=0.0) for i in (1, 2)]
    for replica in replicas:
        await replica.start()
    await env.append(destination.id, [profile(n) for n in range(40)])
    for replica in replicas:
        replica.notify(env.instance_key, destination.id)
    await eventually(lambda: _none_pending(env, destination.id), what="all delivered")
    assert len(await env.leads()) == 40
    outcomes = (await env.store.list_outcomes(destination.id, page_size=100)).items
    assert sorted(o.outcome.update_id for o in outcomes) == sorted(f"u-{n}" for n in range(40))


async def _none_pending(env: Env, destination_id: str) -> bool:
    return await env.pending(destination_id) == 0
