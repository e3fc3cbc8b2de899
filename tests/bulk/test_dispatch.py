"""The dispatcher's switch to bulk import: claim size, threshold, recorded outcomes."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from service.delivery.dispatcher import Dispatcher
from service.delivery.engine.planner import REASON_ATTRIBUTES_STALE
from service.domain import (
    AudienceMembership,
    MembershipMark,
    MembershipStatus,
    OutcomeKind,
    ProfileUpdate,
)
from tests.bulk.scenario import quick_policy
from tests.dispatch.conftest import Env, SteppingClock, env, profile

__all__ = ["env"]  # the dispatcher tests' fixture

IMPORT = "POST /bulk/v1/leads.json"


async def imports(env: Env) -> int:
    calls = await env.calls()
    return int(calls["by_endpoint"].get(IMPORT, {}).get("calls", 0))


async def seed_existing(env: Env, numbers: range) -> None:
    leads = [{"email": f"person{n}@example.com", "firstName": "Old"} for n in numbers]
    await env.control("POST", "leads", {"leads": leads})


def bulk_drainer(env: Env) -> Dispatcher:
    """Batches of 10; a destination with 25 or more pending goes through bulk import."""
    return env.dispatcher(
        batch_size=10,
        bulk_threshold=25,
        bulk_batch_size=1_000,
        bulk_policy=quick_policy(),
        clock=SteppingClock(env.clock),
    )


async def test_a_backlog_past_the_threshold_goes_through_bulk_import(env: Env) -> None:
    destination = await env.destination()
    await seed_existing(env, range(0, 40, 2))
    await env.append(destination.id, [profile(n) for n in range(40)])
    drainer = bulk_drainer(env)

    assert await drainer.drain_once(env.instance_key) == 40  # the claim widened past 10
    assert await imports(env) == 2  # updates by id, creations by e-mail
    assert await env.pending(destination.id) == 0
    outcomes = (await env.store.list_outcomes(destination.id, page_size=100)).items
    assert Counter(o.outcome.kind for o in outcomes) == {OutcomeKind.ACTIVATED: 40}
    kinds = Counter(a.type.value for o in outcomes for a in o.outcome.actions)
    assert kinds == {"updated": 20, "created": 20, "added": 40}
    leads = await env.leads()
    assert sorted(lead["fields"]["email"] for lead in leads) == sorted(
        f"person{n}@example.com" for n in range(40)
    )
    assert {lead["fields"]["firstName"] for lead in leads} == {f"First{n}" for n in range(40)}
    (list_id,) = [a.marketo_list_id for a in await env.store.activations(destination.id)]
    assert sorted((await env.lists())[list_id]) == sorted(lead["id"] for lead in leads)


async def test_a_backlog_below_the_threshold_stays_on_rest(env: Env) -> None:
    destination = await env.destination()
    await env.append(destination.id, [profile(n) for n in range(15)])
    drainer = bulk_drainer(env)
    assert await drainer.drain_once(env.instance_key) == 10
    assert await drainer.drain_once(env.instance_key) == 5
    assert await imports(env) == 0
    assert len(await env.leads()) == 15


async def test_a_threshold_of_zero_never_imports(env: Env) -> None:
    destination = await env.destination()
    await env.append(destination.id, [profile(n) for n in range(30)])
    drainer = env.dispatcher(batch_size=10, bulk_threshold=0, clock=SteppingClock(env.clock))
    for _ in range(3):
        assert await drainer.drain_once(env.instance_key) == 10
    assert await imports(env) == 0
    assert len(await env.leads()) == 30


async def test_lagging_entries_join_through_bulk_without_their_stale_attributes(env: Env) -> None:
    destination = await env.destination(audiences=("aud-1", "aud-2"))
    drainer = bulk_drainer(env)
    # members of aud-2 (so exported) whose newer attributes come before their aud-1 entries
    await env.append(
        destination.id,
        [profile(n, audiences=("aud-2",), event_offset=1_000, prefix="attrs") for n in range(30)],
    )
    assert await drainer.drain_once(env.instance_key) == 30

    def lagging(n: int, status: MembershipStatus, offset: float, prefix: str) -> ProfileUpdate:
        base = profile(n, event_offset=offset, prefix=prefix)
        person = {**base.profile["person"], "first": "Lagging"}
        return replace(
            base,
            profile={"person": person},
            memberships=(AudienceMembership("aud-1", status),),
        )

    await env.append(
        destination.id, [lagging(n, MembershipStatus.REALIZED, 0, "entry") for n in range(30)]
    )
    assert await drainer.drain_once(env.instance_key) == 30
    leads = await env.leads()
    assert {lead["fields"]["firstName"] for lead in leads} == {f"First{n}" for n in range(30)}
    (list_id,) = [
        a.marketo_list_id
        for a in await env.store.activations(destination.id)
        if a.audience_id == "aud-1"
    ]
    assert sorted((await env.lists())[list_id]) == sorted(lead["id"] for lead in leads)
    entries = [
        o.outcome
        for o in (await env.store.list_outcomes(destination.id, page_size=100)).items
        if o.outcome.update_id.startswith("entry-")
    ]
    assert len(entries) == 30
    assert {o.kind for o in entries} == {OutcomeKind.ACTIVATED}
    assert {tuple((a.type.value, a.audience_id) for a in o.actions) for o in entries} == {
        (("added", "aud-1"),)
    }
    assert {o.reason for o in entries} == {REASON_ATTRIBUTES_STALE}
    marks = await env.store.membership_marks(destination.id, ["p-3"])
    assert marks == {
        ("p-3", "aud-1"): MembershipMark(MembershipStatus.REALIZED, profile(3).event_time),
        ("p-3", "aud-2"): MembershipMark(
            MembershipStatus.REALIZED, profile(3, event_offset=1_000).event_time
        ),
    }

    await env.append(
        destination.id, [lagging(n, MembershipStatus.EXITED, -500, "exit") for n in range(30)]
    )
    assert await drainer.drain_once(env.instance_key) == 30
    assert sorted((await env.lists())[list_id]) == sorted(lead["id"] for lead in leads)
    exits = [
        o.outcome
        for o in (await env.store.list_outcomes(destination.id, page_size=100)).items
        if o.outcome.update_id.startswith("exit-")
    ]
    assert {o.kind for o in exits} == {OutcomeKind.SUPERSEDED}
    assert len(exits) == 30
