"""Profiles sharing one lead, delivered in separate batches through the dispatcher and the store:
the most recent update wins the lead's attributes."""

from __future__ import annotations

from typing import Any

from service.domain import Action, ActionType, OutcomeKind
from tests.dispatch.conftest import Env, drain_all, profile

EMAIL = "ann@example.com"


async def first_names(env: Env) -> list[Any]:
    return [lead["fields"]["firstName"] for lead in await env.leads()]


async def test_a_profile_writes_again_what_another_profile_of_its_lead_overwrote(
    env: Env,
) -> None:
    destination = await env.destination()
    dispatcher = env.dispatcher()
    await env.append(destination.id, [profile(1, email=EMAIL)])
    assert await drain_all(env, dispatcher) == 1
    # p-2 has the same e-mail: its batch writes its name to p-1's lead
    await env.append(destination.id, [profile(2, email=EMAIL)])
    assert await drain_all(env, dispatcher) == 1
    assert await first_names(env) == ["First2"]

    # p-1's newer update carries the name it wrote first: the lead gets it back
    await env.append(destination.id, [profile(1, email=EMAIL, prefix="v", event_offset=60)])
    assert await drain_all(env, dispatcher) == 1
    assert await first_names(env) == ["First1"]
    outcomes = (await env.store.list_outcomes(destination.id, page_size=10)).items
    (last,) = [o.outcome for o in outcomes if o.outcome.update_id == "v-1"]
    assert (last.kind, last.actions) == (OutcomeKind.ACTIVATED, (Action(ActionType.UPDATED),))
