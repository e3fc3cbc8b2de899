"""Desired state: the engine writes only the difference between a person's target (the stored
state plus the batch) and what Marketo holds, against an in-memory Marketo."""

from __future__ import annotations

from typing import Any

import pytest

from service.delivery.engine import SyncEngine
from service.delivery.engine.executor import REASON_NOTHING_TO_WRITE, BatchResult
from service.delivery.fence import LeaseUnconfirmed
from service.domain import (
    HOLDER_RESOLVED,
    Action,
    ActionType,
    DesiredState,
    ExclusionCode,
    MembershipMark,
    MembershipStatus,
    OutcomeKind,
    ProfileState,
    ProfileUpdate,
    attributes_digest,
)
from tests.engine.fakes import FakeMarketo, PathMapper, at
from tests.engine.test_executor import CREATE, LISTS, UPDATE, UPDATE_ONLY, upd

LIST_CALLS = ("add_to_list", "remove_from_list")
REALIZED = MembershipStatus.REALIZED
EXITED = MembershipStatus.EXITED


def ann(
    minute: int,
    *members: tuple[str, str],
    email: str = "ann@x.io",
    first: str = "Ann",
    uid: str = "",
    **extra: Any,
) -> ProfileUpdate:
    """An update of profile p1 (Ann Lee), with its event time in minutes."""
    return upd(
        uid or f"u{minute}",
        minute,
        *members,
        pid="p1",
        email=email,
        first=first,
        last="Lee",
        **extra,
    )


def engine(fake: FakeMarketo, rules: Any = CREATE, tracked: tuple[str, ...] = ()) -> SyncEngine:
    return SyncEngine(fake, rules, PathMapper(), audience_lists=LISTS, tracked_lists=tracked)


def calls(fake: FakeMarketo, *operations: str) -> int:
    return sum(1 for name, _ in fake.calls if not operations or name in operations)


class Run:
    """One engine run batch after batch, its state folded in as the store's retire does."""

    def __init__(self, fake: FakeMarketo, rules: Any = CREATE, tracked: tuple[str, ...] = ()):
        self.fake = fake
        self.engine = engine(fake, rules, tracked)
        self.state = DesiredState()

    async def sync(self, *updates: ProfileUpdate) -> BatchResult:
        result = await self.engine.sync(updates, state=self.state)
        assert result.deferred == ()
        self.state = result.folded(self.state)
        return result


def only(result: BatchResult) -> Any:
    (outcome,) = result.outcomes
    return outcome


async def test_an_update_with_nothing_new_makes_no_call() -> None:
    fake = FakeMarketo()
    run = Run(fake)
    first = only(await run.sync(ann(1, ("a1", "realized"))))
    assert first.kind is OutcomeKind.ACTIVATED
    lead = first.lead_id
    assert fake.lists[11] == {lead}
    before = calls(fake)
    again = only(await run.sync(ann(2, ("a1", "realized"))))
    assert calls(fake) == before, "nothing to write: no look-up, no write, no list call"
    assert (again.kind, again.actions, again.lead_id) == (OutcomeKind.ACTIVATED, (), lead)
    assert again.reason == REASON_NOTHING_TO_WRITE


async def test_an_attribute_change_looks_up_and_updates_without_list_calls() -> None:
    fake = FakeMarketo()
    run = Run(fake)
    lead = only(await run.sync(ann(1, ("a1", "realized")))).lead_id
    lookups, updates, lists = (
        calls(fake, "find_leads"),
        calls(fake, UPDATE),
        calls(fake, *LIST_CALLS),
    )
    changed = only(await run.sync(ann(2, first="Anna")))
    assert changed.actions == (Action(ActionType.UPDATED),)
    assert calls(fake, "find_leads") == lookups + 1
    assert calls(fake, UPDATE) == updates + 1
    assert calls(fake, *LIST_CALLS) == lists, "an attribute-only update repeats no membership"
    assert fake.leads[lead].fields["firstName"] == "Anna"
    assert run.state.profiles["p1"].digest == attributes_digest(
        {"email": "ann@x.io", "firstName": "Anna", "lastName": "Lee"}
    )


async def test_an_exit_removes_the_lead_that_holds_the_membership() -> None:
    fake = FakeMarketo()
    run = Run(fake, UPDATE_ONLY)
    added = fake.seed(updated_at=at(1), email="ann@x.io")
    await run.sync(ann(1, ("a1", "realized")))
    assert fake.lists[11] == {added}
    # another integration makes a duplicate the most recently updated lead
    winner = fake.seed(updated_at=at(30), email="ann@x.io")
    fake.lists[11].add(999)  # someone else's member stays
    fake.leads[999] = fake.leads[winner]
    exit_ = only(await run.sync(ann(2, ("a1", "exited"))))
    assert exit_.actions == (Action(ActionType.REMOVED, "a1"),)
    assert fake.lists[11] == {999}, "the lead that was added left, not the new winner"
    assert fake.count("find_leads") == 1, "the bound lead holds it: no look-up"
    assert ("p1", "a1") not in run.state.holders


async def test_a_new_duplicate_winner_takes_the_memberships_over() -> None:
    fake = FakeMarketo()
    run = Run(fake, UPDATE_ONLY)
    old = fake.seed(updated_at=at(1), email="ann@x.io")
    await run.sync(ann(1, ("a1", "realized"), ("a2", "realized")))
    new = fake.seed(updated_at=at(30), email="ann@x.io")
    moved = only(await run.sync(ann(2, first="Anna")))
    assert moved.lead_id == new
    assert set(moved.actions) == {
        Action(ActionType.UPDATED),
        Action(ActionType.ADDED, "a1"),
        Action(ActionType.REMOVED, "a1"),
        Action(ActionType.ADDED, "a2"),
        Action(ActionType.REMOVED, "a2"),
    }
    assert fake.lists[11] == fake.lists[12] == {new}
    assert old not in fake.lists[11]
    assert run.state.holders == {("p1", "a1"): new, ("p1", "a2"): new}
    assert run.state.profiles["p1"].lead_id == new


async def test_a_new_dedupe_value_moves_the_memberships_to_the_new_lead() -> None:
    fake = FakeMarketo()
    run = Run(fake)
    first = only(await run.sync(ann(1, ("a1", "realized"))))
    moved = only(await run.sync(ann(2, email="ann.new@x.io")))
    assert moved.lead_id != first.lead_id
    assert set(moved.actions) == {
        Action(ActionType.CREATED),
        Action(ActionType.ADDED, "a1"),
        Action(ActionType.REMOVED, "a1"),
    }
    assert fake.lists[11] == {moved.lead_id}
    assert run.state.profiles["p1"] == ProfileState(
        "ann.new@x.io",
        moved.lead_id,
        attributes_digest({"email": "ann.new@x.io", "firstName": "Ann", "lastName": "Lee"}),
    )


async def test_a_deleted_bound_lead_is_resolved_again_and_its_memberships_move() -> None:
    fake = FakeMarketo()
    run = Run(fake, UPDATE_ONLY)
    gone = fake.seed(updated_at=at(1), email="ann@x.io")
    await run.sync(ann(1, ("a1", "realized")))
    del fake.leads[gone]  # deleted (or merged away) in Marketo
    fake.lists[11].discard(gone)
    survivor = fake.seed(updated_at=at(2), email="ann@x.io")
    moved = only(await run.sync(ann(2, first="Anna")))
    assert moved.lead_id == survivor
    # the removal of the deleted holder answers 1004: not in the list any more, holder cleared
    assert set(moved.actions) == {
        Action(ActionType.UPDATED),
        Action(ActionType.ADDED, "a1"),
        Action(ActionType.NOT_IN_LIST, "a1"),
    }
    assert fake.lists[11] == {survivor}
    assert run.state.holders == {("p1", "a1"): survivor}


async def test_refused_consent_removes_held_memberships_and_keeps_the_desired_ones() -> None:
    fake = FakeMarketo()
    run = Run(fake)
    lead = only(await run.sync(ann(1, ("a1", "realized"), ("a2", "realized")))).lead_id
    refused = {"marketing": {"any": {"val": " DN "}}}
    updates = calls(fake, UPDATE)
    out = only(await run.sync(ann(2, consents=refused, first="Changed")))
    assert (out.kind, out.exclusion_code) == (OutcomeKind.EXCLUDED, ExclusionCode.CONSENT_REFUSED)
    assert set(out.actions) == {Action(ActionType.REMOVED, "a1"), Action(ActionType.REMOVED, "a2")}
    assert fake.lists[11] == fake.lists[12] == set()
    assert calls(fake, UPDATE) == updates, "no attribute leaves"
    assert fake.leads[lead].fields.get("firstName") == "Ann"
    assert run.state.profiles["p1"].consent_refused
    assert {pair: mark.status for pair, mark in run.state.marks.items()} == {
        ("p1", "a1"): REALIZED,
        ("p1", "a2"): REALIZED,
    }, "the desired statuses are kept"
    assert run.state.holders == {}

    back = only(await run.sync(ann(3)))
    assert back.kind is OutcomeKind.ACTIVATED
    assert set(back.actions) == {Action(ActionType.ADDED, "a1"), Action(ActionType.ADDED, "a2")}
    assert fake.lists[11] == fake.lists[12] == {lead}
    assert not run.state.profiles["p1"].consent_refused


async def test_a_refusal_without_a_held_membership_makes_no_call() -> None:
    fake = FakeMarketo()
    run = Run(fake)
    out = only(
        await run.sync(ann(1, ("a1", "realized"), consents={"marketing": {"any": {"val": "n"}}}))
    )
    assert out.exclusion_code is ExclusionCode.CONSENT_REFUSED and out.actions == ()
    assert calls(fake) == 0
    assert run.state.profiles["p1"].consent_refused
    assert run.state.marks[("p1", "a1")] == MembershipMark(REALIZED, at(1))
    # a later membership-only fact older than the attributes still follows the refusal
    late = ann(0, ("a2", "realized"), uid="late")
    assert only(await run.sync(late)).exclusion_code is ExclusionCode.CONSENT_REFUSED
    assert calls(fake) == 0


async def test_an_exit_for_a_lead_never_added_costs_no_call() -> None:
    fake = FakeMarketo()
    run = Run(fake, tracked=("a1",))
    await run.sync(ann(1, ("a2", "realized")))  # a member of a2, never of a1
    before = calls(fake)
    out = only(await run.sync(ann(2, ("a1", "exited"))))
    assert calls(fake) == before
    assert (out.kind, out.actions) == (
        OutcomeKind.ACTIVATED,
        (Action(ActionType.NOT_IN_LIST, "a1"),),
    )


async def test_a_linked_list_exit_without_holder_removes_the_resolved_lead() -> None:
    fake = FakeMarketo()
    run = Run(fake)  # a1 untracked: someone else may have added the lead
    lead = only(await run.sync(ann(1, ("a2", "realized")))).lead_id
    assert lead is not None
    fake.lists.setdefault(11, set()).add(lead)
    out = only(await run.sync(ann(2, ("a1", "exited"))))
    assert out.actions == (Action(ActionType.REMOVED, "a1"),)
    assert fake.count("remove_from_list") == 1 and fake.lists[11] == set()
    # not in the list (1015): one call, NOT_IN_LIST
    out = only(await run.sync(ann(3, ("a1", "exited"))))
    assert out.actions == (Action(ActionType.NOT_IN_LIST, "a1"),)
    assert fake.count("remove_from_list") == 2 and fake.lists[12] == {lead}


async def test_a_membership_stored_before_holders_were_leaves_by_the_resolved_lead() -> None:
    fake = FakeMarketo()
    lead = fake.seed(email="ann@x.io")
    fake.lists[11] = {lead}
    state = DesiredState(
        marks={("p1", "a1"): MembershipMark(REALIZED, at(1))},
        holders={("p1", "a1"): HOLDER_RESOLVED},
    )
    result = await engine(fake, UPDATE_ONLY, tracked=("a1",)).sync(
        [ann(2, ("a1", "exited"))], state=state
    )
    # the exit from its only audience removes the lead and writes no attributes
    assert only(result).actions == (Action(ActionType.REMOVED, "a1"),)
    assert fake.lists[11] == set() and fake.count(UPDATE) == 0
    assert dict(result.holders) == {("p1", "a1"): None}


async def test_an_older_membership_event_after_a_newer_attribute_update_still_applies() -> None:
    fake = FakeMarketo()
    run = Run(fake)
    lead = only(await run.sync(ann(5, ("a2", "realized")))).lead_id
    late = only(await run.sync(ann(3, ("a1", "realized"), uid="seg")))
    assert late.kind is OutcomeKind.ACTIVATED
    assert late.actions == (Action(ActionType.ADDED, "a1"),)
    assert fake.lists[11] == {lead}


async def test_a_join_for_a_deleted_bound_lead_resolves_the_person_again() -> None:
    fake = FakeMarketo()
    run = Run(fake, UPDATE_ONLY)
    gone = fake.seed(updated_at=at(1), email="ann@x.io")
    await run.sync(ann(1, ("a1", "realized")))
    del fake.leads[gone]
    fake.lists[11].discard(gone)
    survivor = fake.seed(updated_at=at(2), email="ann@x.io")
    # nothing to write but a join: the bound lead is used without a look-up, Marketo answers
    # 1004, and the person is resolved again
    out = only(await run.sync(ann(2, ("a1", "realized"), ("a2", "realized"))))
    assert (out.kind, out.lead_id) == (OutcomeKind.ACTIVATED, survivor)
    assert set(out.actions) == {
        Action(ActionType.UPDATED),
        Action(ActionType.ADDED, "a1"),
        Action(ActionType.ADDED, "a2"),
        Action(ActionType.NOT_IN_LIST, "a1"),
    }
    assert fake.lists[11] == fake.lists[12] == {survivor}
    assert run.state.holders == {("p1", "a1"): survivor, ("p1", "a2"): survivor}
    assert run.state.profiles["p1"].lead_id == survivor


def stop_at_second(fake: FakeMarketo, operation: str) -> None:
    """The first `operation` call goes through; the second finds the batch stopped (the lease
    no longer confirmed, as when the drainer's lease lapses part-way through a batch)."""

    def stop() -> None:
        raise LeaseUnconfirmed("Marketo call not sent: the lease is not confirmed")

    def arm() -> None:
        fake.before[operation] = stop

    fake.before[operation] = arm


async def stopped(run: Run, *updates: ProfileUpdate) -> BatchResult:
    """Run a batch that stops part-way: every update is deferred, and what Marketo confirmed
    is folded in as the retire stores it."""
    result = await run.engine.sync(updates, state=run.state)
    assert result.outcomes == ()
    assert {d.update_id for d in result.deferred} == {u.update_id for u in updates}
    run.state = result.folded(run.state)
    return result


REFUSED = {"marketing": {"any": {"val": "dn"}}}


@pytest.mark.parametrize(
    "later",
    [
        ann(3, ("a1", "realized"), ("a2", "realized"), consents=REFUSED, uid="refusal"),
        ann(3, ("a1", "exited"), ("a2", "exited"), uid="exit"),
    ],
    ids=["refused-consent", "exit"],
)
async def test_a_join_confirmed_before_the_batch_stopped_is_removed_by_a_later_update(
    later: ProfileUpdate,
) -> None:
    fake = FakeMarketo()
    run = Run(fake, UPDATE_ONLY, tracked=("a1", "a2"))
    lead = fake.seed(email="ann@x.io")
    stop_at_second(fake, "add_to_list")
    result = await stopped(run, ann(1, ("a1", "realized"), ("a2", "realized")))
    assert fake.lists[11] == {lead} and 12 not in fake.lists, "a1 joined, then the stop"
    assert dict(result.holders) == {("p1", "a1"): lead}
    assert run.state.marks[("p1", "a1")] == MembershipMark(REALIZED, at(1))
    assert ("p1", "a2") not in run.state.marks, "nothing of a2 reached Marketo"

    # the newer update comes before the stopped one is retried: the lead leaves a1
    out = only(await run.sync(later))
    assert Action(ActionType.REMOVED, "a1") in out.actions
    assert fake.lists[11] == set()
    assert run.state.holders == {}
    # the retried update's memberships are older than the newer facts: no list joins again
    retried = only(await run.sync(ann(1, ("a1", "realized"), ("a2", "realized"))))
    assert retried.kind is not OutcomeKind.ACTIVATED and retried.actions == ()
    assert fake.lists[11] == set() and fake.lists.get(12, set()) == set()


async def test_a_removal_confirmed_before_the_batch_stopped_lets_a_later_entry_add_again() -> None:
    fake = FakeMarketo()
    run = Run(fake, UPDATE_ONLY, tracked=("a1", "a2"))
    lead = fake.seed(email="ann@x.io")
    await run.sync(ann(1, ("a1", "realized"), ("a2", "realized")))
    assert fake.lists[11] == fake.lists[12] == {lead}
    stop_at_second(fake, "remove_from_list")
    result = await stopped(run, ann(2, ("a1", "exited"), ("a2", "exited")))
    assert fake.lists[11] == set() and fake.lists[12] == {lead}
    assert dict(result.holders) == {("p1", "a1"): None}
    assert run.state.holders == {("p1", "a2"): lead}

    # a re-entry into a1 before the exit is retried: the lead is added again
    out = only(await run.sync(ann(3, ("a1", "realized"), uid="back")))
    assert out.actions == (Action(ActionType.ADDED, "a1"),)
    assert fake.lists[11] == {lead}
    # the retried exit: a1's is older than the re-entry, a2's still removes the lead
    retried = only(await run.sync(ann(2, ("a1", "exited"), ("a2", "exited"))))
    assert retried.actions == (Action(ActionType.REMOVED, "a2"),)
    assert fake.lists[11] == {lead} and fake.lists[12] == set()
