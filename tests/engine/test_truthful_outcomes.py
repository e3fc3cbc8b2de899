"""Each outcome carries only its own update's actions, and every write Marketo confirmed is on
exactly one outcome, on the REST and the bulk import paths, against the sandbox."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Sequence

import pytest

from service.delivery.engine import BatchResult, SyncEngine
from service.delivery.engine.bulk import BulkSyncEngine
from service.domain import ActionType, ExclusionCode, Outcome, OutcomeKind, ProfileUpdate
from service.store.rows import Counts, count_outcome
from tests.bulk.scenario import quick_policy
from tests.engine.fakes import NO_MEMBERSHIP, PathMapper
from tests.engine.sandbox_env import Sandbox, running_sandbox
from tests.engine.test_sandbox_invariants import BY_EMAIL, upd

Actions = set[tuple[ActionType, str | None]]


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with running_sandbox() as sb:
        yield sb


def engine_for(sandbox: Sandbox, lists: dict[str, int], bulk: bool) -> SyncEngine:
    if bulk:
        return BulkSyncEngine(
            sandbox.client,
            BY_EMAIL,
            PathMapper(),
            clock=sandbox.clock,
            policy=quick_policy(),
            audience_lists=lists,
        )
    return SyncEngine(sandbox.client, BY_EMAIL, PathMapper(), audience_lists=lists)


def actions(result: BatchResult) -> dict[str, Actions]:
    return {o.update_id: {(a.type, a.audience_id) for a in o.actions} for o in result.outcomes}


def counted(outcomes: Sequence[Outcome]) -> tuple[int, int, int, int]:
    """(created, updated, added, removed) as the store counts these outcomes."""
    counts = Counts()
    for outcome in outcomes:
        count_outcome(counts, outcome)
    return (counts.created, counts.updated, counts.added, counts.removed)


def coalesced_batch() -> list[ProfileUpdate]:
    """Three updates of one person (two profiles, one e-mail in two spellings), two others (bob
    a member of no audience)."""
    return [
        upd("ann-1", 1, [("a", "realized")], pid="p1", email="ann@x.io", first="A1"),
        upd("ann-2", 2, [("b", "realized")], pid="p1", email="ann@x.io", first="A2"),
        upd("ann-3", 3, [NO_MEMBERSHIP], pid="p2", email="Ann@X.io", first="A3"),
        upd("bob", 1, [NO_MEMBERSHIP], pid="p3", email="bob@x.io"),
        upd("carl", 1, [("a", "realized")], pid="p4", email="carl@x.io"),
    ]


@pytest.mark.parametrize("bulk", [False, True], ids=["rest", "bulk"])
async def test_coalesced_updates_each_show_only_their_own_actions(
    sandbox: Sandbox, bulk: bool
) -> None:
    lists = await sandbox.make_lists(["A", "B"])
    engine = engine_for(sandbox, {"a": lists["A"], "b": lists["B"]}, bulk)

    result = await engine.sync(coalesced_batch())

    leads = {str(lead["fields"]["email"]).lower(): lead for lead in await sandbox.leads()}
    assert sorted(leads) == ["ann@x.io", "carl@x.io"]  # bob is not exported
    assert leads["ann@x.io"]["fields"]["firstName"] == "A3"
    ann, carl = leads["ann@x.io"]["id"], leads["carl@x.io"]["id"]
    assert await sandbox.lists() == {lists["A"]: {ann, carl}, lists["B"]: {ann}}
    kinds = {o.update_id: (o.kind, o.exclusion_code) for o in result.outcomes}
    assert kinds.pop("bob") == (OutcomeKind.EXCLUDED, ExclusionCode.NO_AUDIENCE)
    assert set(kinds.values()) == {(OutcomeKind.ACTIVATED, None)}
    assert actions(result) == {
        "ann-1": {(ActionType.ADDED, "a")},
        "ann-2": {(ActionType.ADDED, "b")},
        "ann-3": {(ActionType.CREATED, None)},
        "bob": set(),
        "carl": {(ActionType.CREATED, None), (ActionType.ADDED, "a")},
    }
    # two leads created, three memberships added: each counted once
    assert counted(result.outcomes) == (2, 0, 3, 0)
    assert {o.update_id: o.lead_id for o in result.outcomes if o.dedupe_value == "Ann@X.io"} == {
        "ann-1": ann,
        "ann-2": ann,
        "ann-3": ann,
    }


@pytest.mark.parametrize("bulk", [False, True], ids=["rest", "bulk"])
async def test_an_exit_for_a_lead_not_in_the_list_is_not_removed(
    sandbox: Sandbox, bulk: bool
) -> None:
    lists = await sandbox.make_lists(["A", "B"])
    (outsider,) = await sandbox.seed({"email": "out@x.io", "firstName": "O"})
    engine = engine_for(sandbox, {"a": lists["A"], "b": lists["B"]}, bulk)
    joined = await engine.sync([upd("in-1", 1, [("a", "realized")], pid="p1", email="in@x.io")])
    (member,) = {o.lead_id for o in joined.outcomes}
    calls_before = Counter(await sandbox.calls())

    result = await engine.sync(
        [
            upd("in-2", 2, [("a", "exited")], pid="p1", email="in@x.io"),
            upd("out", 2, [("a", "exited")], pid="p2", email="out@x.io"),
            # a lead created now is in no list: its exit needs no call
            upd("new", 2, [("a", "realized"), ("b", "exited")], pid="p3", email="new@x.io"),
        ]
    )

    # (a lead created by an import has no id in its outcome)
    new = {lead["fields"]["email"]: lead["id"] for lead in await sandbox.leads()}["new@x.io"]
    assert await sandbox.lists() == {lists["A"]: {new}, lists["B"]: set()}
    assert outsider not in (member, new)
    # in-2 leaves its only audience, out was never a member: no attributes are written
    assert actions(result) == {
        "in-2": {(ActionType.REMOVED, "a")},
        "out": {(ActionType.NOT_IN_LIST, "a")},
        "new": {
            (ActionType.CREATED, None),
            (ActionType.ADDED, "a"),
            (ActionType.NOT_IN_LIST, "b"),
        },
    }
    assert counted(result.outcomes) == (1, 0, 1, 1)
    calls = Counter(await sandbox.calls()) - calls_before
    removals = {name: n for name, n in calls.items() if "leads" in name and "DELETE" in name}
    assert sum(removals.values()) == 1, calls  # one removal call, for list A only
