"""A lead is in an audience's list while at least one profile that resolves to it (or holds it
there) is a member with consent: an exit or a consent refusal of one profile removes the lead
only when no other profile still wants it (the union Reconcile keeps, so delivery never flaps
against it). Each profile's own mark still records its exit."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from service import domain
from service.delivery.engine import SyncEngine
from service.domain import Action, ActionType, Outcome, OutcomeKind, ProfileUpdate
from tests.engine.fakes import FakeMarketo, PathMapper, at
from tests.engine.test_desired_state import EXITED, LIST_CALLS, REALIZED, Run, calls, only
from tests.engine.test_executor import CREATE, LISTS, upd


def of(pid: str, uid: str, minute: int, *members: tuple[str, str], **extra: Any) -> ProfileUpdate:
    """An update of profile `pid` with e-mail ann@x.io: every such profile is one lead."""
    return upd(uid, minute, *members, pid=pid, email="ann@x.io", first="Ann", last="Lee", **extra)


def list_actions(outcomes: Iterable[Outcome]) -> list[Action]:
    """The list changes (and NOT_IN_LIST exits) the outcomes carry."""
    return [a for o in outcomes for a in o.actions if a.audience_id is not None]


async def both_members(tracked: tuple[str, ...] = ("a1",)) -> tuple[FakeMarketo, Run, int]:
    """p1 and p2 (one e-mail, one lead) members of a1, each updating alone: both hold the lead."""
    fake = FakeMarketo()
    run = Run(fake, CREATE, tracked=tracked)
    lead = only(await run.sync(of("p1", "p1-join", 1, ("a1", "realized")))).lead_id
    second = only(await run.sync(of("p2", "p2-join", 2, ("a1", "realized"))))
    assert second.lead_id == lead and fake.lists[11] == {lead}
    return fake, run, lead


async def test_an_exit_in_a_coalesced_batch_keeps_the_lead_another_profile_wants() -> None:
    fake = FakeMarketo()
    run = Run(fake, CREATE, tracked=("a1",))
    lead = only(await run.sync(of("p1", "p1-first", 1, ("a1", "realized")))).lead_id
    removals = calls(fake, "remove_from_list")

    # p1 is still a member (t2), p2 exits (t3): the person wants a1 through p1
    result = await run.sync(
        of("p1", "p1-again", 2, ("a1", "realized")), of("p2", "p2-exit", 3, ("a1", "exited"))
    )
    assert fake.lists[11] == {lead}
    assert calls(fake, "remove_from_list") == removals
    assert list_actions(result.outcomes) == []
    assert {o.update_id: o.kind for o in result.outcomes} == {
        "p1-again": OutcomeKind.ACTIVATED,
        "p2-exit": OutcomeKind.ACTIVATED,
    }
    # each profile's own mark: p2's exit is recorded, and p2 holds nothing any more
    assert run.state.marks[("p1", "a1")].status is REALIZED
    assert run.state.marks[("p2", "a1")].status is EXITED
    assert run.state.holders[("p1", "a1")] == lead
    assert ("p2", "a1") not in run.state.holders

    # the next batch plans against what Marketo holds: nothing to write
    before = calls(fake, *LIST_CALLS)
    again = only(await run.sync(of("p1", "p1-later", 4, ("a1", "realized"))))
    assert (again.kind, again.actions) == (OutcomeKind.ACTIVATED, ())
    assert calls(fake, *LIST_CALLS) == before


async def test_a_batch_with_a_newer_exit_of_one_profile_adds_the_lead_another_one_wants() -> None:
    fake = FakeMarketo()
    run = Run(fake, CREATE, tracked=("a1",))
    lead = fake.seed(email="ann@x.io", firstName="Ann", lastName="Lee")

    result = await run.sync(
        of("p1", "p1-join", 2, ("a1", "realized")), of("p2", "p2-exit", 3, ("a1", "exited"))
    )
    assert fake.lists[11] == {lead}
    outcomes = {o.update_id: o for o in result.outcomes}
    assert outcomes["p1-join"].actions == (Action(ActionType.ADDED, "a1"),)
    assert outcomes["p2-exit"].kind is OutcomeKind.ACTIVATED
    assert run.state.marks[("p2", "a1")].status is EXITED


async def test_an_exit_across_batches_keeps_the_lead_another_profile_holds() -> None:
    fake, run, lead = await both_members()
    removals = calls(fake, "remove_from_list")

    result = await run.sync(of("p2", "p2-exit", 3, ("a1", "exited"), ("a2", "realized")))
    assert fake.lists[11] == {lead}, "p1 still wants the lead in a1"
    assert calls(fake, "remove_from_list") == removals
    out = only(result)
    assert (out.kind, out.actions) == (OutcomeKind.ACTIVATED, (Action(ActionType.ADDED, "a2"),))
    assert run.state.marks[("p2", "a1")].status is EXITED
    assert ("p2", "a1") not in run.state.holders, "the lead stays for p1, not for p2"
    assert run.state.holders[("p1", "a1")] == lead

    # the last profile that wants it exits: the lead leaves
    last = only(await run.sync(of("p1", "p1-exit", 4, ("a1", "exited"), ("a2", "realized"))))
    assert Action(ActionType.REMOVED, "a1") in last.actions
    assert fake.lists[11] == set()


async def test_an_exit_from_the_only_audience_keeps_the_lead_and_writes_nothing() -> None:
    fake, run, lead = await both_members()
    before = calls(fake)

    out = only(await run.sync(of("p2", "p2-exit", 3, ("a1", "exited"))))
    assert fake.lists[11] == {lead}
    assert calls(fake) == before, "nothing to remove, nothing else to write: no call"
    # not NOT_IN_LIST: the lead is in the list, held for p1
    assert out.actions == ()
    assert (out.kind, out.exclusion_code) == (
        OutcomeKind.EXCLUDED,
        domain.ExclusionCode.NO_AUDIENCE,
    )
    assert run.state.marks[("p2", "a1")].status is EXITED


async def test_an_exit_of_an_untracked_list_keeps_the_lead_another_profile_holds() -> None:
    fake, run, lead = await both_members(tracked=())
    removals = calls(fake, "remove_from_list")
    await run.sync(of("p2", "p2-exit", 3, ("a1", "exited"), ("a2", "realized")))
    assert fake.lists[11] == {lead}
    assert calls(fake, "remove_from_list") == removals


async def test_a_consent_refusal_keeps_the_lead_another_profile_wants() -> None:
    fake, run, lead = await both_members()
    removals = calls(fake, "remove_from_list")

    out = only(
        await run.sync(
            of(
                "p2",
                "p2-refuses",
                3,
                ("a1", "realized"),
                consents={"marketing": {"any": {"val": "n"}}},
            )
        )
    )
    assert (out.kind, out.exclusion_code, out.actions) == (
        OutcomeKind.EXCLUDED,
        domain.ExclusionCode.CONSENT_REFUSED,
        (),
    )
    assert fake.lists[11] == {lead}
    assert calls(fake, "remove_from_list") == removals
    assert ("p2", "a1") not in run.state.holders

    # p1 exits: nobody wants the lead in a1 any more
    last = only(await run.sync(of("p1", "p1-exit", 4, ("a1", "exited"), ("a2", "realized"))))
    assert Action(ActionType.REMOVED, "a1") in last.actions
    assert fake.lists[11] == set()


async def test_the_last_wanting_profiles_exiting_together_remove_the_lead() -> None:
    fake, run, _ = await both_members()
    result = await run.sync(
        of("p1", "p1-exit", 3, ("a1", "exited"), ("a2", "realized")),
        of("p2", "p2-exit", 4, ("a1", "exited"), ("a2", "realized")),
    )
    assert fake.lists[11] == set()
    assert Action(ActionType.REMOVED, "a1") in list_actions(result.outcomes)
    assert run.state.marks[("p1", "a1")].status is EXITED
    assert run.state.marks[("p2", "a1")].status is EXITED


async def test_an_exit_keeps_a_lead_only_co_holders_read_from_the_store_want() -> None:
    # as the store reads it: the batch's profile alone, with the other profiles wanting its
    # lead in a1 as co-holders (their own rows are not read)
    fake = FakeMarketo()
    lead = fake.seed(email="ann@x.io", firstName="Ann", lastName="Lee")
    fake.lists[11] = {lead}
    stored = domain.DesiredState(
        marks={("p2", "a1"): domain.MembershipMark(REALIZED, at(1))},
        holders={("p2", "a1"): lead},
        profiles={"p2": domain.ProfileState("ann@x.io", lead)},
    )
    engine = SyncEngine(fake, CREATE, PathMapper(), audience_lists=LISTS, tracked_lists=("a1",))
    exit_ = of("p2", "p2-exit", 3, ("a1", "exited"), ("a2", "realized"))

    kept = await engine.sync(
        [exit_], state=replace(stored, co_holders={("a1", lead): frozenset({"p1"})})
    )
    assert fake.lists[11] == {lead}
    assert list_actions(kept.outcomes) == [Action(ActionType.ADDED, "a2")]
    assert kept.holders[("p2", "a1")] is None

    # a co-holder that is itself in the batch counts through its own update only
    alone = await engine.sync(
        [exit_, of("p1", "p1-exit", 3, ("a1", "exited"))],
        state=replace(stored, co_holders={("a1", lead): frozenset({"p1"})}),
    )
    assert fake.lists[11] == set()
    assert Action(ActionType.REMOVED, "a1") in list_actions(alone.outcomes)
