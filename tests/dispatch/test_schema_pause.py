"""Configuration errors: a field deleted from Marketo's lead schema pauses the destination.

The sandbox answers a Sync Leads call naming a field its schema lacks with a response-level 1006,
as Marketo does; a request so refused must never be split record by record.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import timedelta
from typing import Any

from service.delivery.config import Backoff
from service.delivery.dispatcher import Dispatcher
from service.domain import AlertType, FieldMapping, OutcomeKind, ProfileUpdate
from service.store.base import DestinationRecord, DestinationState
from tests.dispatch.conftest import MAPPINGS, Env, drain_all, profile

FIELD = "loyaltyTier"
WITH_TIER = (*MAPPINGS, FieldMapping("person.tier", FIELD))
RECHECK = Backoff(base=timedelta(minutes=1), maximum=timedelta(minutes=10), jitter=0.0)
UPDATES = 300


def tiered(n: int, prefix: str = "u", tier: str = "gold") -> ProfileUpdate:
    update = profile(n, prefix=prefix)
    person = dict(update.profile["person"])
    person["tier"] = tier
    return replace(update, profile={"person": person})


async def requests(env: Env) -> int:
    return int((await env.calls())["requests"])


async def describes(env: Env) -> int:
    by_endpoint = (await env.calls())["by_endpoint"]
    return int(by_endpoint.get("GET /rest/v1/leads/describe2.json", {}).get("calls", 0))


async def paused_destination(env: Env, **options: Any) -> tuple[DestinationRecord, Dispatcher]:
    """A destination that delivered once (its schema is cached), then lost FIELD in Marketo and
    was sent UPDATES updates: drained once."""
    await env.control("POST", "reset", {"unknown_field_rejects_request": True})
    destination = await env.destination(mappings=WITH_TIER)
    dispatcher = env.dispatcher(schema_recheck=RECHECK, **options)
    # another tier: person 0's later update is a change to write, not one already applied
    await env.append(destination.id, [tiered(0, prefix="warm", tier="silver")])
    assert await drain_all(env, dispatcher) == 1
    await env.control("DELETE", f"fields/{FIELD}")
    await env.append(destination.id, [tiered(n) for n in range(UPDATES)])
    return destination, dispatcher


async def test_a_deleted_field_pauses_the_destination_in_a_few_calls(env: Env) -> None:
    destination, dispatcher = await paused_destination(env)
    before = await requests(env)

    assert await dispatcher.drain_once(env.instance_key) == UPDATES
    # the look-up, the refused write and one schema read; splitting took 599 writes
    assert await requests(env) - before == 3
    record = await env.store.get_destination(destination.id, tenant=None)
    assert record.state is DestinationState.SCHEMA_PAUSED
    assert repr(FIELD) in record.state_reason
    (alert,) = await env.store.open_alerts(destination.id)
    assert alert.type == AlertType.SCHEMA_MISMATCH and repr(FIELD) in alert.message
    entries = await env.outbox()
    assert len(entries) == UPDATES
    assert {e.attempts for e in entries} == {0}, "a pause is not a failed attempt"
    assert all(FIELD in e.last_error for e in entries)
    assert [o.outcome.kind for o in (await env.store.list_outcomes(destination.id)).items] == [
        OutcomeKind.ACTIVATED
    ], "only the warm-up update has an outcome"

    # nothing is due before the re-check: no call at all
    assert await dispatcher.drain_once(env.instance_key) == 0
    assert await requests(env) - before == 3

    # a re-check that finds the field still missing reads the schema once, and waits longer
    env.clock.advance(61)
    before = await requests(env)
    assert await dispatcher.drain_once(env.instance_key) == UPDATES
    assert await requests(env) - before == 1
    later = {e.not_before for e in await env.outbox()}
    assert later == {env.clock.datetime() + timedelta(minutes=2)}

    # the field is back: the next re-check resumes and delivers everything
    await env.control("POST", "fields", {"fields": [{"name": FIELD, "dataType": "string"}]})
    env.clock.advance(121)
    assert await drain_all(env, dispatcher) == UPDATES
    record = await env.store.get_destination(destination.id, tenant=None)
    assert (record.state, record.state_reason) == (DestinationState.ACTIVE, "")
    assert await env.store.open_alerts(destination.id) == []
    outcomes = (await env.store.list_outcomes(destination.id, page_size=1000)).items
    assert Counter(o.outcome.kind for o in outcomes) == {OutcomeKind.ACTIVATED: UPDATES + 1}
    tiers = Counter(lead["fields"].get(FIELD) for lead in await env.leads())
    assert tiers == {"gold": UPDATES}  # the warm-up person is person 0 again


async def test_other_destinations_of_the_instance_keep_flowing(env: Env) -> None:
    destination, dispatcher = await paused_destination(env)
    assert await dispatcher.drain_once(env.instance_key) == UPDATES
    other = await env.destination(name="other", audiences=("aud-2",))
    await env.append(other.id, [profile(n, prefix="o", audiences=("aud-2",)) for n in range(5)])

    assert await drain_all(env, dispatcher) == 5
    outcomes = (await env.store.list_outcomes(other.id)).items
    assert Counter(o.outcome.kind for o in outcomes) == {OutcomeKind.ACTIVATED: 5}
    assert await env.pending(destination.id) == UPDATES


async def test_a_restart_while_paused_stays_paused(env: Env) -> None:
    destination, dispatcher = await paused_destination(env)
    assert await dispatcher.drain_once(env.instance_key) == UPDATES
    await dispatcher.stop()
    await env.reopen()
    dispatcher = env.dispatcher(schema_recheck=RECHECK)

    record = await env.store.get_destination(destination.id, tenant=None)
    assert record.state is DestinationState.SCHEMA_PAUSED and repr(FIELD) in record.state_reason
    before = await requests(env)
    assert await dispatcher.drain_once(env.instance_key) == 0
    env.clock.advance(61)
    assert await dispatcher.drain_once(env.instance_key) == UPDATES
    assert await requests(env) - before == 1, "one schema read, no write"
    record = await env.store.get_destination(destination.id, tenant=None)
    assert record.state is DestinationState.SCHEMA_PAUSED
    assert await env.pending(destination.id) == UPDATES


async def test_a_new_mapping_is_checked_at_once(env: Env) -> None:
    destination, dispatcher = await paused_destination(env)
    assert await dispatcher.drain_once(env.instance_key) == UPDATES
    paused = await env.store.get_destination(destination.id, tenant=None)
    await env.store.upsert_activations(destination.id, [], MAPPINGS)
    await dispatcher.configuration_changed(paused)

    assert await drain_all(env, dispatcher) == UPDATES
    record = await env.store.get_destination(destination.id, tenant=None)
    assert record.state is DestinationState.ACTIVE
    outcomes = (await env.store.list_outcomes(destination.id, page_size=1000)).items
    assert Counter(o.outcome.kind for o in outcomes) == {OutcomeKind.ACTIVATED: UPDATES + 1}


async def test_the_schema_read_on_first_delivery_pauses_too(env: Env) -> None:
    await env.control("DELETE", f"fields/{FIELD}")
    destination = await env.destination(mappings=WITH_TIER)
    await env.append(destination.id, [tiered(n) for n in range(3)])
    dispatcher = env.dispatcher(schema_recheck=RECHECK)

    assert await dispatcher.drain_once(env.instance_key) == 3
    record = await env.store.get_destination(destination.id, tenant=None)
    assert record.state is DestinationState.SCHEMA_PAUSED and repr(FIELD) in record.state_reason
    assert {e.attempts for e in await env.outbox()} == {0}


async def test_a_refusal_the_schema_does_not_explain_is_retried_once_unsplit(env: Env) -> None:
    destination = await env.destination()
    await env.append(destination.id, [profile(n) for n in range(UPDATES)])
    dispatcher = env.dispatcher(schema_recheck=RECHECK)
    await env.fault(path_prefix="/rest/v1/leads.json", http_status=404, count=1)
    before = await requests(env)

    assert await drain_all(env, dispatcher) == UPDATES
    outcomes = (await env.store.list_outcomes(destination.id, page_size=1000)).items
    assert Counter(o.outcome.kind for o in outcomes) == {OutcomeKind.ACTIVATED: UPDATES}
    # refused look-up, schema read, look-up, create, list add (plus the token)
    assert await requests(env) - before <= 6
    assert (await env.store.get_destination(destination.id, tenant=None)).state is (
        DestinationState.ACTIVE
    )


async def test_a_lasting_refusal_fails_the_records_without_splitting(env: Env) -> None:
    destination = await env.destination()
    await env.append(destination.id, [profile(n) for n in range(UPDATES)])
    dispatcher = env.dispatcher(schema_recheck=RECHECK)
    await env.fault(path_prefix="/rest/v1/leads.json", http_status=404)
    before = await requests(env)

    assert await drain_all(env, dispatcher) == UPDATES
    outcomes = (await env.store.list_outcomes(destination.id, page_size=1000)).items
    assert Counter((o.outcome.kind, o.outcome.marketo_code) for o in outcomes) == {
        (OutcomeKind.FAILED, "404"): UPDATES
    }
    assert await requests(env) - before <= 4
