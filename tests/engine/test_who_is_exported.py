"""Who is exported: the members of the destination's activated audiences, for every sync type,
against an in-memory Marketo with the state folded in batch after batch."""

from __future__ import annotations

import pytest

from service.delivery.engine.executor import REASON_NOTHING_TO_WRITE
from service.domain import (
    Action,
    ActionType,
    ExclusionCode,
    MembershipMark,
    MembershipStatus,
    OutcomeKind,
    PersonAction,
    SyncRules,
    SyncType,
)
from tests.engine.fakes import NO_MEMBERSHIP, FakeMarketo, at
from tests.engine.test_desired_state import (
    LIST_CALLS,
    Run,
    ann,
    calls,
    only,
    stop_at_second,
    stopped,
)
from tests.engine.test_executor import CREATE, CREATE_CALL, UPDATE, UPDATE_ONLY

PROFILE_ONLY = SyncRules(
    SyncType.PROFILE_ONLY, PersonAction.UPDATE_EXISTING_AND_CREATE_NEW, "email"
)
SYNC_TYPES = pytest.mark.parametrize(
    "rules", [PROFILE_ONLY, CREATE], ids=["profile only", "audience and profile"]
)


@SYNC_TYPES
async def test_a_profile_never_a_member_creates_nothing(rules: SyncRules) -> None:
    fake = FakeMarketo()
    run = Run(fake, rules)
    out = only(await run.sync(ann(1, NO_MEMBERSHIP)))
    assert (out.kind, out.exclusion_code, out.actions) == (
        OutcomeKind.EXCLUDED,
        ExclusionCode.NO_AUDIENCE,
        (),
    )
    assert fake.calls == [] and fake.leads == {}
    # a membership of an audience the destination did not activate does not count
    out = only(await run.sync(ann(2, ("zz", "realized"))))
    assert out.exclusion_code is ExclusionCode.NO_AUDIENCE and fake.calls == []


@SYNC_TYPES
async def test_an_existing_lead_of_a_non_member_is_not_updated(rules: SyncRules) -> None:
    fake = FakeMarketo()
    lead = fake.seed(email="ann@x.io", firstName="Marketo")
    out = only(await Run(fake, rules).sync(ann(1, NO_MEMBERSHIP, first="Changed")))
    assert out.exclusion_code is ExclusionCode.NO_AUDIENCE
    assert fake.leads[lead].fields["firstName"] == "Marketo" and fake.calls == []


async def test_a_member_that_exits_its_only_audience_is_removed_then_not_written() -> None:
    fake = FakeMarketo()
    run = Run(fake)
    lead = only(await run.sync(ann(1, ("a1", "realized")))).lead_id
    assert fake.lists[11] == {lead}
    gone = only(await run.sync(ann(2, ("a1", "exited"), first="Leaving")))
    assert (gone.kind, gone.actions) == (
        OutcomeKind.ACTIVATED,
        (Action(ActionType.REMOVED, "a1"),),
    )
    assert fake.lists[11] == set() and fake.count(UPDATE) == 0
    # a later attribute update of the former member is not exported
    later = only(await run.sync(ann(3, NO_MEMBERSHIP, first="Later")))
    assert (later.kind, later.exclusion_code) == (OutcomeKind.EXCLUDED, ExclusionCode.NO_AUDIENCE)
    assert fake.count(UPDATE) == 0 and fake.leads[lead].fields["firstName"] == "Ann"


async def test_profile_only_records_the_exit_and_stops_exporting() -> None:
    fake = FakeMarketo()
    run = Run(fake, PROFILE_ONLY)
    lead = only(await run.sync(ann(1, ("a1", "realized")))).lead_id
    assert fake.count(CREATE_CALL) == 1
    assert run.state.marks[("p1", "a1")] == MembershipMark(MembershipStatus.REALIZED, at(1))
    member = only(await run.sync(ann(2, NO_MEMBERSHIP, first="Anna")))
    assert (member.kind, member.actions) == (OutcomeKind.ACTIVATED, (Action(ActionType.UPDATED),))
    gone = only(await run.sync(ann(3, ("a1", "exited"), first="Gone")))
    assert (gone.kind, gone.exclusion_code) == (OutcomeKind.EXCLUDED, ExclusionCode.NO_AUDIENCE)
    assert run.state.marks[("p1", "a1")] == MembershipMark(MembershipStatus.EXITED, at(3))
    assert fake.leads[lead].fields["firstName"] == "Anna"
    assert calls(fake, *LIST_CALLS) == 0


@SYNC_TYPES
async def test_an_attribute_update_of_a_member_is_exported_without_list_calls(
    rules: SyncRules,
) -> None:
    fake = FakeMarketo()
    run = Run(fake, rules)
    lead = only(await run.sync(ann(1, ("a1", "realized")))).lead_id
    list_calls = calls(fake, *LIST_CALLS)
    out = only(await run.sync(ann(2, NO_MEMBERSHIP, first="Anna")))
    assert (out.kind, out.lead_id, out.actions) == (
        OutcomeKind.ACTIVATED,
        lead,
        (Action(ActionType.UPDATED),),
    )
    assert fake.leads[lead].fields["firstName"] == "Anna"
    assert calls(fake, *LIST_CALLS) == list_calls
    # the same attributes again: nothing to write, no call at all
    before = calls(fake)
    same = only(await run.sync(ann(3, NO_MEMBERSHIP, first="Anna")))
    assert (same.kind, same.reason) == (OutcomeKind.ACTIVATED, REASON_NOTHING_TO_WRITE)
    assert calls(fake) == before


async def test_a_lagging_entry_after_a_non_member_update_writes_the_newest_attributes() -> None:
    # the attribute update came first while the profile was in no audience: not applied, but
    # the newest attributes all the same; the older entry that exports the profile writes them
    fake = FakeMarketo()
    run = Run(fake)
    early = only(await run.sync(ann(5, NO_MEMBERSHIP, first="Newer")))
    assert early.exclusion_code is ExclusionCode.NO_AUDIENCE and fake.calls == []
    assert run.state.watermarks["p1"] == at(5)
    entry = only(await run.sync(ann(3, ("a1", "realized"), first="Entry")))
    assert entry.kind is OutcomeKind.ACTIVATED
    assert set(entry.actions) == {Action(ActionType.CREATED), Action(ActionType.ADDED, "a1")}
    (lead,) = fake.leads.values()
    assert lead.fields["firstName"] == "Newer" and fake.lists[11] == {lead.id}
    assert run.state.unapplied == {}
    # applied now: another lagging entry writes no attributes
    before = calls(fake, UPDATE)
    late = only(await run.sync(ann(4, ("a2", "realized"), first="Late")))
    assert set(late.actions) == {Action(ActionType.ADDED, "a2")}
    assert calls(fake, UPDATE) == before and lead.fields["firstName"] == "Newer"


async def test_a_non_member_keeps_only_its_newest_attributes() -> None:
    fake = FakeMarketo()
    run = Run(fake)
    only(await run.sync(ann(5, NO_MEMBERSHIP, first="Five")))
    # older than the newest seen: superseded, the newest kept
    stale = only(await run.sync(ann(4, NO_MEMBERSHIP, first="Four")))
    assert stale.kind is OutcomeKind.EXCLUDED and fake.calls == []
    only(await run.sync(ann(6, NO_MEMBERSHIP, first="Six")))
    assert run.state.unapplied["p1"].event_time == at(6)
    only(await run.sync(ann(1, ("a1", "realized"), first="One")))
    (lead,) = fake.leads.values()
    assert lead.fields["firstName"] == "Six"


async def test_an_exit_keeps_its_attributes_the_newest_for_a_lagging_entry() -> None:
    # the update that leaves the only audience writes no attributes, yet they are the newest:
    # an older entry that exports the profile again writes them, not its own
    fake = FakeMarketo()
    run = Run(fake)
    lead = only(await run.sync(ann(1, ("a1", "realized"), first="One"))).lead_id
    gone = only(await run.sync(ann(3, ("a1", "exited"), first="Three")))
    assert (gone.kind, gone.actions) == (OutcomeKind.ACTIVATED, (Action(ActionType.REMOVED, "a1"),))
    assert fake.leads[lead].fields["firstName"] == "One" and fake.lists[11] == set()
    assert run.state.watermarks["p1"] == at(3)
    assert run.state.unapplied["p1"].event_time == at(3)

    back = only(await run.sync(ann(2, ("a2", "realized"), first="Two")))
    assert (back.kind, set(back.actions)) == (
        OutcomeKind.ACTIVATED,
        {Action(ActionType.UPDATED), Action(ActionType.ADDED, "a2")},
    )
    assert fake.leads[lead].fields["firstName"] == "Three", "the newest attributes win"
    assert fake.lists[12] == {lead} and fake.lists[11] == set()
    assert run.state.unapplied == {}


async def test_a_refusal_that_removes_keeps_a_lagging_entry_from_writing() -> None:
    # consent refused at 3 while a member: the lead leaves, nothing of the older entry at 2
    # (attributes or a join) is written afterwards
    fake = FakeMarketo()
    run = Run(fake)
    lead = only(await run.sync(ann(1, ("a1", "realized"), first="One"))).lead_id
    refused = {"marketing": {"any": {"val": "n"}}}
    out = only(await run.sync(ann(3, consents=refused, first="Three")))
    assert (out.exclusion_code, out.actions) == (
        ExclusionCode.CONSENT_REFUSED,
        (Action(ActionType.REMOVED, "a1"),),
    )
    late = only(await run.sync(ann(2, ("a2", "realized"), first="Two")))
    assert (late.exclusion_code, late.actions) == (ExclusionCode.CONSENT_REFUSED, ())
    assert fake.leads[lead].fields["firstName"] == "One"
    assert fake.lists[11] == set() and fake.lists.get(12, set()) == set()


async def test_an_exit_stopped_mid_batch_keeps_neither_watermark_nor_attributes() -> None:
    fake = FakeMarketo()
    run = Run(fake, UPDATE_ONLY, tracked=("a1", "a2"))
    lead = fake.seed(email="ann@x.io")
    await run.sync(ann(1, ("a1", "realized"), ("a2", "realized"), first="One"))
    stop_at_second(fake, "remove_from_list")
    exit_ = ann(3, ("a1", "exited"), ("a2", "exited"), first="Three")
    result = await stopped(run, exit_)
    assert fake.lists[11] == set() and fake.lists[12] == {lead}
    assert (dict(result.watermarks), dict(result.unapplied)) == ({}, {})
    assert run.state.watermarks["p1"] == at(1) and run.state.unapplied == {}

    # retried: the last removal goes out, then the attributes are the newest, not applied
    retried = only(await run.sync(exit_))
    assert set(retried.actions) == {
        Action(ActionType.NOT_IN_LIST, "a1"),
        Action(ActionType.REMOVED, "a2"),
    }
    assert run.state.watermarks["p1"] == at(3)
    assert run.state.unapplied["p1"].profile["first"] == "Three"
    assert fake.leads[lead].fields["firstName"] == "One"
