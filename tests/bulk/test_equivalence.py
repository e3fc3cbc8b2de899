"""The bulk path ends in exactly the REST path's Marketo state, with the same outcomes."""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from datetime import timedelta

import pytest

from service.domain import (
    HOLDER_RESOLVED,
    AudienceMembership,
    MembershipStatus,
    PersonAction,
    ProfileUpdate,
    SyncRules,
    SyncType,
)
from tests.bulk.scenario import EVENT, UPDATES, R, Run, make_updates, quick_policy, run

CREATE = PersonAction.UPDATE_EXISTING_AND_CREATE_NEW
UPDATE_ONLY = PersonAction.UPDATE_EXISTING_ONLY

RULES = {
    "profile only, update and create": SyncRules(SyncType.PROFILE_ONLY, CREATE, "email", "EMEA"),
    "profile only, update existing only": SyncRules(
        SyncType.PROFILE_ONLY, UPDATE_ONLY, "email", "EMEA"
    ),
    "audience only": SyncRules(SyncType.AUDIENCE_ONLY, None, "email"),
    "audience and profile, update and create": SyncRules(
        SyncType.AUDIENCE_AND_PROFILE, CREATE, "email", "EMEA"
    ),
    "audience and profile, update existing only": SyncRules(
        SyncType.AUDIENCE_AND_PROFILE, UPDATE_ONLY, "email", "EMEA"
    ),
    "audience and profile, create, no partition chosen": SyncRules(
        SyncType.AUDIENCE_AND_PROFILE, CREATE, "email"
    ),
}


def assert_same(rest: Run, bulk: Run, *, updated_by_create: frozenset[str] = frozenset()) -> None:
    """Same leads, fields, partitions, list members and outcomes. For `updated_by_create`,
    the bulk outcome says "created" where REST says "updated": an import does not tell whether
    a row inserted or updated (a lead created meanwhile by someone else was updated)."""
    assert not rest.result.deferred
    assert not bulk.result.deferred
    assert bulk.leads == rest.leads
    assert bulk.lists == rest.lists
    expected = rest.outcomes()
    for uid in updated_by_create:
        kind, actions, code, reason = expected[uid]
        assert "updated" in actions
        expected[uid] = (kind, actions - {"updated"} | {"created"}, code, reason)
    assert bulk.outcomes() == expected
    # no lead twice: the snapshot names each lead by id (seeded) or by its keys (new)
    assert len({ident for ident, _, _ in bulk.leads}) == len(bulk.leads)


@pytest.mark.parametrize("name", list(RULES))
async def test_bulk_and_rest_end_in_the_same_state(name: str) -> None:
    rules = RULES[name]
    rest = await run(rules, bulk=False)
    bulk = await run(rules, bulk=True)

    assert_same(rest, bulk)
    outcomes = bulk.outcomes()
    # the injected refusals are failures with Marketo's code and reason, on both paths
    if rules.writes_attributes:
        assert outcomes["u_badscore"][0] == "failed"
        assert outcomes["u_badscore"][2] == "1003"
        assert "leadScore" in outcomes["u_badscore"][3]
    if rules.creates_leads:
        assert outcomes["u_badmail"][:3] == ("failed", frozenset(), "1003")
    # every update has its outcome
    assert set(outcomes) == {
        "u_dup", "u_part", "u_tie", "u_leave", "u_new", "u_new2", "u_gone", "u_half", "u_nope",
        "u_badscore", "u_badmail", "u_blank", "u_plain",
    }  # fmt: skip
    # the writes went through imports, never one that could create where creating is not allowed
    if rules.writes_attributes:
        assert bulk.imports
        assert rest.imports == []
    if not rules.creates_leads:
        assert bulk.lookups <= {"id"}
    else:
        assert bulk.lookups == {"id", "email"}
        assert {part for lookup, _, part, _ in bulk.imports if lookup == "email"} == {
            rules.create_partition
        }


async def test_extra_lists_through_an_id_only_import_give_the_same_state() -> None:
    rules = RULES["audience and profile, update and create"]
    rest = await run(rules, bulk=False)
    bulk = await run(rules, bulk=True, policy=quick_policy(membership_import_min=1))
    assert_same(rest, bulk)
    assert "id" in bulk.lookups


async def test_files_split_under_the_size_bound_give_the_same_state() -> None:
    rules = RULES["audience and profile, update and create"]
    rest = await run(rules, bulk=False)
    # room for the header and one row per file
    bulk = await run(rules, bulk=True, policy=quick_policy(max_file_bytes=80))
    assert_same(rest, bulk)
    # 4 updates and 4 creations, one per file (the blank value of u_blank goes through REST;
    # u_leave leaves its only audience: its attributes are not written)
    assert len(bulk.contents) == 8
    assert all(len(list(csv.reader(io.StringIO(c.decode())))) == 2 for c in bulk.contents)


def later_batch() -> list[ProfileUpdate]:
    """A second batch over the first one's profiles: a repeat with nothing new, an e-mail
    change of a member, a refusal of consent by a member, an exit, an attribute-only change."""
    first = {uid: profile for uid, profile, _ in UPDATES}
    changes: list[tuple[str, dict[str, object], list[tuple[str, str]]]] = [
        ("u_dup", first["u_dup"], [("a1", "realized")]),
        ("u_part", {**first["u_part"], "email": "partner.new@x.io"}, []),
        ("u_new2", {**first["u_new2"], "consents": {"marketing": {"any": {"val": "dn"}}}}, []),
        ("u_new", first["u_new"], [("a1", "exited")]),
        ("u_tie", {**first["u_tie"], "first": "Tio"}, []),
    ]
    return [
        ProfileUpdate(
            update_id="v" + uid[1:],
            profile_id="p-" + uid,
            event_time=EVENT + timedelta(hours=1),
            profile=profile,
            memberships=tuple(AudienceMembership(a, MembershipStatus(s)) for a, s in members),
        )
        for uid, profile, members in changes
    ]


@pytest.mark.parametrize("name", list(RULES))
async def test_bulk_and_rest_follow_the_same_desired_state(name: str) -> None:
    rules = RULES[name]
    rest = await run(rules, bulk=False, then=later_batch())
    bulk = await run(rules, bulk=True, then=later_batch())

    assert_same(rest, bulk)
    outcomes = bulk.outcomes()
    if rules.manages_lists and rules.creates_leads:
        # the member who refused consent left both lists, the leaver left a1
        assert outcomes["v_new2"][:2] == ("excluded", frozenset({"removed:a1", "removed:a2"}))
        assert "removed:a1" in outcomes["v_new"][1]
    if rules.writes_attributes:
        assert outcomes["v_dup"][:2] == ("activated", frozenset()), "nothing new: no write"
        assert outcomes["v_tie"][:2] == ("activated", frozenset({"updated"}))
    if rules.manages_lists and rules.creates_leads:
        # the new e-mail is a new lead: it takes the memberships over
        assert outcomes["v_part"][1] == {
            "created",
            "added:a1",
            "added:a2",
            "removed:a1",
            "removed:a2",
        }


LOOKUPS = "GET /rest/v1/leads.json"
NEW_MEMBERS = [
    ("u_one", {"email": "one@x.io", "first": "O", "last": "Ne"}, [("a1", R)]),
    ("u_two", {"email": "two@x.io", "first": "T", "last": "Wo"}, [("a1", R), ("a2", R)]),
]


async def test_leads_an_import_created_are_looked_up_only_for_a_further_join() -> None:
    """An import names no ids: a lead it created into its list holds that membership as the
    lead the profile resolves to, without a look-up; only a lead with a further join (a REST
    add by id) is looked up. The next update binds the profile to its lead."""
    rules = RULES["audience and profile, update and create"]
    bulk = await run(rules, bulk=True, updates=make_updates(NEW_MEMBERS))
    rest = await run(rules, bulk=False, updates=make_updates(NEW_MEMBERS))
    assert_same(rest, bulk)

    # one look-up before the imports, one after for u_two's second list
    assert bulk.calls[LOOKUPS] == 2
    alone = await run(rules, bulk=True, updates=make_updates(NEW_MEMBERS[:1]))
    assert alone.calls[LOOKUPS] == 1, "u_one alone: no look-up after its import"
    holders = bulk.result.holders
    assert holders[("p-u_one", "a1")] == HOLDER_RESOLVED
    assert holders[("p-u_two", "a1")] == holders[("p-u_two", "a2")] != HOLDER_RESOLVED
    # u_one's applied attributes are kept, its lead is not bound yet
    assert bulk.result.profiles["p-u_one"] == replace(rest.result.profiles["p-u_one"], lead_id=None)
    assert bulk.result.profiles["p-u_two"] == rest.result.profiles["p-u_two"]

    again = [replace(u, update_id="v" + u.update_id[1:]) for u in make_updates(NEW_MEMBERS)]
    later = await run(rules, bulk=True, updates=make_updates(NEW_MEMBERS), then=again)
    by_rest = await run(rules, bulk=False, updates=make_updates(NEW_MEMBERS), then=again)
    assert (later.leads, later.lists) == (by_rest.leads, by_rest.lists)
    assert {u: o[:2] for u, o in later.outcomes().items()} == {
        "v_one": ("activated", frozenset()),
        "v_two": ("activated", frozenset()),
    }
    # the repeat writes nothing: one look-up binds u_one to its lead, which holds a1 now (REST
    # bound it at its creation: no call at all)
    assert (later.calls, by_rest.calls) == ({LOOKUPS: 1}, {})
    bound = later.result.profiles["p-u_one"]
    assert bound.lead_id is not None and bound.lead_id != HOLDER_RESOLVED
    assert later.result.holders[("p-u_one", "a1")] == bound.lead_id
