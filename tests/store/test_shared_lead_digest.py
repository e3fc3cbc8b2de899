"""Profiles sharing a lead (one dedupe value, several profiles): a retire that stores the digest
of the attributes written to a lead clears the digest of the destination's other profiles bound
to it that last applied something else, so that their next update writes again."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from service.domain import ExclusionCode, Outcome, OutcomeKind, ProfileState
from service.store.base import DestinationRecord, ProfileStateRow
from service.store.sql import Store
from tests.store.conftest import START, new_destination

ANN = ProfileState("ann@x.io", 7, "d-ann")
ANNIE = ProfileState("Ann@x.io", 7, "d-annie")


def rows(destination_id: str, **states: ProfileState) -> list[ProfileStateRow]:
    return [ProfileStateRow(destination_id, pid, state) for pid, state in states.items()]


async def test_a_digest_written_to_a_lead_clears_the_other_profiles_of_the_lead(
    store: Store, destination: DestinationRecord
) -> None:
    other = await store.create_destination(new_destination(name="other"))
    bob = ProfileState("bob@x.io", 8, "d-bob")
    await store.retire(
        [], [], profiles=rows(destination.id, p1=ANN, p3=bob, p4=ProfileState("ann@x.io", 7))
    )
    await store.retire([], [], profiles=rows(other.id, p1=ANN))
    await store.retire([], [], profiles=rows(destination.id, p5=ANNIE))

    # p2 writes Annie to lead 7 in a batch of its own
    await store.retire([], [], profiles=rows(destination.id, p2=ANNIE))

    state = await store.desired_state(destination.id, ["p1", "p2", "p3", "p4", "p5"])
    assert state.profiles == {
        "p1": ProfileState("ann@x.io", 7, None),  # bound still, its digest is not the lead's
        "p2": ANNIE,
        "p3": bob,  # another lead
        "p4": ProfileState("ann@x.io", 7),  # nothing applied to clear
        "p5": ANNIE,  # what the lead holds
    }
    # another destination keeps its own state
    assert (await store.desired_state(other.id, ["p1"])).profiles == {"p1": ANN}


async def test_profiles_written_together_keep_the_digest_they_wrote(
    store: Store, destination: DestinationRecord
) -> None:
    await store.retire([], [], profiles=rows(destination.id, p1=ANN, p3=ANN))

    await store.retire([], [], profiles=rows(destination.id, p1=ANNIE, p2=ANNIE))

    state = await store.desired_state(destination.id, ["p1", "p2", "p3"])
    assert state.profiles == {"p1": ANNIE, "p2": ANNIE, "p3": ProfileState("ann@x.io", 7, None)}


async def test_a_forgotten_profile_gets_no_state_back_and_its_last_write_still_counts(
    store: Store, destination: DestinationRecord
) -> None:
    await store.retire([], [], profiles=rows(destination.id, p1=ANN, p2=ANN))
    forget = Outcome("forget:1", "p1", None, OutcomeKind.EXCLUDED, reason="profile forgotten")
    forget = replace(forget, exclusion_code=ExclusionCode.FORGOTTEN)
    await store.forget_profile(destination.id, "p1", forget, START + timedelta(hours=1))

    # p1's batch was in flight: it wrote Annie to lead 7 once more, p2 wrote nothing since
    await store.retire([], [], profiles=rows(destination.id, p1=ANNIE))
    state = await store.desired_state(destination.id, ["p1", "p2"])
    assert state.forgotten == {"p1"}
    assert state.profiles == {"p2": ProfileState("ann@x.io", 7, None)}

    # p2 writes to lead 7: the forgotten profile gets no state back
    await store.retire([], [], profiles=rows(destination.id, p2=ANNIE))
    assert (await store.desired_state(destination.id, ["p1", "p2"])).profiles == {"p2": ANNIE}


async def test_profiles_of_one_lead_stored_with_different_digests_keep_none(
    store: Store, destination: DestinationRecord
) -> None:
    await store.retire([], [], profiles=rows(destination.id, p1=ANN, p3=ANN))
    refused = ProfileState("ann@x.io", 7, "d-ann", consent_refused=True)

    # one batch: p1 refuses consent (keeping its digest), p2 writes Annie to the same lead
    await store.retire([], [], profiles=rows(destination.id, p1=refused, p2=ANNIE))

    state = await store.desired_state(destination.id, ["p1", "p2", "p3"])
    assert state.profiles == {
        "p1": ProfileState("ann@x.io", 7, None, consent_refused=True),
        "p2": ProfileState("Ann@x.io", 7, None),
        "p3": ProfileState("ann@x.io", 7, None),
    }
