"""Profiles coalesced into one person (one dedupe value) all keep the applied state of the lead
they resolved to, not only the profile whose attributes were written: a later update of another
of them is planned against what the lead holds."""

from __future__ import annotations

from dataclasses import replace

import pytest

from service.domain import Action, ActionType, OutcomeKind, ProfileUpdate, attributes_digest
from tests.engine.fakes import NO_MEMBERSHIP, FakeMarketo
from tests.engine.test_desired_state import REFUSED, Run, calls, only
from tests.engine.test_executor import UPDATE, upd


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
