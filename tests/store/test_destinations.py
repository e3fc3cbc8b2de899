"""Destinations and activations: CRUD, tenants, optimistic updates, cascade delete."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from service.domain import ActionType, FieldMapping
from service.store.base import (
    ActivationRecord,
    DestinationNotFound,
    DestinationState,
    InvalidPageToken,
    VersionConflict,
    Watermark,
)
from service.store.sql import Store
from tests.store.conftest import (
    CLIENT_SECRET,
    START,
    WEBHOOK_SECRET,
    Backend,
    FakeClock,
    activated,
    append,
    destination_spec,
    new_destination,
    unpack,
    update,
)


async def test_create_and_get(store: Store) -> None:
    created = await store.create_destination(new_destination())

    assert created.id.startswith("dst_")
    assert created.version == 1
    assert created.state is DestinationState.ACTIVE
    assert created.created_at == created.updated_at == START
    fetched = await store.get_destination(created.id, tenant="acme")
    assert fetched == created
    assert fetched.spec.connection.client_secret == CLIENT_SECRET
    assert fetched.spec.alerts.webhook_secret == WEBHOOK_SECRET
    assert fetched.spec.connection.client_id == "cid"
    assert fetched.mappings == (FieldMapping("person.email", "DedupeField", labels=("C2",)),)


async def test_secrets_are_not_in_repr(store: Store) -> None:
    created = await store.create_destination(new_destination())

    assert CLIENT_SECRET not in repr(created)
    assert WEBHOOK_SECRET not in repr(created)


async def test_other_tenant_does_not_see_the_destination(store: Store) -> None:
    created = await store.create_destination(new_destination(tenant="acme"))

    with pytest.raises(DestinationNotFound):
        await store.get_destination(created.id, tenant="globex")
    with pytest.raises(DestinationNotFound):
        await store.delete_destination(created.id, tenant="globex")
    stolen = dataclasses.replace(created, tenant="globex", name="mine now")
    with pytest.raises(DestinationNotFound):
        await store.update_destination(stolen)
    assert (await store.list_destinations("globex")).items == ()
    assert (await store.get_destination(created.id, tenant="acme")).name == "Marketo prod"
    assert (await store.get_destination(created.id, tenant=None)).tenant == "acme"


async def test_list_pages_in_stable_order(store: Store, clock: FakeClock) -> None:
    ids = []
    for n in range(7):
        ids.append((await store.create_destination(new_destination(name=f"d{n}"))).id)
        if n % 2:
            clock.advance(timedelta(seconds=1))
    await store.create_destination(new_destination(tenant="globex"))

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await store.list_destinations("acme", page_size=3, page_token=token)
        seen.extend(record.id for record in page.items)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert sorted(seen) == sorted(ids)
    assert len(set(seen)) == 7
    again = await store.list_destinations("acme", page_size=100)
    assert [record.id for record in again.items] == seen


async def test_bad_page_token_is_refused(store: Store) -> None:
    with pytest.raises(InvalidPageToken):
        await store.list_destinations("acme", page_token="not-a-token")
    outcomes_token_shape = "eyJsIjoib3V0Y29tZXMiLCJwIjpbNV19"  # {"l":"outcomes","p":[5]}
    with pytest.raises(InvalidPageToken):
        await store.list_destinations("acme", page_token=outcomes_token_shape)


async def test_update_is_optimistic(store: Store, clock: FakeClock) -> None:
    created = await store.create_destination(new_destination())
    clock.advance(timedelta(minutes=1))

    renamed = await store.update_destination(
        dataclasses.replace(
            created, name="renamed", spec=destination_spec(client_secret="new-secret")
        )
    )

    assert renamed.version == 2
    assert renamed.name == "renamed"
    assert renamed.spec.connection.client_secret == "new-secret"
    assert renamed.updated_at == START + timedelta(minutes=1)
    assert renamed.created_at == START
    with pytest.raises(VersionConflict):
        await store.update_destination(dataclasses.replace(created, name="stale"))
    assert (await store.get_destination(created.id, tenant="acme")).name == "renamed"


async def test_state_is_kept_apart_from_configuration(store: Store) -> None:
    created = await store.create_destination(new_destination())
    until = START + timedelta(hours=13)

    await store.set_destination_state(created.id, DestinationState.QUOTA_PAUSED, until)
    updated = await store.update_destination(dataclasses.replace(created, name="renamed"))

    assert updated.state is DestinationState.QUOTA_PAUSED
    assert updated.paused_until == until
    with pytest.raises(DestinationNotFound):
        await store.set_destination_state("dst_missing", DestinationState.ACTIVE)


async def test_activations_upsert_and_deactivate(store: Store) -> None:
    created = await store.create_destination(new_destination())
    first = ActivationRecord("aud-1", "Gold", "segmentation", 1001, "AEP - Gold")
    second = ActivationRecord(
        "aud-2", "Silver", "custom_upload", 1002, "AEP - Silver", created_by_service=True
    )
    mappings = [
        FieldMapping("person.email", "DedupeField"),
        FieldMapping("person.name.firstName", "firstName", "trim", {"max": "40"}),
    ]

    await store.upsert_activations(created.id, [first, second], mappings)
    await store.upsert_activations(created.id, [dataclasses.replace(first, list_name="renamed")])

    assert await store.activations(created.id) == [
        dataclasses.replace(first, list_name="renamed"),
        second,
    ]
    record = await store.get_destination(created.id, tenant="acme")
    assert record.mappings == tuple(mappings)
    assert record.version == 2  # a mapping change invalidates concurrent Configure reads
    assert await store.deactivate(created.id, ["aud-2", "aud-unknown"]) == 1
    assert await store.deactivate(created.id, ["aud-2"]) == 0
    assert [a.active for a in await store.activations(created.id)] == [True, False]
    assert [a.created_by_service for a in await store.activations(created.id)] == [False, True]
    assert [a.marketo_list_id for a in await store.activations(created.id)] == [1001, 1002]
    with pytest.raises(DestinationNotFound):
        await store.upsert_activations("dst_missing", [first])


async def test_activations_of_several_destinations_in_one_read(store: Store) -> None:
    gold = ActivationRecord("aud-1", "Gold", "segmentation", 1001, "AEP - Gold")
    silver = ActivationRecord("aud-2", "Silver", "custom_upload", 1002, "AEP - Silver")
    both = await store.create_destination(new_destination(name="both"))
    one = await store.create_destination(new_destination(name="one"))
    none = await store.create_destination(new_destination(name="none"))
    await store.upsert_activations(both.id, [silver, gold])
    await store.upsert_activations(one.id, [silver])
    await store.deactivate(one.id, ["aud-2"])

    found = await store.activations_of([one.id, none.id, both.id, "dst_missing"])

    assert found == {
        both.id: [gold, silver],
        one.id: [dataclasses.replace(silver, active=False)],
        none.id: [],
        "dst_missing": [],
    }
    assert found[both.id] == await store.activations(both.id)
    assert await store.activations_of([]) == {}


async def test_delete_cascades_everything(store: Store, backend: Backend) -> None:
    doomed = await store.create_destination(new_destination())
    kept = await store.create_destination(new_destination(name="kept"))
    for destination in (doomed, kept):
        await store.upsert_activations(
            destination.id, [ActivationRecord("aud-1", "Gold", "seg", 1, "Gold")]
        )
        await append(store, destination.id, "123-ABC-456", [update(1), update(2), update(3)])
        await store.raise_alert(destination.id, "skipped_rate", "5 % skipped")
    assert await unpack(store, "123-ABC-456") == 6
    entries = await store.claim_due("123-ABC-456", 10, START)
    retire = [e for e in entries if e.update.update_id == "u1"]
    await store.retire(
        retire,
        [activated(e, ActionType.UPDATED) for e in retire],
        [Watermark(e.destination_id, e.update.profile_id, e.update.event_time) for e in retire],
    )
    # Batches not unpacked yet belong to the destination too.
    for destination in (doomed, kept):
        await append(store, destination.id, "123-ABC-456", [update(4), update(5)])

    await store.delete_destination(doomed.id, tenant="acme")

    with pytest.raises(DestinationNotFound):
        await store.get_destination(doomed.id, tenant="acme")
    assert await store.activations(doomed.id) == []
    assert (await store.list_outcomes(doomed.id)).items == ()
    assert await store.open_alerts(doomed.id) == []
    assert await store.watermarks(doomed.id, ["p1"]) == {}
    assert backend.committed_batches(doomed.id) == []
    assert backend.committed_update_ids(doomed.id) == set()
    with pytest.raises(DestinationNotFound):
        await store.dataflow(doomed.id)
    # The other destination keeps all of its data, its inbox batch included.
    assert len(backend.committed_batches(kept.id)) == 1
    assert await unpack(store, "123-ABC-456") == 2
    remaining = await store.claim_due("123-ABC-456", 10, START)
    assert {e.destination_id for e in remaining} == {kept.id}
    assert [e.update.update_id for e in remaining] == ["u2", "u3", "u4", "u5"]
    assert len(await store.activations(kept.id)) == 1
    assert (await store.pending_stats(kept.id)).count == len(remaining)
    assert len(await store.open_alerts(kept.id)) == 1


async def test_a_state_reason_is_stored_and_survives_a_reopen(
    store: Store, backend: Backend, clock: FakeClock
) -> None:
    created = await store.create_destination(new_destination())
    assert created.state_reason == ""
    reason = "Marketo's lead schema has no field 'loyaltyTier', which the mapping uses"

    await store.set_destination_state(created.id, DestinationState.SCHEMA_PAUSED, reason=reason)
    await store.update_destination(dataclasses.replace(created, name="renamed"))
    await store.close()
    reopened = await backend.open(clock)
    try:
        record = await reopened.get_destination(created.id, tenant="acme")
        assert (record.state, record.state_reason) == (DestinationState.SCHEMA_PAUSED, reason)
        listed = (await reopened.list_destinations("acme", page_size=10)).items
        assert [d.state_reason for d in listed] == [reason]
        await reopened.set_destination_state(created.id, DestinationState.ACTIVE)
        record = await reopened.get_destination(created.id, tenant="acme")
        assert (record.state, record.state_reason) == (DestinationState.ACTIVE, "")
    finally:
        await reopened.close()
