"""The seed's lead-matching table, end to end: engine -> real client -> Marketo sandbox.

Expected states are written out by hand from PRODUCT.md's table and rules.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from service.delivery.engine import SyncEngine
from service.domain import (
    AudienceMembership,
    MembershipStatus,
    OutcomeKind,
    PersonAction,
    ProfileUpdate,
    SyncRules,
    SyncType,
)
from tests.engine.fakes import PathMapper
from tests.engine.sandbox_env import Sandbox, running_sandbox

EVENT = datetime(2026, 1, 1, 12, tzinfo=UTC)

# (email, partition, firstName, lastName, updatedAt); ids follow this order
SEEDED = [
    ("dup@x.io", "Default", "Old", "Dup", "2025-01-01T00:00:00Z"),
    ("dup@x.io", "EMEA", "Newer", "Dup", "2025-06-01T00:00:00Z"),  # most recent of three
    ("DUP@x.io", "Partners", "Oldest", "Dup", "2024-01-01T00:00:00Z"),
    ("partner@x.io", "Partners", "Pat", "Ner", "2025-03-01T00:00:00Z"),
    ("tie@x.io", "Default", "TieA", None, "2025-02-01T00:00:00Z"),
    ("tie@x.io", "Partners", "TieB", None, "2025-02-01T00:00:00Z"),  # same time, higher id
    ("leaver@x.io", "Default", "Lea", "Ver", "2025-01-01T00:00:00Z"),  # member of a1
    ("bystander@x.io", "Default", "By", "Stander", "2025-01-01T00:00:00Z"),  # member of a2
]

Lead = tuple[str, str, str | None, str | None]
BEFORE: list[Lead] = [(e, p, f, last) for e, p, f, last, _ in SEEDED]

R, X = "realized", "exited"
UPDATES = [
    ("u_dup", "dup@x.io", "Dana", "Dup2", {}, [("a1", R)]),
    ("u_part", "partner@x.io", "Pat", "Partner2", {}, [("a1", R), ("a2", "existing")]),
    ("u_tie", "tie@x.io", "Tia", "Tie2", {}, [("a2", R)]),
    ("u_leave", "leaver@x.io", "Lea", "Left", {}, [("a1", X)]),
    ("u_new", "new@x.io", "Nia", "New", {}, [("a1", R)]),
    ("u_gone", "gone@x.io", "Go", "Ne", {}, [("a1", X)]),
    ("u_half", "half@x.io", "Hal", None, {}, [("a2", R)]),
    (
        "u_nope",
        "nope@x.io",
        "No",
        "Pe",
        {"consents": {"marketing": {"any": {"val": "n"}}}},
        [("a1", R)],
    ),
]

ACTIVATED, EXCLUDED = OutcomeKind.ACTIVATED, OutcomeKind.EXCLUDED
Expected = tuple[OutcomeKind, frozenset[str], str]
NO_LEAD: Expected = (EXCLUDED, frozenset(), "no matching lead")
NO_LAST: Expected = (EXCLUDED, frozenset(), "missing required attributes: lastName")
NO_CONSENT: Expected = (EXCLUDED, frozenset(), "marketing consent refused")
# a member of no activated audience: nothing of it is exported but its exit
NO_AUDIENCE: Expected = (EXCLUDED, frozenset(), "no membership of an activated audience")
UPDATED_ATTRS = {
    ("dup@x.io", "EMEA"): ("Dana", "Dup2"),
    ("partner@x.io", "Partners"): ("Pat", "Partner2"),
    ("tie@x.io", "Partners"): ("Tia", "Tie2"),
}
LISTS_BEFORE = {"a1": {("leaver@x.io", "Default")}, "a2": {("bystander@x.io", "Default")}}
LISTS_AFTER = {
    "a1": {("dup@x.io", "EMEA"), ("partner@x.io", "Partners")},
    "a2": {("bystander@x.io", "Default"), ("partner@x.io", "Partners"), ("tie@x.io", "Partners")},
}


def act(*names: str) -> frozenset[str]:
    return frozenset(names)


def updated(leads: list[Lead]) -> list[Lead]:
    out = []
    for email, partition, first, last in leads:
        first, last = UPDATED_ATTRS.get((email, partition), (first, last))
        out.append((email, partition, first, last))
    return out


@dataclass(frozen=True)
class Row:
    name: str
    rules: SyncRules
    leads: list[Lead]
    lists: dict[str, set[tuple[str, str]]]
    outcomes: dict[str, tuple[OutcomeKind, frozenset[str], str]]


ROWS = [
    Row(
        "profile only, update and create",
        SyncRules(
            SyncType.PROFILE_ONLY, PersonAction.UPDATE_EXISTING_AND_CREATE_NEW, "email", "EMEA"
        ),
        [*updated(BEFORE), ("new@x.io", "EMEA", "Nia", "New")],
        LISTS_BEFORE,
        {
            "u_dup": (ACTIVATED, act("updated"), ""),
            "u_part": (ACTIVATED, act("updated"), ""),
            "u_tie": (ACTIVATED, act("updated"), ""),
            "u_leave": NO_AUDIENCE,
            "u_new": (ACTIVATED, act("created"), ""),
            "u_gone": NO_AUDIENCE,
            "u_half": NO_LAST,
            "u_nope": NO_CONSENT,
        },
    ),
    Row(
        "profile only, update existing only",
        SyncRules(SyncType.PROFILE_ONLY, PersonAction.UPDATE_EXISTING_ONLY, "email", "EMEA"),
        updated(BEFORE),
        LISTS_BEFORE,
        {
            "u_dup": (ACTIVATED, act("updated"), ""),
            "u_part": (ACTIVATED, act("updated"), ""),
            "u_tie": (ACTIVATED, act("updated"), ""),
            "u_leave": NO_AUDIENCE,
            "u_new": NO_LEAD,
            "u_gone": NO_AUDIENCE,
            "u_half": NO_LEAD,
            "u_nope": NO_CONSENT,
        },
    ),
    Row(
        "audience only",
        SyncRules(SyncType.AUDIENCE_ONLY, None, "email"),
        BEFORE,
        LISTS_AFTER,
        {
            "u_dup": (ACTIVATED, act("added:a1"), ""),
            "u_part": (ACTIVATED, act("added:a1", "added:a2"), ""),
            "u_tie": (ACTIVATED, act("added:a2"), ""),
            "u_leave": (ACTIVATED, act("removed:a1"), ""),
            "u_new": NO_LEAD,
            "u_gone": NO_AUDIENCE,
            "u_half": NO_LEAD,
            "u_nope": NO_CONSENT,
        },
    ),
    Row(
        "audience and profile, update and create",
        SyncRules(
            SyncType.AUDIENCE_AND_PROFILE,
            PersonAction.UPDATE_EXISTING_AND_CREATE_NEW,
            "email",
            "EMEA",
        ),
        [*updated(BEFORE), ("new@x.io", "EMEA", "Nia", "New")],
        {"a1": LISTS_AFTER["a1"] | {("new@x.io", "EMEA")}, "a2": LISTS_AFTER["a2"]},
        {
            "u_dup": (ACTIVATED, act("updated", "added:a1"), ""),
            "u_part": (ACTIVATED, act("updated", "added:a1", "added:a2"), ""),
            "u_tie": (ACTIVATED, act("updated", "added:a2"), ""),
            "u_leave": (ACTIVATED, act("removed:a1"), ""),  # its last audience: no attributes
            "u_new": (ACTIVATED, act("created", "added:a1"), ""),
            "u_gone": NO_AUDIENCE,  # only leaving an audience: no lead is created for that
            "u_half": NO_LAST,
            "u_nope": NO_CONSENT,
        },
    ),
    Row(
        "audience and profile, update existing only",
        SyncRules(
            SyncType.AUDIENCE_AND_PROFILE, PersonAction.UPDATE_EXISTING_ONLY, "email", "EMEA"
        ),
        updated(BEFORE),
        LISTS_AFTER,
        {
            "u_dup": (ACTIVATED, act("updated", "added:a1"), ""),
            "u_part": (ACTIVATED, act("updated", "added:a1", "added:a2"), ""),
            "u_tie": (ACTIVATED, act("updated", "added:a2"), ""),
            "u_leave": (ACTIVATED, act("removed:a1"), ""),
            "u_new": NO_LEAD,
            "u_gone": NO_AUDIENCE,
            "u_half": NO_LEAD,
            "u_nope": NO_CONSENT,
        },
    ),
    Row(
        "audience and profile, create, no partition chosen",
        SyncRules(
            SyncType.AUDIENCE_AND_PROFILE, PersonAction.UPDATE_EXISTING_AND_CREATE_NEW, "email"
        ),
        [*updated(BEFORE), ("new@x.io", "Default", "Nia", "New")],
        {"a1": LISTS_AFTER["a1"] | {("new@x.io", "Default")}, "a2": LISTS_AFTER["a2"]},
        {
            "u_dup": (ACTIVATED, act("updated", "added:a1"), ""),
            "u_part": (ACTIVATED, act("updated", "added:a1", "added:a2"), ""),
            "u_tie": (ACTIVATED, act("updated", "added:a2"), ""),
            "u_leave": (ACTIVATED, act("removed:a1"), ""),
            "u_new": (ACTIVATED, act("created", "added:a1"), ""),
            "u_gone": NO_AUDIENCE,
            "u_half": NO_LAST,
            "u_nope": NO_CONSENT,
        },
    ),
]


def make_updates() -> list[ProfileUpdate]:
    out = []
    for uid, email, first, last, extra, members in UPDATES:
        profile: dict[str, Any] = {"email": email, "first": first, **extra}
        if last is not None:
            profile["last"] = last
        out.append(
            ProfileUpdate(
                update_id=uid,
                profile_id="p-" + uid,
                event_time=EVENT,
                profile=profile,
                memberships=tuple(AudienceMembership(a, MembershipStatus(s)) for a, s in members),
            )
        )
    return out


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with running_sandbox() as sb:
        yield sb


async def seed_world(sb: Sandbox) -> tuple[dict[str, int], list[int]]:
    ids = await sb.seed(
        *(
            {
                "email": e,
                "firstName": f,
                "partition": p,
                "updatedAt": t,
                **({"lastName": last} if last else {}),
            }
            for e, p, f, last, t in SEEDED
        )
    )
    lists = await sb.make_lists(["Audience 1", "Audience 2"])
    audience_lists = {"a1": lists["Audience 1"], "a2": lists["Audience 2"]}
    await sb.client.add_to_list(audience_lists["a1"], [ids[6]])
    await sb.client.add_to_list(audience_lists["a2"], [ids[7]])
    return audience_lists, ids


def snapshot_leads(dump: list[dict[str, Any]]) -> list[Lead]:
    return sorted(
        (
            (
                lead["fields"]["email"],
                lead["partition"],
                lead["fields"].get("firstName"),
                lead["fields"].get("lastName"),
            )
            for lead in dump
        ),
        key=repr,
    )


def describe(outcome: Any) -> tuple[OutcomeKind, frozenset[str], str]:
    names = frozenset(
        a.type.value + (f":{a.audience_id}" if a.audience_id else "") for a in outcome.actions
    )
    return (outcome.kind, names, outcome.reason)


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
async def test_seed_matching_table(sandbox: Sandbox, row: Row) -> None:
    audience_lists, ids = await seed_world(sandbox)
    engine = SyncEngine(sandbox.client, row.rules, PathMapper(), audience_lists=audience_lists)

    result = await engine.sync(make_updates())

    assert not result.deferred
    assert {o.update_id: describe(o) for o in result.outcomes} == row.outcomes
    dump = await sandbox.leads()
    assert len(dump) == len(row.leads)
    assert snapshot_leads(dump) == sorted(row.leads, key=repr)
    where = {lead["id"]: (lead["fields"]["email"], lead["partition"]) for lead in dump}
    members = await sandbox.lists()
    assert {a: {where[i] for i in members[list_id]} for a, list_id in audience_lists.items()} == (
        row.lists
    )
    # the lead each activated outcome names is the one the seed says: most recent, else highest id
    chosen = {o.update_id: o.lead_id for o in result.outcomes if o.kind is ACTIVATED}
    expected_ids: Mapping[str, int] = {"u_dup": ids[1], "u_part": ids[3], "u_tie": ids[5]}
    for uid, lead_id in expected_ids.items():
        assert chosen[uid] == lead_id
