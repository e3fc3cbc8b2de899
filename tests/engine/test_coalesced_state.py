"""Profiles coalesced into one person (one dedupe value) all keep the applied state of the lead
they resolved to, not only the profile whose attributes were written: a later update of another
of them is planned against what the lead holds."""

from __future__ import annotations

from dataclasses import replace

import pytest

from service.delivery.engine.planner import REASON_STALE
from service.domain import (
    Action,
    ActionType,
    ExclusionCode,
    OutcomeKind,
    ProfileUpdate,
    SyncRules,
    attributes_digest,
)
from tests.engine.fakes import NO_MEMBERSHIP, FakeMarketo, at
from tests.engine.test_desired_state import LIST_CALLS, REFUSED, Run, calls, only
from tests.engine.test_executor import CREATE, UPDATE, upd
from tests.engine.test_who_is_exported import SYNC_TYPES


def of(pid: str, uid: str, minute: int, first: str, *members: tuple[str, str]) -> ProfileUpdate:
    """An update of profile `pid`, e-mail ann@x.io (one person, however many profiles)."""
    return upd(uid, minute, *members, pid=pid, email="ann@x.io", first=first, last="Lee")


# p1's update in the coalesced batch: it carries a join (it shares the person's outcome), or
# nothing p2's newer update does not replace (superseded in the batch)
P1_IN_BATCH = {
    "joins a2": of("p1", "p1-join", 2, "Ann", ("a2", "realized")),
    "superseded": of("p1", "p1-same", 2, "Ann", NO_MEMBERSHIP),
}


@pytest.mark.parametrize("p1_update", sorted(P1_IN_BATCH))
async def test_a_coalesced_profile_updating_alone_gets_its_attributes_written_again(
    p1_update: str,
) -> None:
    fake = FakeMarketo()
    run = Run(fake)
    lead = fake.seed(email="ann@x.io", firstName="Old", lastName="Lee")
    await run.sync(of("p1", "p1-first", 1, "Ann", ("a1", "realized")))
    assert fake.leads[lead].fields["firstName"] == "Ann"

    # p2 has Ann's e-mail too: coalesced with p1's update, its newer attributes are written
    await run.sync(P1_IN_BATCH[p1_update], of("p2", "p2", 3, "Annie", ("a1", "realized")))
    assert fake.leads[lead].fields["firstName"] == "Annie"
    for pid in ("p1", "p2"):
        state = run.state.profiles[pid]
        assert (state.lead_id, state.digest) == (
            lead,
            attributes_digest({"email": "ann@x.io", "firstName": "Annie", "lastName": "Lee"}),
        ), pid

    # p1's newer attributes are those it had before, not those the lead holds: written again
    await written_again(run, lead, of("p1", "p1-later", 4, "Ann", NO_MEMBERSHIP))


async def written_again(run: Run, lead: int, update: ProfileUpdate) -> None:
    """`update` (first name Ann) updates `lead` with one write."""
    before = calls(run.fake, UPDATE)
    out = only(await run.sync(update))
    assert (out.kind, out.actions, out.lead_id) == (
        OutcomeKind.ACTIVATED,
        (Action(ActionType.UPDATED),),
        lead,
    )
    assert calls(run.fake, UPDATE) == before + 1
    assert run.fake.leads[lead].fields["firstName"] == "Ann"


async def test_a_coalesced_profile_is_bound_and_costs_no_call_when_nothing_changed() -> None:
    fake = FakeMarketo()
    run = Run(fake)
    lead = fake.seed(email="ann@x.io", firstName="Old", lastName="Lee")
    await run.sync(
        of("p1", "p1", 1, "Ann", ("a1", "realized")), of("p2", "p2", 2, "Annie", NO_MEMBERSHIP)
    )
    assert fake.leads[lead].fields["firstName"] == "Annie"

    # p1 comes alone with the attributes the lead holds, and its membership held: no call
    await no_call(run, lead, of("p1", "p1-again", 3, "Annie", ("a1", "realized")))


async def no_call(run: Run, lead: int, update: ProfileUpdate) -> None:
    """`update` finds everything applied on `lead`: no call."""
    before = len(run.fake.calls)
    out = only(await run.sync(update))
    assert (out.kind, out.actions, out.lead_id) == (OutcomeKind.ACTIVATED, (), lead)
    assert len(run.fake.calls) == before


# Who is exported, for a coalesced person: a member of an activated audience through any profile
# coalesced into it in the batch, whether or not that profile's update shares the outcome.

# p1's update in the batch, older than p2's attributes-only update: nothing of it is written
P1_SUPERSEDED = {
    "same attributes": of("p1", "p1-same", 2, "Ann", NO_MEMBERSHIP),
    "other attributes": of("p1", "p1-other", 2, "Anne", NO_MEMBERSHIP),
}


async def ann_in_a1(rules: SyncRules) -> tuple[FakeMarketo, Run, int]:
    """p1 (ann@x.io) exported as a member of a1: its lead, and the run holding its state."""
    fake = FakeMarketo()
    run = Run(fake, rules)
    out = only(await run.sync(of("p1", "p1-first", 1, "Ann", ("a1", "realized"))))
    assert out.kind is OutcomeKind.ACTIVATED
    return fake, run, out.lead_id


@SYNC_TYPES
@pytest.mark.parametrize("p1_update", sorted(P1_SUPERSEDED))
async def test_a_profile_coalesced_with_a_stored_member_is_exported(
    rules: SyncRules, p1_update: str
) -> None:
    fake, run, lead = await ann_in_a1(rules)
    list_calls = calls(fake, *LIST_CALLS)

    result = await run.sync(P1_SUPERSEDED[p1_update], of("p2", "p2", 3, "Annie", NO_MEMBERSHIP))
    outcomes = {o.update_id: o for o in result.outcomes}
    assert outcomes[P1_SUPERSEDED[p1_update].update_id].kind is OutcomeKind.SUPERSEDED
    written = outcomes["p2"]
    assert (written.kind, written.exclusion_code, written.actions, written.lead_id) == (
        OutcomeKind.ACTIVATED,
        None,
        (Action(ActionType.UPDATED),),
        lead,
    )
    assert fake.leads[lead].fields["firstName"] == "Annie"
    assert calls(fake, *LIST_CALLS) == list_calls, "the lead already holds a1: no list call"
    assert "p2" not in run.state.unapplied
    assert run.state.profiles["p2"].lead_id == lead


async def test_an_exit_of_a_coalesced_profile_removes_the_lead_another_one_holds() -> None:
    fake = FakeMarketo()
    run = Run(fake, CREATE, tracked=("a1",))
    lead = only(await run.sync(of("p1", "p1-first", 1, "Ann", ("a1", "realized")))).lead_id
    assert fake.lists[11] == {lead}

    # p1's attributes lose to p2's, its own exit of a1 to p2's newer one: p1's update is
    # superseded, and the membership its lead holds leaves with the person's exit (no profile
    # of the person wants a1 any more; see test_union_membership for one that still does)
    result = await run.sync(
        of("p1", "p1-again", 2, "Ann", ("a1", "exited")),
        of("p2", "p2-exit", 3, "Annie", ("a1", "exited")),
    )
    outcomes = {o.update_id: o for o in result.outcomes}
    assert outcomes["p1-again"].kind is OutcomeKind.SUPERSEDED
    assert (outcomes["p2-exit"].kind, outcomes["p2-exit"].actions) == (
        OutcomeKind.ACTIVATED,
        (Action(ActionType.REMOVED, "a1"),),
    )
    assert fake.lists[11] == set()
    assert ("p1", "a1") not in run.state.holders


@SYNC_TYPES
async def test_a_profile_alone_is_not_exported_through_another_profile_of_its_lead(
    rules: SyncRules,
) -> None:
    # the person is the profiles coalesced in one batch: p1, a member bound to the same lead
    # but not in the batch, does not make p2 (a member of nothing) exported
    fake, run, lead = await ann_in_a1(rules)
    before = calls(fake)
    out = only(await run.sync(of("p2", "p2", 3, "Annie", NO_MEMBERSHIP)))
    assert (out.kind, out.exclusion_code) == (OutcomeKind.EXCLUDED, ExclusionCode.NO_AUDIENCE)
    assert calls(fake) == before and fake.leads[lead].fields["firstName"] == "Ann"
    assert run.state.unapplied["p2"].event_time == at(3)


async def test_a_stale_update_does_not_coalesce_its_profile() -> None:
    # p1's update is older than p1's attributes already applied: it tells nothing of p1 now and
    # is superseded alone, so p2 is a person on its own, as if p1 were not in the batch
    fake, run, lead = await ann_in_a1(CREATE)
    await run.sync(of("p1", "p1-newer", 5, "Ann", NO_MEMBERSHIP))
    result = await run.sync(
        of("p1", "p1-stale", 2, "Ann", NO_MEMBERSHIP), of("p2", "p2", 6, "Annie", NO_MEMBERSHIP)
    )
    outcomes = {o.update_id: o for o in result.outcomes}
    assert (outcomes["p1-stale"].kind, outcomes["p1-stale"].reason) == (
        OutcomeKind.SUPERSEDED,
        REASON_STALE,
    )
    assert outcomes["p2"].exclusion_code is ExclusionCode.NO_AUDIENCE
    assert fake.leads[lead].fields["firstName"] == "Ann"


async def test_a_profile_writes_again_what_another_profile_of_its_lead_overwrote() -> None:
    fake = FakeMarketo()
    run = Run(fake)
    lead = fake.seed(email="ann@x.io", firstName="Old", lastName="Lee")
    await run.sync(of("p1", "p1-first", 1, "Ann", ("a1", "realized")))
    # p2, same e-mail, in a batch of its own: bound to the same lead, it writes Annie there
    out = only(await run.sync(of("p2", "p2", 2, "Annie", ("a1", "realized"))))
    assert (out.kind, out.lead_id) == (OutcomeKind.ACTIVATED, lead)
    assert fake.leads[lead].fields["firstName"] == "Annie"
    # p1's digest no longer says what the lead holds
    assert run.state.profiles["p1"].digest is None
    assert run.state.profiles["p1"].lead_id == lead

    # p1's newer update brings Ann back: the most recent update wins, so it is written
    await written_again(run, lead, of("p1", "p1-later", 3, "Ann", NO_MEMBERSHIP))

    # p2 now holds a stale digest in turn, while p1's again says what the lead holds
    assert run.state.profiles["p2"].digest is None
    assert run.state.profiles["p1"].digest == attributes_digest(
        {"email": "ann@x.io", "firstName": "Ann", "lastName": "Lee"}
    )
    await no_call(run, lead, of("p1", "p1-again", 4, "Ann", NO_MEMBERSHIP))


async def test_a_write_that_leaves_the_lead_as_it_was_keeps_the_other_digests() -> None:
    fake = FakeMarketo()
    run = Run(fake)
    lead = fake.seed(email="ann@x.io", firstName="Old", lastName="Lee")
    await run.sync(of("p1", "p1", 1, "Ann", ("a1", "realized")))
    await run.sync(of("p2", "p2", 2, "Ann", ("a1", "realized")))
    ann = attributes_digest({"email": "ann@x.io", "firstName": "Ann", "lastName": "Lee"})
    assert {pid: run.state.profiles[pid].digest for pid in ("p1", "p2")} == {"p1": ann, "p2": ann}

    # p1 again with what the lead holds: no call
    await no_call(run, lead, of("p1", "p1-again", 3, "Ann", NO_MEMBERSHIP))


async def test_a_profile_refusing_consent_while_another_writes_its_lead_writes_again_later() -> (
    None
):
    fake = FakeMarketo()
    run = Run(fake)
    lead = fake.seed(email="ann@x.io", firstName="Old", lastName="Lee")
    await run.sync(of("p1", "p1-first", 1, "Ann", ("a1", "realized")))
    # one batch: p1 refuses consent (its attributes are not written), p2 writes Annie to lead 7
    ann = of("p1", "p1-refuses", 2, "Ann", NO_MEMBERSHIP)
    refusal = replace(ann, profile={**ann.profile, "consents": REFUSED})
    await run.sync(refusal, of("p2", "p2", 3, "Annie", ("a1", "realized")))
    assert fake.leads[lead].fields["firstName"] == "Annie"
    assert run.state.profiles["p1"].consent_refused

    # p1 gives its consent back with Ann: the most recent update, written (and a1 joined again)
    out = only(await run.sync(of("p1", "p1-back", 4, "Ann", NO_MEMBERSHIP)))
    assert (out.kind, out.lead_id) == (OutcomeKind.ACTIVATED, lead)
    assert fake.leads[lead].fields["firstName"] == "Ann"
