"""Batches formed, delivered and recorded: the dispatcher against the sandbox and a real store."""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from service.delivery.dispatcher import Dispatcher
from service.domain import AudienceMembership, MembershipStatus, OutcomeKind, ProfileUpdate
from tests.dispatch.conftest import Env, drain_all, eventually, profile, settle


async def test_batches_are_delivered_and_the_sandbox_holds_exactly_the_profiles(env: Env) -> None:
    destination = await env.destination()
    await env.append(destination.id, [profile(n) for n in range(25)])
    commits: list[str] = []
    env.store.add_commit_listener(commits.append)
    dispatcher = env.dispatcher(batch_size=10)

    assert await dispatcher.drain_once(env.instance_key) == 10
    assert commits.count("retire") == 1
    assert "defer" not in commits
    assert await env.pending(destination.id) == 15
    assert await drain_all(env, dispatcher) == 15

    leads = await env.leads()
    assert sorted(lead["fields"]["email"] for lead in leads) == sorted(
        f"person{n}@example.com" for n in range(25)
    )
    by_email = {lead["fields"]["email"]: lead for lead in leads}
    assert by_email["person7@example.com"]["fields"]["firstName"] == "First7"
    (list_id,) = [a.marketo_list_id for a in await env.store.activations(destination.id)]
    assert sorted((await env.lists())[list_id]) == sorted(lead["id"] for lead in leads)

    flow = await env.store.dataflow(destination.id, now=env.clock.datetime())
    assert (flow.received, flow.activated, flow.created, flow.added, flow.pending) == (
        25,
        25,
        25,
        25,
        0,
    )
    outcomes = (await env.store.list_outcomes(destination.id, page_size=100)).items
    assert Counter(o.outcome.kind for o in outcomes) == {OutcomeKind.ACTIVATED: 25}
    assert {o.outcome.update_id for o in outcomes} == {f"u-{n}" for n in range(25)}


async def test_outcomes_are_retired_with_their_entries_across_destinations(env: Env) -> None:
    first = await env.destination(name="first")
    second = await env.destination(name="second", audiences=("aud-2",))
    await env.append(first.id, [profile(n) for n in range(3)])
    # The same update ids in another destination: outcomes must pair with their own entries.
    await env.append(second.id, [profile(n, audiences=("aud-2",)) for n in range(3)])
    dispatcher = env.dispatcher()
    assert await dispatcher.drain_once(env.instance_key) == 6
    for destination in (first, second):
        outcomes = (await env.store.list_outcomes(destination.id)).items
        assert sorted(o.outcome.update_id for o in outcomes) == ["u-0", "u-1", "u-2"]
        assert await env.pending(destination.id) == 0
    assert len(await env.leads()) == 3


async def test_a_trickle_lingers_and_a_full_batch_goes_at_once(env: Env) -> None:
    destination = await env.destination()
    dispatcher = env.dispatcher(batch_size=5, linger=1.0)
    await dispatcher.start()

    await env.append(destination.id, [profile(n) for n in range(3)])
    dispatcher.notify(env.instance_key)
    await eventually(lambda: _running(dispatcher, env), what="drainer started")
    await settle()
    assert await env.pending(destination.id) == 3, "a partial batch must linger"
    assert await env.leads() == []

    await env.append(destination.id, [profile(n) for n in range(3, 5)])
    dispatcher.notify(env.instance_key)
    await eventually(lambda: _is_zero(env, destination.id), what="full batch delivered")
    assert len(await env.leads()) == 5

    await env.append(destination.id, [profile(5)])
    dispatcher.notify(env.instance_key)
    await settle()
    assert await env.pending(destination.id) == 1
    env.clock.advance(1.0)
    await eventually(lambda: _is_zero(env, destination.id), what="lingered entry delivered")
    assert len(await env.leads()) == 6


def noted(n: int) -> ProfileUpdate:
    """A profile whose stored payload is a little over 5,000 bytes."""
    update = profile(n)
    return dataclasses.replace(
        update, profile={"person": {**update.profile["person"], "notes": "n" * 5_000}}
    )


async def test_a_claim_is_bounded_by_its_bytes_and_the_rest_follows(env: Env) -> None:
    destination = await env.destination()
    await env.append(destination.id, [noted(n) for n in range(9)])
    dispatcher = env.dispatcher(batch_size=300, claim_max_bytes=12_000)

    # Taken while below 12,000 bytes: the third entry passes the bound and ends the claim.
    assert await dispatcher.drain_once(env.instance_key) == 3
    assert await env.pending(destination.id) == 6
    assert await drain_all(env, dispatcher) == 6
    outcomes = (await env.store.list_outcomes(destination.id, page_size=100)).items
    assert Counter(o.outcome.kind for o in outcomes) == {OutcomeKind.ACTIVATED: 9}
    assert len(await env.leads()) == 9


async def test_a_batch_full_by_its_bytes_goes_at_once(env: Env) -> None:
    destination = await env.destination()
    dispatcher = env.dispatcher(batch_size=300, linger=1.0, claim_max_bytes=12_000)
    await dispatcher.start()

    await env.append(destination.id, [noted(0)])
    dispatcher.notify(env.instance_key)
    await eventually(lambda: _running(dispatcher, env), what="drainer started")
    await settle()
    assert await env.pending(destination.id) == 1, "a partial batch must linger"

    await env.append(destination.id, [noted(n) for n in range(1, 3)])
    dispatcher.notify(env.instance_key)
    await eventually(lambda: _is_zero(env, destination.id), what="full batch delivered")
    assert len(await env.leads()) == 3


async def test_the_periodic_poll_finds_work_nobody_announced(env: Env) -> None:
    destination = await env.destination()
    dispatcher = env.dispatcher(poll_interval=5.0, linger=0.5)
    await dispatcher.start()
    await settle()
    await env.append(destination.id, [profile(n) for n in range(4)])  # no notify
    await settle()
    assert await env.pending(destination.id) == 4
    env.clock.advance(5.0)
    await eventually(lambda: _is_zero(env, destination.id), what="delivered after the poll")
    assert len(await env.leads()) == 4


async def test_an_idle_drainer_gives_its_lease_up(env: Env) -> None:
    destination = await env.destination()
    await env.append(destination.id, [profile(0)])
    dispatcher = env.dispatcher(linger=0.0)
    await dispatcher.start()
    dispatcher.notify(env.instance_key)
    await eventually(lambda: _is_zero(env, destination.id), what="delivered")
    await eventually(lambda: _idle(dispatcher), what="drainer ended")
    lease = await env.store.acquire_lease(
        env.instance_key, "replica-2", timedelta(seconds=30), now=env.clock.datetime()
    )
    assert lease is not None and lease.holder == "replica-2"


async def test_stop_leaves_a_lingering_batch_queued_and_releases_the_lease(env: Env) -> None:
    destination = await env.destination()
    dispatcher = env.dispatcher(linger=10.0)
    await dispatcher.start()
    await env.append(destination.id, [profile(0)])
    dispatcher.notify(env.instance_key)
    await eventually(lambda: _running(dispatcher, env), what="drainer started")
    await settle()
    await dispatcher.stop()
    assert await env.pending(destination.id) == 1
    assert await env.leads() == []
    lease = await env.store.acquire_lease(
        env.instance_key, "replica-2", timedelta(seconds=30), now=env.clock.datetime()
    )
    assert lease is not None and lease.holder == "replica-2"


async def test_a_destination_without_mapping_waits_with_a_clear_error(env: Env) -> None:
    destination = await env.destination(mappings=(), audiences=())
    await env.append(destination.id, [profile(0, audiences=())])
    dispatcher = env.dispatcher()
    assert await dispatcher.drain_once(env.instance_key) == 1
    (entry,) = await env.outbox()
    assert "no active mapping" in entry.last_error
    assert entry.attempts == 1
    assert entry.not_before > env.clock.datetime()
    assert await env.leads() == []


async def _running(dispatcher: Dispatcher, env: Env) -> bool:
    return env.instance_key in dispatcher.active_instances


async def _is_zero(env: Env, destination_id: str) -> bool:
    return await env.pending(destination_id) == 0


async def _idle(dispatcher: Dispatcher) -> bool:
    return not dispatcher.active_instances


async def test_an_exit_keeps_its_attributes_the_newest_through_the_store(env: Env) -> None:
    """The update that leaves p-1's only audience writes no attributes, yet they are the newest:
    the older entry that exports the profile again, delivered after it, writes them."""
    destination = await env.destination(audiences=("aud-1", "aud-2"))
    lists = {a.audience_id: a.marketo_list_id for a in await env.store.activations(destination.id)}
    dispatcher = env.dispatcher()

    def p1(uid: str, second: int, first: str, audience: str, status: MembershipStatus) -> Any:
        return ProfileUpdate(
            update_id=uid,
            profile_id="p-1",
            event_time=datetime(2026, 5, 1, tzinfo=UTC) + timedelta(seconds=second),
            profile={"person": {"email": "ann@example.com", "first": first, "last": "Lee"}},
            memberships=(AudienceMembership(audience, status),),
        )

    for update in (
        p1("joins", 1, "One", "aud-1", MembershipStatus.REALIZED),
        p1("leaves", 3, "Three", "aud-1", MembershipStatus.EXITED),
        p1("lagging", 2, "Two", "aud-2", MembershipStatus.REALIZED),
    ):
        await env.append(destination.id, [update])
        assert await drain_all(env, dispatcher) == 1

    (lead,) = await env.leads()
    assert lead["fields"]["firstName"] == "Three", "the newest attributes win"
    held = await env.lists()
    assert (held[lists["aud-1"]], held[lists["aud-2"]]) == ([], [lead["id"]])
    outcomes = (await env.store.list_outcomes(destination.id, page_size=10)).items
    assert {o.outcome.update_id: o.outcome.kind for o in outcomes} == {
        "joins": OutcomeKind.ACTIVATED,
        "leaves": OutcomeKind.ACTIVATED,
        "lagging": OutcomeKind.ACTIVATED,
    }
    assert (await env.store.desired_state(destination.id, ["p-1"])).unapplied == {}
    (source,) = await env.store.resync_sources(destination.id)
    assert source.profile["person"]["first"] == "Three", "Resync re-sends the attributes applied"
