"""A profile not yet bound to any lead resolves, by its e-mail, to a lead another profile holds
in a list: its exit must leave that lead in the list while the other profile still wants it
(the union rule), also on a list whose holders are not all known to the service, where an exit
with no holder removes the lead the profile resolves to. Through the dispatcher, the store
(both engines) and the sandbox."""

from __future__ import annotations

from service.domain import Action, ActionType
from tests.bulk.scenario import quick_policy
from tests.dispatch.conftest import Env, SteppingClock, drain_all, exited, profile

EMAIL = "ann@example.com"
AUDIENCE = "aud-1"


async def test_a_new_profiles_exit_leaves_the_lead_another_profile_wants_in_the_list(
    either_env: Env,
) -> None:
    env = either_env
    # a linked list (holders not tracked): an exit with no holder removes the resolved lead
    destination = await env.destination(audiences=(AUDIENCE,))
    (activation,) = await env.store.activations(destination.id)
    assert not activation.holders_tracked
    list_id = activation.marketo_list_id
    dispatcher = env.dispatcher()
    await env.append(destination.id, [profile(1, email=EMAIL)])
    await drain_all(env, dispatcher)
    (lead,) = [lead["id"] for lead in await env.leads()]
    assert (await env.lists())[list_id] == [lead]

    # p-2, never delivered before, has p-1's e-mail and exits the audience
    await env.append(
        destination.id, [exited(2, AUDIENCE, prefix="x", email=EMAIL, event_offset=60)]
    )
    await drain_all(env, dispatcher)
    assert (await env.lists())[list_id] == [lead], "p-1 still wants its lead in the list"
    page = await env.store.list_outcomes(destination.id, profile_id="p-2", page_size=10)
    (outcome,) = [o.outcome for o in page.items]
    assert Action(ActionType.REMOVED, AUDIENCE) not in outcome.actions

    # p-1's own exit removes it
    exit_1 = exited(1, AUDIENCE, prefix="y", email=EMAIL, event_offset=120)
    await env.append(destination.id, [exit_1])
    await drain_all(env, dispatcher)
    assert (await env.lists())[list_id] == []


async def test_an_exit_of_a_profile_holding_an_imported_lead_leaves_it_for_another_profile(
    either_env: Env,
) -> None:
    env = either_env
    destination = await env.destination(audiences=(AUDIENCE,))
    (activation,) = await env.store.activations(destination.id)
    list_id = activation.marketo_list_id
    # 25 new profiles go through bulk import: their leads, created by the import, are held by
    # "the lead the profile resolves to" (no binding yet)
    bulk = env.dispatcher(
        batch_size=10,
        bulk_threshold=25,
        bulk_batch_size=1_000,
        bulk_policy=quick_policy(),
        clock=SteppingClock(env.clock),
    )
    await env.append(destination.id, [profile(n) for n in range(25)])
    assert await bulk.drain_once(env.instance_key) == 25
    (lead,) = [x["id"] for x in await env.leads() if x["fields"]["email"] == "person3@example.com"]
    assert lead in (await env.lists())[list_id]

    # p-100, with p-3's e-mail, enters the audience too: it resolves to and binds p-3's lead
    await env.append(destination.id, [profile(100, email="person3@example.com")])
    await drain_all(env, bulk)
    # p-3 exits: p-100 still wants the lead in the list
    await env.append(destination.id, [exited(3, AUDIENCE, prefix="x", event_offset=60)])
    await drain_all(env, bulk)
    assert lead in (await env.lists())[list_id], "p-100 still wants the lead in the list"
