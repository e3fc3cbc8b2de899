"""A list add whose outcome is unknown (the request left, no answer came back) counts as held:
an exit, a refused consent or a forget that comes before the retry removes the lead, and the
retry still adds it. Through the dispatcher, the store (both engines) and the sandbox."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from service.api.access import ALL_PERMISSIONS, Principal, principal_scope
from service.domain import (
    Action,
    ActionType,
    Outcome,
)
from service.store.base import DestinationRecord
from service.usecases.forget import ForgetProfile
from tests.dispatch.conftest import (
    TENANT,
    Env,
    connection,
    drain_all,
    exited,
    profile,
)

LISTS = "/rest/v1/lists/"
AUDIENCE = "aud-1"


@pytest.fixture
def env(either_env: Env) -> Env:
    return either_env


async def tracked(env: Env) -> tuple[DestinationRecord, int]:
    """A destination whose list only the service adds to (an exit with no holder costs no
    call there), and that list's id."""
    destination = await env.destination(audiences=(AUDIENCE,))
    (activation,) = await env.store.activations(destination.id)
    await env.store.upsert_activations(destination.id, [replace(activation, holders_tracked=True)])
    return destination, activation.marketo_list_id


async def members(env: Env, list_id: int) -> list[int]:
    return (await env.lists())[list_id]


async def outcomes_by_update(env: Env, destination_id: str) -> dict[str, Outcome]:
    page = await env.store.list_outcomes(destination_id, page_size=50)
    return {o.outcome.update_id: o.outcome for o in page.items}


@pytest.mark.parametrize("fault", [{"drop": "after"}, {"http_status": 502}])
async def test_an_exit_before_the_retry_removes_a_lead_whose_add_may_have_landed(
    env: Env, fault: dict[str, Any]
) -> None:
    destination, list_id = await tracked(env)
    dispatcher = env.dispatcher()
    # the add is carried out, its answer never arrives (or a 5xx comes after it left)
    await env.fault(path_prefix=LISTS, **fault)
    await env.append(destination.id, [profile(1)])
    await drain_all(env, dispatcher)
    (lead,) = [lead["id"] for lead in await env.leads()]
    assert await env.pending(destination.id) == 1  # deferred, not failed
    await env.clear_faults()
    if fault.get("drop") == "after":
        assert await members(env, list_id) == [lead]  # it did land
    else:
        # a 5xx does not say whether the add was applied: take it that it was
        await env.connections.client(connection()).add_to_list(list_id, [lead])

    # the profile exits before the add is retried
    await env.append(destination.id, [exited(1, AUDIENCE, prefix="x", event_offset=60)])
    await drain_all(env, dispatcher)
    assert await members(env, list_id) == []

    # the retried entry's membership is older than the exit: nothing is added again
    env.clock.advance(timedelta(minutes=10).total_seconds())
    await drain_all(env, dispatcher)
    assert await members(env, list_id) == []
    assert await env.pending(destination.id) == 0
    outcomes = await outcomes_by_update(env, destination.id)
    assert outcomes["x-1"].actions == (Action(ActionType.REMOVED, AUDIENCE),)
    assert outcomes["u-1"].actions == ()


async def test_the_retry_of_an_add_that_may_not_have_landed_adds_the_lead(env: Env) -> None:
    destination, list_id = await tracked(env)
    dispatcher = env.dispatcher()
    # the connection closes before the request is carried out: the add did not land
    await env.fault(path_prefix=LISTS, drop=True)
    await env.append(destination.id, [profile(1)])
    await drain_all(env, dispatcher)
    assert await members(env, list_id) == []
    assert await env.pending(destination.id) == 1
    await env.clear_faults()

    env.clock.advance(timedelta(minutes=10).total_seconds())
    await drain_all(env, dispatcher)
    (lead,) = [lead["id"] for lead in await env.leads()]
    assert await members(env, list_id) == [lead]
    assert await env.pending(destination.id) == 0

    # confirmed now: the next exit removes it, the next entry costs no list call
    await env.append(destination.id, [exited(1, AUDIENCE, prefix="x", event_offset=60)])
    await drain_all(env, dispatcher)
    assert await members(env, list_id) == []


async def landed_unanswered(env: Env, destination_id: str) -> int:
    """Deliver p-1's entry while the list add lands and its answer is lost; the lead's id."""
    dispatcher = env.dispatcher()
    await env.fault(path_prefix=LISTS, drop="after")
    await env.append(destination_id, [profile(1)])
    await drain_all(env, dispatcher)
    await env.clear_faults()
    assert await env.pending(destination_id) == 1
    (lead,) = [lead["id"] for lead in await env.leads()]
    return int(lead)


async def test_a_refused_consent_before_the_retry_removes_a_lead_whose_add_may_have_landed(
    env: Env,
) -> None:
    destination, list_id = await tracked(env)
    lead = await landed_unanswered(env, destination.id)
    assert await members(env, list_id) == [lead]

    update = profile(1, prefix="r", event_offset=60, audiences=())
    consents = {"consents": {"marketing": {"any": {"val": "n"}}}}
    refusal = replace(update, profile={**update.profile, **consents})
    await env.append(destination.id, [refusal])
    await drain_all(env, env.dispatchers[0])
    assert await members(env, list_id) == []


async def test_forget_before_the_retry_removes_a_lead_whose_add_may_have_landed(
    env: Env,
) -> None:
    destination, list_id = await tracked(env)
    lead = await landed_unanswered(env, destination.id)
    assert await members(env, list_id) == [lead]

    principal = Principal(name="test", tenant=TENANT, permissions=ALL_PERMISSIONS)
    with principal_scope(principal):
        forgotten = await ForgetProfile(env.store, env.connections).forget(
            destination.id, "p-1", delete_lead=False
        )
    assert forgotten.lead_ids == (lead,)
    assert await members(env, list_id) == []


async def test_an_entry_after_a_removal_that_may_have_landed_adds_the_lead_again(
    env: Env,
) -> None:
    destination, list_id = await tracked(env)
    dispatcher = env.dispatcher()
    await env.append(destination.id, [profile(1)])
    await drain_all(env, dispatcher)
    (lead,) = [lead["id"] for lead in await env.leads()]
    assert await members(env, list_id) == [lead]

    # the exit's removal is carried out, its answer never arrives
    await env.fault(path_prefix=LISTS, drop="after")
    await env.append(destination.id, [exited(1, AUDIENCE, prefix="x", event_offset=60)])
    await drain_all(env, dispatcher)
    await env.clear_faults()
    assert await members(env, list_id) == []
    assert await env.pending(destination.id) == 1

    # the profile enters again before the exit is retried: the lead is added back
    await env.append(destination.id, [profile(1, prefix="v", event_offset=120)])
    await drain_all(env, dispatcher)
    assert await members(env, list_id) == [lead]
    env.clock.advance(timedelta(minutes=10).total_seconds())
    await drain_all(env, dispatcher)
    assert await members(env, list_id) == [lead]
    assert await env.pending(destination.id) == 0
