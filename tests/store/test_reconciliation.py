"""The store's reconciliation rows (issue 23), on both engines: the desired members of an
audience, the holders and bindings a reconciliation records and each list's last run."""

from __future__ import annotations

from datetime import timedelta

from service.domain import (
    HOLDER_RESOLVED,
    ActionType,
    DesiredMember,
    ListReconciliation,
    MembershipMark,
    MembershipStatus,
    ProfileState,
)
from service.store.base import (
    DestinationRecord,
    MembershipHolder,
    MembershipWatermark,
    ProfileStateRow,
)
from service.store.sql import Store
from tests.store.conftest import INSTANCE, START, activated, claimed


async def test_desired_members_are_current_members_whose_consent_is_not_refused(
    store: Store, destination: DestinationRecord
) -> None:
    (entry,) = await claimed(store, destination.id, INSTANCE, [1])
    d = destination.id

    def mark(profile: str, status: MembershipStatus) -> MembershipWatermark:
        return MembershipWatermark(d, profile, "a1", MembershipMark(status, START))

    await store.retire(
        [entry],
        [activated(entry, ActionType.ADDED)],
        membership_marks=[
            mark("held", MembershipStatus.REALIZED),
            mark("old", MembershipStatus.EXISTING),
            mark("gone", MembershipStatus.EXITED),
            mark("refused", MembershipStatus.REALIZED),
            mark("unheld", MembershipStatus.REALIZED),
        ],
        holders=[
            MembershipHolder(d, "held", "a1", 11),
            MembershipHolder(d, "refused", "a1", 13),
        ],
        profiles=[
            ProfileStateRow(d, "held", ProfileState("h@x.io", 11)),
            ProfileStateRow(d, "refused", ProfileState("r@x.io", 13, consent_refused=True)),
            ProfileStateRow(d, "unheld", ProfileState("u@x.io", 15)),
        ],
    )
    # rows written before holders were recorded stand for the bound lead
    await store.record_repairs(d, [MembershipHolder(d, "old", "a1", HOLDER_RESOLVED)])

    assert await store.desired_members(d, "a1") == [
        DesiredMember("held", 11, 11, "h@x.io"),
        DesiredMember("old", HOLDER_RESOLVED, None, None),
        DesiredMember("unheld", None, 15, "u@x.io"),
    ]
    assert await store.desired_members(d, "a2") == []

    await store.record_repairs(
        d, [MembershipHolder(d, "unheld", "a1", 21)], {"unheld": 21, "held": 11}
    )
    (_, _, unheld) = await store.desired_members(d, "a1")
    assert unheld == DesiredMember("unheld", 21, 21, "u@x.io")
    state = await store.desired_state(d, ["unheld"])
    assert state.profiles["unheld"] == ProfileState("u@x.io", 21)


async def test_the_last_reconciliation_of_each_list_is_kept(
    store: Store, destination: DestinationRecord
) -> None:
    d = destination.id
    assert await store.reconciliations(d) == []
    first = ListReconciliation("a2", 5, START, 3, 0)
    await store.record_reconciliation(d, first)
    await store.record_reconciliation(d, ListReconciliation("a1", 4, START, 1, 1))
    later = ListReconciliation("a1", 9, START + timedelta(hours=6), 0, 0)
    await store.record_reconciliation(d, later)

    assert await store.reconciliations(d) == [later, first]
