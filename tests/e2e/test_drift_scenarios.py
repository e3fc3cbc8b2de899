"""Customer scenarios end to end, checked against Marketo's real state: after each one the
sandbox's leads and lists are what docs/PRODUCT's rules say they must be, and a dry-run
Reconcile finds nothing to repair. Events arrive late or out of order, consent comes and goes,
e-mails move between profiles, duplicates change winner, the destination is reconfigured,
profiles are forgotten and Marketo is edited by hand."""

from __future__ import annotations

from typing import Any

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from tests.e2e.test_desired_state import refusing
from tests.e2e.test_reconcile import eventually, lists_equal
from tests.e2e.test_resync_forget import by_hand
from tests.e2e.test_sync import EXITED, REALIZED, delivered, seed, setup, sync
from tests.e2e.test_truthful_outcomes import leads_by_email
from tests.harness import ENDPOINT, STANDARD_MAPPINGS, Service, sandbox_token, spec, update

T = 1_780_000_000.0
EXISTING = pb.MEMBERSHIP_STATUS_EXISTING


async def drift(service: Service, destination_id: str) -> dict[str, tuple[int, int]]:
    """A dry-run Reconcile: (missing, unexpected) of every list that differs from the desired
    state; empty when Marketo holds exactly what the destination wants."""
    answer = await service.stub.Reconcile(
        pb.ReconcileRequest(destination_id=destination_id, dry_run=True)
    )
    return {
        d.audience_id: (d.missing, d.unexpected) for d in answer.lists if d.missing or d.unexpected
    }


async def settled(service: Service, destination_id: str, lists: dict[int, set[int]]) -> None:
    """Marketo's lists are `lists` and a dry-run Reconcile finds nothing to repair."""
    assert await service.lists() == lists
    assert await drift(service, destination_id) == {}


async def ids(service: Service) -> dict[str, int]:
    """Lead id by e-mail (one lead per e-mail)."""
    return {email: lead["id"] for email, lead in leads_by_email(await service.leads()).items()}


async def fields_of(service: Service, lead_id: int) -> dict[str, Any]:
    (lead,) = [lead for lead in await service.leads() if lead["id"] == lead_id]
    fields: dict[str, Any] = lead["fields"]
    return fields


async def deliver(service: Service, destination_id: str, *updates: pb.ProfileUpdate) -> pb.Dataflow:
    await sync(service, destination_id, [list(updates)])
    return await delivered(service, destination_id)


async def ann_and_bob_in_a1(service: Service) -> tuple[str, dict[str, int], dict[str, int]]:
    """A destination where p1 (ann) and p2 (bob) are members of a1, delivered; returns its id,
    audience -> list id and e-mail -> lead id."""
    destination_id, lists = await setup(service)
    await deliver(service, destination_id, update("p1", "ann@x.io", time=T))
    await deliver(service, destination_id, update("p2", "bob@x.io", time=T))
    return destination_id, lists, await ids(service)


async def ann_in_a1_and_a2(service: Service) -> tuple[str, dict[str, int], int]:
    """A destination where p1 (ann) is a member of a1 and a2, delivered; returns its id,
    audience -> list id and ann's lead."""
    destination_id, lists = await setup(service, audiences=("a1", "a2"))
    await deliver(
        service,
        destination_id,
        update("p1", "ann@x.io", time=T, audiences={"a1": REALIZED, "a2": REALIZED}),
    )
    return destination_id, lists, (await ids(service))["ann@x.io"]


async def activate_a1_again(service: Service, destination_id: str) -> pb.ActivateResponse:
    """Activate a1 again under the name `setup` gave it."""
    return await service.stub.Activate(
        pb.ActivateRequest(
            destination_id=destination_id,
            audiences=[pb.Audience(id="a1", name=f"List {destination_id} a1")],
            mappings=STANDARD_MAPPINGS,
        )
    )


# -- 1. late segment events ------------------------------------------------------------------


async def test_an_exit_older_than_the_realized_membership_leaves_the_lead_in_the_list(
    service: Service,
) -> None:
    destination_id, lists = await setup(service)
    await deliver(service, destination_id, update("p1", "ann@x.io", time=T + 10))
    await deliver(
        service, destination_id, update("p1", "ann@x.io", time=T, audiences={"a1": EXITED})
    )
    lead = (await ids(service))["ann@x.io"]
    await settled(service, destination_id, {lists["a1"]: {lead}})


async def test_older_attributes_after_newer_ones_are_not_written(service: Service) -> None:
    destination_id, lists = await setup(service)
    await deliver(service, destination_id, update("p1", "ann@x.io", first="New", time=T + 10))
    await deliver(service, destination_id, update("p1", "ann@x.io", first="Old", time=T))
    lead = (await ids(service))["ann@x.io"]
    assert (await fields_of(service, lead))["firstName"] == "New"
    await settled(service, destination_id, {lists["a1"]: {lead}})


async def test_existing_then_an_older_exit_keeps_and_a_newer_exit_removes(
    service: Service,
) -> None:
    destination_id, lists = await setup(service, audiences=("a1", "a2"))
    await deliver(
        service,
        destination_id,
        update("p1", "ann@x.io", time=T + 10, audiences={"a1": EXISTING, "a2": EXISTING}),
    )
    lead = (await ids(service))["ann@x.io"]
    assert await service.lists() == {lists["a1"]: {lead}, lists["a2"]: {lead}}
    await deliver(
        service,
        destination_id,
        update("p1", "ann@x.io", time=T + 5, audiences={"a1": EXITED}),
        update("p1", "ann@x.io", time=T + 20, audiences={"a2": EXITED}),
    )
    await settled(service, destination_id, {lists["a1"]: {lead}, lists["a2"]: set()})
    # an "existing" older than the exit does not bring it back
    await deliver(
        service, destination_id, update("p1", "ann@x.io", time=T + 15, audiences={"a2": EXISTING})
    )
    await settled(service, destination_id, {lists["a1"]: {lead}, lists["a2"]: set()})


# -- 2. consent ------------------------------------------------------------------------------


async def test_consent_revoked_then_restored_brings_memberships_and_attributes_back(
    service: Service,
) -> None:
    destination_id, lists, lead = await ann_in_a1_and_a2(service)
    await deliver(
        service,
        destination_id,
        refusing(update("p1", "ann@x.io", first="Hidden", time=T + 10, audiences={}), "n"),
    )
    assert await service.lists() == {lists["a1"]: set(), lists["a2"]: set()}
    assert (await fields_of(service, lead))["firstName"] == "Ada"
    assert await drift(service, destination_id) == {}

    await deliver(
        service,
        destination_id,
        refusing(update("p1", "ann@x.io", first="Back", time=T + 20, audiences={}), "y"),
    )
    assert await service.lists() == {lists["a1"]: {lead}, lists["a2"]: {lead}}
    assert (await fields_of(service, lead))["firstName"] == "Back"
    assert await drift(service, destination_id) == {}


async def test_consent_revoked_in_the_same_batch_as_a_pending_add(service: Service) -> None:
    destination_id, lists = await setup(service)
    await deliver(
        service,
        destination_id,
        update("p1", "ann@x.io", time=T),
        refusing(update("p1", "ann@x.io", time=T + 10, audiences={}), "n"),
    )
    await settled(service, destination_id, {lists["a1"]: set()})


async def test_consent_revoked_while_an_add_waits_in_another_request(service: Service) -> None:
    destination_id, lists = await setup(service)
    await sync(
        service,
        destination_id,
        [
            [update("p1", "ann@x.io", time=T)],
            [refusing(update("p1", "ann@x.io", time=T + 10, audiences={}), "n")],
        ],
    )
    await delivered(service, destination_id)
    await settled(service, destination_id, {lists["a1"]: set()})


async def test_an_older_refusal_after_a_newer_consent_changes_nothing(service: Service) -> None:
    destination_id, lists = await setup(service)
    await deliver(service, destination_id, refusing(update("p1", "ann@x.io", time=T + 10), "y"))
    lead = (await ids(service))["ann@x.io"]
    await deliver(
        service,
        destination_id,
        refusing(update("p1", "ann@x.io", time=T, audiences={}), "n"),
    )
    await settled(service, destination_id, {lists["a1"]: {lead}})


# -- 3. the dedupe value moves -----------------------------------------------------------------


async def test_an_email_taken_by_another_profile_after_the_first_one_left_it(
    service: Service,
) -> None:
    destination_id, lists = await setup(service, audiences=("a1", "a2"))
    await deliver(service, destination_id, update("p1", "a@x.io", time=T))
    await deliver(service, destination_id, update("p1", "b@x.io", time=T + 10))
    await deliver(
        service,
        destination_id,
        update("p2", "a@x.io", first="Bea", time=T + 20, audiences={"a2": REALIZED}),
    )
    leads = await ids(service)
    a, b = leads["a@x.io"], leads["b@x.io"]
    assert await service.lists() == {lists["a1"]: {b}, lists["a2"]: {a}}
    assert (await fields_of(service, a))["firstName"] == "Bea"
    assert await drift(service, destination_id) == {}

    # p1 comes back to a@x.io: both profiles are that lead's now
    await deliver(service, destination_id, update("p1", "a@x.io", time=T + 30, audiences={}))
    await settled(service, destination_id, {lists["a1"]: {a}, lists["a2"]: {a}})
    # p2 leaves a2 and p1 stays in a1; then p1 leaves a1
    await deliver(
        service, destination_id, update("p2", "a@x.io", time=T + 40, audiences={"a2": EXITED})
    )
    assert await service.lists() == {lists["a1"]: {a}, lists["a2"]: set()}
    await deliver(
        service, destination_id, update("p1", "a@x.io", time=T + 50, audiences={"a1": EXITED})
    )
    await settled(service, destination_id, {lists["a1"]: set(), lists["a2"]: set()})


async def test_two_profiles_share_an_email_and_one_moves_away(service: Service) -> None:
    destination_id, lists = await setup(service)
    await deliver(service, destination_id, update("p1", "a@x.io", time=T))
    await deliver(service, destination_id, update("p2", "a@x.io", time=T + 1))
    a = (await ids(service))["a@x.io"]
    assert await service.lists() == {lists["a1"]: {a}}
    await deliver(service, destination_id, update("p1", "b@x.io", time=T + 10, audiences={}))
    leads = await ids(service)
    await settled(service, destination_id, {lists["a1"]: {a, leads["b@x.io"]}})
    await deliver(
        service, destination_id, update("p2", "a@x.io", time=T + 20, audiences={"a1": EXITED})
    )
    await settled(service, destination_id, {lists["a1"]: {leads["b@x.io"]}})


# -- 4. duplicates whose winner changes ----------------------------------------------------------


async def test_memberships_and_attributes_follow_a_new_duplicate_winner(service: Service) -> None:
    (old,) = await seed(
        service, {"email": "dup@x.io", "firstName": "Old", "updatedAt": "2020-01-01T00:00:00Z"}
    )
    destination_id, lists = await setup(service, audiences=("a1", "a2"))
    await deliver(
        service,
        destination_id,
        update("p1", "dup@x.io", first="Ann", time=T, audiences={"a1": REALIZED}),
    )
    assert await service.lists() == {lists["a1"]: {old}, lists["a2"]: set()}
    assert (await fields_of(service, old))["firstName"] == "Ann"

    # another integration creates a duplicate that is now the most recently updated lead
    (winner,) = await seed(
        service, {"email": "dup@x.io", "firstName": "Other", "updatedAt": "2099-01-01T00:00:00Z"}
    )
    await deliver(
        service,
        destination_id,
        update("p1", "dup@x.io", first="Anna", time=T + 10, audiences={"a2": REALIZED}),
    )
    assert (await fields_of(service, winner))["firstName"] == "Anna"
    assert (await fields_of(service, old))["firstName"] == "Ann", "the loser is not written"
    assert await service.lists() == {lists["a1"]: {winner}, lists["a2"]: {winner}}, "it left"
    assert await drift(service, destination_id) == {}

    await deliver(
        service,
        destination_id,
        update("p1", "dup@x.io", time=T + 20, audiences={"a1": EXITED, "a2": EXITED}),
    )
    await settled(service, destination_id, {lists["a1"]: set(), lists["a2"]: set()})


# -- 5. reconfiguration --------------------------------------------------------------------------


async def test_a_dropped_mapping_stops_writing_the_field_and_an_added_one_writes_it(
    service: Service,
) -> None:
    title = pb.FieldMapping(source="person.title", target="title")
    destination_id, lists = await setup(service, mappings=(*STANDARD_MAPPINGS, title))
    await deliver(service, destination_id, update("p1", "ann@x.io", time=T, title="CTO"))
    lead = (await ids(service))["ann@x.io"]
    assert (await fields_of(service, lead))["title"] == "CTO"

    await service.stub.Activate(
        pb.ActivateRequest(destination_id=destination_id, mappings=STANDARD_MAPPINGS)
    )
    await deliver(service, destination_id, update("p1", "ann@x.io", time=T + 10, title="CEO"))
    assert (await fields_of(service, lead))["title"] == "CTO", "an unmapped field is not written"

    await service.stub.Activate(
        pb.ActivateRequest(destination_id=destination_id, mappings=(*STANDARD_MAPPINGS, title))
    )
    await deliver(service, destination_id, update("p1", "ann@x.io", time=T + 20, title="CEO"))
    assert (await fields_of(service, lead))["title"] == "CEO", "the same attributes, a new field"
    await settled(service, destination_id, {lists["a1"]: {lead}})


async def test_update_only_then_create_new_creates_the_member_at_its_next_update(
    service: Service,
) -> None:
    destination_id, lists = await setup(
        service, person_action=pb.PERSON_ACTION_UPDATE_EXISTING_ONLY
    )
    flow = await deliver(service, destination_id, update("p1", "ann@x.io", time=T))
    assert dict(flow.excluded) == {"no_matching_lead": 1}
    assert await service.leads() == []
    assert await drift(service, destination_id) == {}, "no lead matched: no list can hold it"

    await service.stub.Configure(pb.ConfigureRequest(destination_id=destination_id, spec=spec()))
    # an excluded update keeps no attributes to resync from: Resync has nothing to write
    resync = await service.stub.Resync(pb.ResyncRequest(destination_id=destination_id))
    await delivered(service, destination_id)
    assert (resync.profiles, await service.leads()) == (0, [])
    assert await drift(service, destination_id) == {}
    # the profile's next update creates the lead and adds it to the list it is a member of
    await deliver(service, destination_id, update("p1", "ann@x.io", time=T + 10, audiences={}))
    lead = (await ids(service))["ann@x.io"]
    await settled(service, destination_id, {lists["a1"]: {lead}})


async def test_an_audience_only_member_without_a_lead_joins_when_its_lead_appears(
    service: Service,
) -> None:
    destination_id, lists = await setup(
        service, sync_type=pb.SYNC_TYPE_AUDIENCE_ONLY, person_action=0
    )
    flow = await deliver(service, destination_id, update("p1", "ann@x.io", time=T))
    assert dict(flow.excluded) == {"no_matching_lead": 1}
    assert await drift(service, destination_id) == {}, "no lead matched: no list can hold it"
    # another integration creates the lead; the member's next event adds it
    (lead,) = await seed(service, {"email": "ann@x.io"})
    await deliver(
        service, destination_id, update("p1", "ann@x.io", time=T + 10, audiences={"a1": EXISTING})
    )
    await settled(service, destination_id, {lists["a1"]: {lead}})


async def test_deactivate_then_activate_the_same_audience_keeps_the_list_true(
    service: Service,
) -> None:
    destination_id, lists, leads = await ann_and_bob_in_a1(service)
    await service.stub.Deactivate(
        pb.DeactivateRequest(destination_id=destination_id, audience_ids=["a1"])
    )
    again = await activate_a1_again(service, destination_id)
    assert [a.marketo_list_id for a in again.audiences] == [lists["a1"]]
    await delivered(service, destination_id)
    await settled(service, destination_id, {lists["a1"]: {leads["ann@x.io"], leads["bob@x.io"]}})
    await deliver(
        service, destination_id, update("p1", "ann@x.io", time=T + 10, audiences={"a1": EXITED})
    )
    await settled(service, destination_id, {lists["a1"]: {leads["bob@x.io"]}})


async def test_deactivate_deleting_the_list_then_activate_again_fills_the_new_list(
    service: Service,
) -> None:
    destination_id, _ = await setup(service)
    await deliver(service, destination_id, update("p1", "ann@x.io", time=T))
    lead = (await ids(service))["ann@x.io"]
    await service.stub.Deactivate(
        pb.DeactivateRequest(destination_id=destination_id, audience_ids=["a1"], delete_lists=True)
    )
    assert await service.lists() == {}
    again = await service.stub.Activate(
        pb.ActivateRequest(
            destination_id=destination_id,
            audiences=[pb.Audience(id="a1", name="Again a1")],
            mappings=STANDARD_MAPPINGS,
        )
    )
    await delivered(service, destination_id)
    await settled(service, destination_id, {again.audiences[0].marketo_list_id: {lead}})


async def test_activating_an_audience_with_another_list_moves_its_members(
    service: Service,
) -> None:
    destination_id, lists = await setup(service)
    await deliver(service, destination_id, update("p1", "ann@x.io", time=T))
    lead = (await ids(service))["ann@x.io"]
    response = await service.http.post(
        f"{ENDPOINT}/rest/asset/v1/staticLists.json",
        data={"name": "Linked", "folder": '{"id":11,"type":"Folder"}'},
        headers={"Authorization": f"Bearer {await sandbox_token(service)}"},
    )
    (created,) = response.json()["result"]
    linked = created["id"]
    answer = await service.stub.Activate(
        pb.ActivateRequest(
            destination_id=destination_id,
            audiences=[pb.Audience(id="a1", marketo_list_id=linked)],
            mappings=STANDARD_MAPPINGS,
        )
    )
    await delivered(service, destination_id)
    assert [a.marketo_list_id for a in answer.audiences] == [linked]
    # the members join the audience's new list; the old one is kept as it is, as Deactivate
    # keeps a list: the service manages it no more
    await settled(service, destination_id, {lists["a1"]: {lead}, linked: {lead}})
    await deliver(
        service, destination_id, update("p1", "ann@x.io", time=T + 10, audiences={"a1": EXITED})
    )
    await settled(service, destination_id, {lists["a1"]: {lead}, linked: set()})


async def test_a_partition_change_puts_new_leads_there_and_still_matches_old_ones(
    service: Service,
) -> None:
    destination_id, lists = await setup(service)
    await deliver(service, destination_id, update("p1", "ann@x.io", time=T))
    await service.stub.Configure(
        pb.ConfigureRequest(destination_id=destination_id, spec=spec(partition="Partners"))
    )
    await deliver(
        service,
        destination_id,
        update("p1", "ann@x.io", first="Ann", time=T + 10),
        update("p2", "bob@x.io", time=T + 10),
    )
    leads = {lead["fields"]["email"]: lead for lead in await service.leads()}
    assert sorted(leads) == ["ann@x.io", "bob@x.io"]
    assert leads["ann@x.io"]["partition"] == "Default"
    assert leads["ann@x.io"]["fields"]["firstName"] == "Ann"
    assert leads["bob@x.io"]["partition"] == "Partners"
    await settled(service, destination_id, {lists["a1"]: {lead["id"] for lead in leads.values()}})


# -- 6. forget and resync ---------------------------------------------------------------------


async def test_a_late_event_after_forget_writes_nothing(service: Service) -> None:
    destination_id, lists = await setup(service)
    await deliver(service, destination_id, update("p1", "ann@x.io", time=T + 10))
    await service.stub.ForgetProfile(
        pb.ForgetProfileRequest(destination_id=destination_id, profile_id="p1", delete_lead=True)
    )
    flow = await deliver(service, destination_id, update("p1", "ann@x.io", time=T))
    assert await service.leads() == []
    assert await service.lists() == {lists["a1"]: set()}
    assert dict(flow.excluded) == {"forgotten": 1}
    assert await drift(service, destination_id) == {}


async def test_resync_after_a_lead_was_deleted_by_hand_creates_and_adds_it_again(
    service: Service,
) -> None:
    destination_id, lists = await setup(service)
    await deliver(service, destination_id, update("p1", "ann@x.io", time=T, first="Ann"))
    lead = (await ids(service))["ann@x.io"]
    await by_hand(service, "POST", "leads/delete.json", {"input": [{"id": lead}]})
    assert await service.leads() == []
    await service.stub.Resync(pb.ResyncRequest(destination_id=destination_id))
    await delivered(service, destination_id)
    again = (await ids(service))["ann@x.io"]
    assert (await fields_of(service, again))["firstName"] == "Ann"
    await settled(service, destination_id, {lists["a1"]: {again}})


async def test_resync_after_a_hand_edit_of_the_dedupe_value_finds_the_member_again(
    service: Service,
) -> None:
    destination_id, lists = await setup(service)
    await deliver(service, destination_id, update("p1", "ann@x.io", time=T))
    lead = (await ids(service))["ann@x.io"]
    await by_hand(
        service,
        "POST",
        "leads.json",
        {"action": "updateOnly", "lookupField": "id", "input": [{"id": lead, "email": "x@x.io"}]},
    )
    await service.stub.Resync(pb.ResyncRequest(destination_id=destination_id))
    await delivered(service, destination_id)
    leads = await ids(service)
    assert "ann@x.io" in leads, "the profile's e-mail is in Marketo again"
    await settled(service, destination_id, {lists["a1"]: {leads["ann@x.io"]}})


async def test_a_late_event_with_the_old_email_follows_the_profile_to_its_new_lead(
    service: Service,
) -> None:
    destination_id, lists = await setup(service, audiences=("a1", "a2"))
    await deliver(service, destination_id, update("p1", "a@x.io", time=T))
    await deliver(service, destination_id, update("p1", "b@x.io", time=T + 10, audiences={}))
    leads = await ids(service)
    a, b = leads["a@x.io"], leads["b@x.io"]
    await settled(service, destination_id, {lists["a1"]: {b}, lists["a2"]: set()})
    # segment events evaluated before the e-mail changed arrive now, with the old e-mail
    await deliver(
        service,
        destination_id,
        update("p1", "a@x.io", first="Late", time=T + 5, audiences={"a2": REALIZED}),
    )
    await settled(service, destination_id, {lists["a1"]: {b}, lists["a2"]: {b}})
    assert (await fields_of(service, a))["firstName"] == "Ada", "the old lead is not written"
    await deliver(
        service,
        destination_id,
        update("p1", "a@x.io", time=T + 6, audiences={"a1": EXITED, "a2": EXITED}),
    )
    await settled(service, destination_id, {lists["a1"]: set(), lists["a2"]: set()})
    assert sorted(await ids(service)) == ["a@x.io", "b@x.io"]


async def test_a_late_event_of_a_profile_whose_email_another_profile_took(
    service: Service,
) -> None:
    destination_id, lists = await setup(service, audiences=("a1", "a2"))
    await deliver(service, destination_id, update("p1", "a@x.io", time=T))
    await deliver(service, destination_id, update("p1", "b@x.io", time=T + 10, audiences={}))
    await deliver(service, destination_id, update("p2", "a@x.io", first="Bea", time=T + 20))
    leads = await ids(service)
    a, b = leads["a@x.io"], leads["b@x.io"]
    await settled(service, destination_id, {lists["a1"]: {a, b}, lists["a2"]: set()})
    # p1's late entry to a2 still carries a@x.io, now p2's lead: p1 is at b@x.io
    await deliver(
        service, destination_id, update("p1", "a@x.io", time=T + 5, audiences={"a2": REALIZED})
    )
    await settled(service, destination_id, {lists["a1"]: {a, b}, lists["a2"]: {b}})
    assert (await fields_of(service, a))["firstName"] == "Bea"


async def test_a_consent_refusal_of_one_profile_keeps_the_shared_lead_for_the_other(
    service: Service,
) -> None:
    destination_id, lists = await setup(service)
    await deliver(service, destination_id, update("p1", "a@x.io", time=T))
    await deliver(service, destination_id, update("p2", "a@x.io", time=T + 1))
    a = (await ids(service))["a@x.io"]
    await deliver(
        service, destination_id, refusing(update("p2", "a@x.io", time=T + 10, audiences={}), "n")
    )
    await settled(service, destination_id, {lists["a1"]: {a}})
    await deliver(
        service, destination_id, update("p1", "a@x.io", time=T + 20, audiences={"a1": EXITED})
    )
    await settled(service, destination_id, {lists["a1"]: set()})


async def test_a_switch_to_audience_only_stops_attribute_writes_and_keeps_the_lists(
    service: Service,
) -> None:
    destination_id, lists = await setup(service)
    await deliver(service, destination_id, update("p1", "ann@x.io", time=T))
    lead = (await ids(service))["ann@x.io"]
    await service.stub.Configure(
        pb.ConfigureRequest(
            destination_id=destination_id,
            spec=spec(sync_type=pb.SYNC_TYPE_AUDIENCE_ONLY, person_action=0),
        )
    )
    await deliver(
        service,
        destination_id,
        update("p1", "ann@x.io", first="Changed", time=T + 10, audiences={"a1": EXISTING}),
        update("p2", "bob@x.io", time=T + 10),
    )
    assert (await fields_of(service, lead))["firstName"] == "Ada"
    assert sorted(await ids(service)) == ["ann@x.io"], "no lead created"
    await settled(service, destination_id, {lists["a1"]: {lead}})


async def test_exits_while_profile_only_leave_the_lists_once_they_are_kept_again(
    service: Service,
) -> None:
    destination_id, lists, leads = await ann_and_bob_in_a1(service)
    await service.stub.Configure(
        pb.ConfigureRequest(
            destination_id=destination_id, spec=spec(sync_type=pb.SYNC_TYPE_PROFILE_ONLY)
        )
    )
    await deliver(
        service, destination_id, update("p1", "ann@x.io", time=T + 10, audiences={"a1": EXITED})
    )
    await deliver(service, destination_id, update("p3", "cy@x.io", time=T + 10))
    await service.stub.Configure(pb.ConfigureRequest(destination_id=destination_id, spec=spec()))
    await service.stub.Activate(
        pb.ActivateRequest(destination_id=destination_id, mappings=STANDARD_MAPPINGS)
    )
    await delivered(service, destination_id)
    leads = await ids(service)
    wanted = {lists["a1"]: {leads["bob@x.io"], leads["cy@x.io"]}}
    # the lists are reconciled in the background once the destination keeps them again
    await eventually(lambda: lists_equal(service, lists["a1"], wanted[lists["a1"]]))
    await settled(service, destination_id, wanted)


async def test_an_older_consent_after_a_refusal_keeps_the_profile_out(service: Service) -> None:
    destination_id, lists = await setup(service)
    await deliver(service, destination_id, update("p1", "ann@x.io", time=T))
    await deliver(
        service, destination_id, refusing(update("p1", "ann@x.io", time=T + 10, audiences={}), "n")
    )
    await deliver(
        service, destination_id, refusing(update("p1", "ann@x.io", time=T + 5, audiences={}), "y")
    )
    await settled(service, destination_id, {lists["a1"]: set()})


async def test_a_member_of_a_deactivated_audience_who_left_the_other_is_back_at_reactivation(
    service: Service,
) -> None:
    destination_id, lists, lead = await ann_in_a1_and_a2(service)
    await service.stub.Deactivate(
        pb.DeactivateRequest(destination_id=destination_id, audience_ids=["a1"])
    )
    await deliver(
        service, destination_id, update("p1", "ann@x.io", time=T + 10, audiences={"a2": EXITED})
    )
    assert await service.lists() == {lists["a1"]: {lead}, lists["a2"]: set()}
    await activate_a1_again(service, destination_id)
    await delivered(service, destination_id)
    await settled(service, destination_id, {lists["a1"]: {lead}, lists["a2"]: set()})


async def test_forgetting_with_delete_a_profile_that_shares_its_lead_leaves_resyncable_drift(
    service: Service,
) -> None:
    """Pins the documented rule: delete_lead deletes the lead the profile resolves to, even one
    another profile is a member through. That profile's membership is then missing (Reconcile
    reports it and has no lead to add); a Resync of it creates the lead again."""
    destination_id, lists = await setup(service)
    await deliver(service, destination_id, update("p1", "a@x.io", time=T))
    await deliver(service, destination_id, update("p2", "a@x.io", first="Bea", time=T + 1))
    a = (await ids(service))["a@x.io"]
    answer = await service.stub.ForgetProfile(
        pb.ForgetProfileRequest(destination_id=destination_id, profile_id="p1", delete_lead=True)
    )
    assert (list(answer.lead_ids), answer.lead_deleted) == ([a], True)
    assert (await service.leads(), await service.lists()) == ([], {lists["a1"]: set()})
    assert await drift(service, destination_id) == {"a1": (1, 0)}

    await service.stub.Resync(pb.ResyncRequest(destination_id=destination_id, profile_ids=["p2"]))
    await delivered(service, destination_id)
    again = (await ids(service))["a@x.io"]
    assert (await fields_of(service, again))["firstName"] == "Bea"
    await settled(service, destination_id, {lists["a1"]: {again}})


async def test_resync_of_a_refused_profile_adds_nothing(service: Service) -> None:
    destination_id, lists = await setup(service)
    await deliver(service, destination_id, update("p1", "ann@x.io", time=T))
    await deliver(
        service, destination_id, refusing(update("p1", "ann@x.io", time=T + 10, audiences={}), "n")
    )
    await service.stub.Resync(pb.ResyncRequest(destination_id=destination_id))
    await delivered(service, destination_id)
    await settled(service, destination_id, {lists["a1"]: set()})


async def test_an_email_change_to_a_lead_of_another_partition_moves_the_membership_there(
    service: Service,
) -> None:
    (partner,) = await seed(service, {"email": "b@x.io", "partition": "Partners"})
    destination_id, lists = await setup(service)
    await deliver(service, destination_id, update("p1", "a@x.io", time=T))
    await deliver(service, destination_id, update("p1", "b@x.io", first="Bo", time=T + 10))
    assert (await fields_of(service, partner))["firstName"] == "Bo"
    assert len(await service.leads()) == 2
    await settled(service, destination_id, {lists["a1"]: {partner}})


async def test_an_unchanged_update_keeps_writing_to_the_bound_lead_after_a_new_duplicate(
    service: Service,
) -> None:
    """Pins the documented cost rule (docs/delivery.md): nothing new to write, no look-up, so a
    duplicate that became the most recent is only found by an update with new attributes."""
    destination_id, lists = await setup(service, audiences=("a1", "a2"))
    await deliver(service, destination_id, update("p1", "dup@x.io", time=T))
    bound = (await ids(service))["dup@x.io"]
    (newer,) = await seed(
        service, {"email": "dup@x.io", "firstName": "Other", "updatedAt": "2099-01-01T00:00:00Z"}
    )
    await deliver(
        service,
        destination_id,
        update("p1", "dup@x.io", time=T + 10, audiences={"a2": REALIZED}),
    )
    await settled(service, destination_id, {lists["a1"]: {bound}, lists["a2"]: {bound}})
    await deliver(service, destination_id, update("p1", "dup@x.io", first="New", time=T + 20))
    assert (await fields_of(service, newer))["firstName"] == "New"
    await settled(service, destination_id, {lists["a1"]: {newer}, lists["a2"]: {newer}})
