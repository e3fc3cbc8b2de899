"""Marketo edited by hand while the service keeps it in sync: each edit a Marketo user makes
(merge or delete leads, take a lead out of a list or put one in, rename a list, change a mapped
value or a lead's partition) is followed by the profile's next update through Sync and by a
Reconcile (a dry run reports, a real run repairs), and Marketo's state in the sandbox and what a
caller sees are checked afterwards. A list deleted by hand, a field deleted from the schema and
attributes restored by Resync are covered in test_reconcile.py, test_schema_pause.py and
test_resync_forget.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sandbox import SandboxSettings
from service._proto.marketo_destination.v1 import destination_pb2 as pb
from tests.e2e import test_schema_pause as schema_pause
from tests.e2e.test_reconcile import (
    T,
    add_by_hand,
    members_synced,
    reconcile,
    remove_by_hand,
    rest,
)
from tests.e2e.test_sync import EXITED, REALIZED, delivered, seed, setup, sync
from tests.harness import Service, running_service, update

LATER = T + 60


async def merge(service: Service, winner: int, loser: int) -> None:
    """Merge Leads, as a marketer merges duplicates: the loser ceases to exist."""
    await rest(service, "POST", f"/rest/v1/leads/{winner}/merge.json", params={"leadIds": loser})


async def delete_by_hand(service: Service, lead_id: int) -> None:
    """Delete Leads, as a marketer deletes a lead: it leaves every list."""
    await rest(service, "POST", "/rest/v1/leads/delete.json", json={"input": [{"id": lead_id}]})


async def latest_outcome(
    service: Service, destination_id: str, profile_id: str
) -> pb.ProfileOutcome:
    answer = await service.stub.ListProfileOutcomes(
        pb.ListProfileOutcomesRequest(destination_id=destination_id, profile_id=profile_id)
    )
    return max(answer.outcomes, key=lambda o: o.event_time.ToSeconds())


def actions(outcome: pb.ProfileOutcome) -> list[tuple[int, str]]:
    return sorted((a.type, a.audience_id) for a in outcome.actions)


async def lead(service: Service, lead_id: int) -> dict[str, Any]:
    (found,) = [lead for lead in await service.leads() if lead["id"] == lead_id]
    return found


async def counted(service: Service) -> int:
    """Marketo calls the sandbox counted so far (token calls aside)."""
    count: int = (await service.control("GET", "calls"))["counted"]
    return count


async def next_update(
    service: Service,
    destination_id: str,
    status: int = REALIZED,
    *,
    first: str = "New",
    time: float = LATER,
    profile: int = 0,
) -> int:
    """The next update through Sync of profile p<profile> (m<profile>@x.io, audience a1),
    delivered without any failure; returns the Marketo calls its delivery cost."""
    before = await counted(service)
    person = update(
        f"p{profile}", f"m{profile}@x.io", first=first, time=time, audiences={"a1": status}
    )
    await sync(service, destination_id, [[person]])
    flow = await delivered(service, destination_id)
    assert dict(flow.failed) == {}
    return await counted(service) - before


async def assert_clean(service: Service, destination_id: str, list_id: int) -> None:
    """A dry run finds no drift in the list."""
    assert await reconcile(service, destination_id, dry_run=True) == [
        ("a1", list_id, 0, 0, 0, 0, False)
    ]


# -- merged leads ---------------------------------------------------------------------------


async def merged_away(service: Service) -> tuple[str, int, dict[str, int], int]:
    """Two members synced, then p0's lead merged into a duplicate (same e-mail) seeded by hand:
    Marketo moved the membership to the winner. Returns destination, list, leads, winner."""
    destination_id, list_id, leads = await members_synced(service, 2)
    (winner,) = await seed(service, {"email": "m0@x.io", "firstName": "Dup"})
    await merge(service, winner, leads["m0@x.io"])
    assert (await service.lists())[list_id] == {winner, leads["m1@x.io"]}
    return destination_id, list_id, leads, winner


async def test_an_update_after_a_merge_writes_the_winner_and_keeps_it_in_the_list(
    service: Service,
) -> None:
    destination_id, list_id, leads, winner = await merged_away(service)

    spent = await next_update(service, destination_id)

    assert (await lead(service, winner))["fields"]["firstName"] == "New"
    assert (await service.lists())[list_id] == {winner, leads["m1@x.io"]}
    outcome = await latest_outcome(service, destination_id, "p0")
    assert (outcome.kind, outcome.lead_id) == (pb.OUTCOME_KIND_ACTIVATED, winner)
    assert spent == 4, "look-up, update, add the winner, loser 1004"
    await assert_clean(service, destination_id, list_id)


async def test_an_exit_after_a_merge_removes_the_winner_from_the_list(service: Service) -> None:
    destination_id, list_id, leads, winner = await merged_away(service)

    # the same attributes: nothing to write but the exit
    spent = await next_update(service, destination_id, EXITED, first="Ada")

    assert (await service.lists())[list_id] == {leads["m1@x.io"]}, "the winner holds p0's place"
    outcome = await latest_outcome(service, destination_id, "p0")
    assert (outcome.kind, outcome.lead_id) == (pb.OUTCOME_KIND_ACTIVATED, winner)
    assert actions(outcome) == [(pb.ACTION_TYPE_REMOVED, "a1")]
    assert spent == 3, "loser 1004, look-up, remove the winner"
    await assert_clean(service, destination_id, list_id)


async def test_an_exit_with_new_attributes_after_a_merge_removes_the_winner_it_looked_up(
    service: Service,
) -> None:
    """p0 stays in a2 and leaves a1 with new attributes: the look-up finds the winner, the
    loser's removal from a1 answers 1004, and the winner, holding p0's place, is removed."""
    destination_id, lists = await setup(service, ("a1", "a2"))
    both = {"a1": REALIZED, "a2": REALIZED}
    await sync(service, destination_id, [[update("p0", "m0@x.io", time=T, audiences=both)]])
    await delivered(service, destination_id)
    (loser,) = [x["id"] for x in await service.leads()]
    (winner,) = await seed(service, {"email": "m0@x.io", "firstName": "Dup"})
    await merge(service, winner, loser)
    assert await service.lists() == {lists["a1"]: {winner}, lists["a2"]: {winner}}

    await sync(
        service,
        destination_id,
        [
            [
                update(
                    "p0",
                    "m0@x.io",
                    first="New",
                    time=LATER,
                    audiences={"a1": EXITED, "a2": REALIZED},
                )
            ]
        ],
    )
    flow = await delivered(service, destination_id)

    assert dict(flow.failed) == {}
    assert await service.lists() == {lists["a1"]: set(), lists["a2"]: {winner}}
    assert (await lead(service, winner))["fields"]["firstName"] == "New"
    outcome = await latest_outcome(service, destination_id, "p0")
    assert (pb.ACTION_TYPE_REMOVED, "a1") in actions(outcome)


async def test_a_reconcile_after_a_merge_records_the_winner_for_the_next_exit(
    service: Service,
) -> None:
    destination_id, list_id, leads, winner = await merged_away(service)
    assert await reconcile(service, destination_id, dry_run=True) == [
        ("a1", list_id, 0, 0, 0, 0, False)
    ]
    assert await reconcile(service, destination_id) == [("a1", list_id, 0, 0, 0, 0, False)]
    state = await service.app.store.desired_state(destination_id, ["p0"])
    assert (state.profiles["p0"].lead_id, state.holders[("p0", "a1")]) == (winner, winner)

    spent = await next_update(service, destination_id, EXITED, first="Ada")

    assert (await service.lists())[list_id] == {leads["m1@x.io"]}
    assert actions(await latest_outcome(service, destination_id, "p0")) == [
        (pb.ACTION_TYPE_REMOVED, "a1")
    ]
    assert spent == 1, "the winner was known: one removal"


async def test_a_merge_into_a_lead_of_another_e_mail_creates_the_profile_again(
    service: Service,
) -> None:
    """The winner keeps its own e-mail, so p0's e-mail finds no one any more: its next update
    creates a lead under it; the winner, which no profile wants, leaves the list at Reconcile."""
    destination_id, list_id, leads = await members_synced(service, 2)
    (winner,) = await seed(service, {"email": "other@x.io"})
    await merge(service, winner, leads["m0@x.io"])

    await next_update(service, destination_id)
    created = {x["fields"]["email"]: x["id"] for x in await service.leads()}["m0@x.io"]
    assert created not in leads.values()
    assert (await service.lists())[list_id] == {winner, created, leads["m1@x.io"]}
    assert await reconcile(service, destination_id, dry_run=True) == [
        ("a1", list_id, 0, 1, 0, 0, False)
    ]
    assert await reconcile(service, destination_id) == [("a1", list_id, 0, 1, 0, 1, False)]
    assert (await service.lists())[list_id] == {created, leads["m1@x.io"]}


# -- deleted leads ----------------------------------------------------------------------------


async def test_after_leads_were_deleted_an_update_creates_again_and_an_exit_is_not_in_list(
    service: Service,
) -> None:
    destination_id, list_id, leads = await members_synced(service, 3)
    await delete_by_hand(service, leads["m0@x.io"])
    await delete_by_hand(service, leads["m1@x.io"])
    assert await reconcile(service, destination_id, dry_run=True) == [
        ("a1", list_id, 2, 0, 0, 0, False)
    ]

    created = await next_update(service, destination_id)
    exited = await next_update(service, destination_id, EXITED, first="Ada", profile=1)

    again = {x["fields"]["email"]: x["id"] for x in await service.leads()}["m0@x.io"]
    assert again not in leads.values()
    assert (await service.lists())[list_id] == {again, leads["m2@x.io"]}
    outcome = await latest_outcome(service, destination_id, "p0")
    assert (outcome.kind, outcome.lead_id) == (pb.OUTCOME_KIND_ACTIVATED, again)
    # the deleted holder's removal is tried once: Marketo answers 1004, shown as NOT_IN_LIST
    assert actions(outcome) == [
        (pb.ACTION_TYPE_CREATED, ""),
        (pb.ACTION_TYPE_ADDED, "a1"),
        (pb.ACTION_TYPE_NOT_IN_LIST, "a1"),
    ]
    assert created == 4, "look-up, create, add, removal answered 1004"
    exit_outcome = await latest_outcome(service, destination_id, "p1")
    assert actions(exit_outcome) == [(pb.ACTION_TYPE_NOT_IN_LIST, "a1")]
    assert exited == 2, "removal answered 1004, then a look-up (a merge?) finds none"
    await assert_clean(service, destination_id, list_id)


# -- list membership edited by hand ---------------------------------------------------------


async def test_a_member_removed_by_hand_is_added_back_by_reconcile_and_exits_cleanly(
    service: Service,
) -> None:
    destination_id, list_id, leads = await members_synced(service, 2)
    await remove_by_hand(service, list_id, [leads["m0@x.io"]])

    # The service believes the lead is in the list: an update changing nothing makes no call
    # (PRODUCT.md: "an update that changes nothing in Marketo costs no call"); Reconcile repairs.
    await next_update(service, destination_id, first="Ada")
    assert actions(await latest_outcome(service, destination_id, "p0")) == []
    assert (await service.lists())[list_id] == {leads["m1@x.io"]}

    assert await reconcile(service, destination_id, dry_run=True) == [
        ("a1", list_id, 1, 0, 0, 0, False)
    ]
    assert (await service.lists())[list_id] == {leads["m1@x.io"]}
    assert await reconcile(service, destination_id) == [("a1", list_id, 1, 0, 1, 0, False)]
    assert (await service.lists())[list_id] == set(leads.values())

    await next_update(service, destination_id, EXITED, first="Ada", time=LATER + 1)
    assert (await service.lists())[list_id] == {leads["m1@x.io"]}
    assert actions(await latest_outcome(service, destination_id, "p0")) == [
        (pb.ACTION_TYPE_REMOVED, "a1")
    ]


async def test_a_lead_added_by_hand_to_a_list_the_service_created_is_removed_by_reconcile(
    service: Service,
) -> None:
    """docs/delivery.md, "Reconciliation": a list member no desired membership holds is
    unexpected and removed from a list the service created (a linked list keeps it)."""
    destination_id, list_id, leads = await members_synced(service, 2)
    (foreign,) = await seed(service, {"email": "f@x.io"})
    await add_by_hand(service, list_id, [foreign])

    # live delivery of the audience's members leaves the foreign lead alone
    await next_update(service, destination_id)
    assert (await service.lists())[list_id] == {*leads.values(), foreign}

    assert await reconcile(service, destination_id, dry_run=True) == [
        ("a1", list_id, 0, 1, 0, 0, False)
    ]
    assert await reconcile(service, destination_id) == [("a1", list_id, 0, 1, 0, 1, False)]
    assert (await service.lists())[list_id] == set(leads.values())


async def test_a_list_renamed_by_hand_keeps_being_delivered_to_by_id(service: Service) -> None:
    destination_id, list_id, leads = await members_synced(service, 1)
    await rest(
        service, "POST", f"/rest/asset/v1/staticList/{list_id}.json", data={"name": "Renamed"}
    )

    await sync(
        service, destination_id, [[update("p9", "m9@x.io", time=LATER, audiences={"a1": REALIZED})]]
    )
    await delivered(service, destination_id)
    dump = (await service.control("GET", "lists"))["lists"]
    assert [(x["id"], x["name"]) for x in dump] == [(list_id, "Renamed")], "not created again"
    (m9,) = [x["id"] for x in await service.leads() if x["fields"]["email"] == "m9@x.io"]
    assert (await service.lists())[list_id] == {leads["m0@x.io"], m9}
    await assert_clean(service, destination_id, list_id)
    assert await reconcile(service, destination_id) == [("a1", list_id, 0, 0, 0, 0, False)]


# -- lead fields edited by hand -------------------------------------------------------------


async def test_a_value_and_the_partition_changed_by_hand_next_changed_update(
    service: Service,
) -> None:
    """A mapped value changed by hand is written again by the profile's next update whose
    attributes changed (an unchanged one costs no call: Resync restores such drift); the lead
    keeps the partition it was moved to (updates go by id and carry no partition)."""
    destination_id, list_id, leads = await members_synced(service, 1)
    lead_id = leads["m0@x.io"]
    edit = {
        "action": "updateOnly",
        "lookupField": "id",
        "input": [{"id": lead_id, "lastName": "X"}],
    }
    await rest(service, "POST", "/rest/v1/leads.json", json=edit)
    move = {"input": [{"id": lead_id, "partitionName": "Partners"}]}
    await rest(service, "POST", "/rest/v1/leads/partitions.json", json=move)

    await next_update(service, destination_id)

    (only,) = await service.leads()
    fields = only["fields"]
    assert (only["id"], only["partition"]) == (lead_id, "Partners")
    assert (fields["firstName"], fields["lastName"]) == ("New", "Lovelace")
    assert (await service.lists())[list_id] == {lead_id}
    await assert_clean(service, destination_id, list_id)


async def test_a_mapped_field_deleted_by_hand_pauses_delivery_while_reconcile_keeps_lists(
    tmp_path: Path,
) -> None:
    """The next update meets the deleted field: the destination is SCHEMA_PAUSED with the field
    named and its update kept (test_schema_pause.py); Reconcile still repairs its lists, and
    the field restored, the kept update is delivered."""
    rejecting = SandboxSettings(unknown_field_rejects_request=True)
    async with running_service(
        tmp_path, sandbox_settings=rejecting, schema_recheck_seconds=0.2
    ) as service:
        destination_id = await schema_pause.activate(service)
        ((list_id, members),) = (await service.lists()).items()
        await service.control("DELETE", f"fields/{schema_pause.FIELD}")
        await remove_by_hand(service, list_id, list(members))

        changed = update(
            "w", "w@example.com", tier="silver", time=LATER, audiences={"a1": REALIZED}
        )
        await sync(service, destination_id, [[changed]])
        await schema_pause.paused(service, destination_id)
        flow = await schema_pause.dataflow(service, destination_id)
        assert (flow.pending, dict(flow.failed)) == (1, {})
        assert schema_pause.FIELD in flow.state_reason

        assert await reconcile(service, destination_id, dry_run=True) == [
            ("a1", list_id, 1, 0, 0, 0, False)
        ]
        assert await reconcile(service, destination_id) == [("a1", list_id, 1, 0, 1, 0, False)]
        assert (await service.lists())[list_id] == members

        await service.control(
            "POST", "fields", {"fields": [{"name": schema_pause.FIELD, "dataType": "string"}]}
        )
        flow = await schema_pause.delivered(service, destination_id)
        assert dict(flow.failed) == {}
        (only,) = await service.leads()
        assert only["fields"][schema_pause.FIELD] == "silver"
        assert (await service.lists())[list_id] == members
