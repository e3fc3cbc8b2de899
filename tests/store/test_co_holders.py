"""The desired state of a batch's profiles comes with their co-holders, on every backend: the
other profiles that want the same leads in the same lists (a member status, consent not refused,
holding the lead there or, holding none, bound to it), so that one profile's exit removes a lead
only when no other profile still wants it."""

from __future__ import annotations

from service import domain
from service.domain import HOLDER_RESOLVED, ActionType, MembershipMark, ProfileState
from service.store import base
from service.store.base import MembershipHolder, MembershipWatermark, ProfileStateRow
from service.store.sql import Store
from tests.engine.test_desired_state import EXITED, REALIZED
from tests.store.conftest import INSTANCE, START, activated, claimed


async def test_co_holders_are_the_other_profiles_that_want_the_leads_in_the_lists(
    store: Store, destination: base.DestinationRecord
) -> None:
    (entry,) = await claimed(store, destination.id, INSTANCE, [1])
    d = destination.id

    def mark(profile: str, audience: str, status: domain.MembershipStatus) -> MembershipWatermark:
        return MembershipWatermark(d, profile, audience, MembershipMark(status, START))

    await store.retire(
        [entry],
        [activated(entry, ActionType.ADDED)],
        membership_marks=[
            mark("exiting", "a1", REALIZED),
            mark("exiting", "a2", REALIZED),
            mark("holds", "a1", REALIZED),
            mark("bound", "a1", REALIZED),
            mark("resolved", "a2", REALIZED),
            mark("gone", "a1", EXITED),
            mark("refused", "a1", REALIZED),
            mark("elsewhere", "a1", REALIZED),
            mark("bound-holds-other", "a1", REALIZED),
        ],
        holders=[
            MembershipHolder(d, "exiting", "a1", 7),
            MembershipHolder(d, "holds", "a1", 7),
            MembershipHolder(d, "gone", "a1", 7),
            MembershipHolder(d, "refused", "a1", 7),
            MembershipHolder(d, "elsewhere", "a1", 9),
            MembershipHolder(d, "bound-holds-other", "a1", 9),
        ],
        profiles=[
            # "exiting" holds 7 in a1 and is bound to 8 (its a2 membership stands for 8)
            ProfileStateRow(d, "exiting", ProfileState("e@x.io", 8)),
            ProfileStateRow(d, "bound", ProfileState("b@x.io", 7)),
            ProfileStateRow(d, "resolved", ProfileState("r@x.io", 8)),
            ProfileStateRow(d, "refused", ProfileState("n@x.io", 7, consent_refused=True)),
            ProfileStateRow(d, "bound-holds-other", ProfileState("o@x.io", 7)),
        ],
    )
    await store.record_repairs(
        d,
        [
            MembershipHolder(d, "exiting", "a2", HOLDER_RESOLVED),
            MembershipHolder(d, "resolved", "a2", HOLDER_RESOLVED),
        ],
    )

    state = await store.desired_state(d, ["exiting"])
    assert state.co_holders == {
        ("a1", 7): frozenset({"holds", "bound"}),
        ("a2", 8): frozenset({"resolved"}),
    }
    # the profiles the state is read for are never their own co-holders
    both = await store.desired_state(d, ["exiting", "holds"])
    assert both.co_holders[("a1", 7)] == frozenset({"bound"})
    assert (await store.desired_state(d, ["elsewhere"])).co_holders == {
        ("a1", 9): frozenset({"bound-holds-other"})
    }


async def test_a_profile_with_nothing_held_or_bound_has_no_co_holders(
    store: Store, destination: base.DestinationRecord
) -> None:
    assert (await store.desired_state(destination.id, ["nobody"])).co_holders == {}
