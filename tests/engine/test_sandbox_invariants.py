"""The engine's invariants against the Marketo sandbox through the real client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.delivery.engine import KeyedLocks, SyncEngine
from service.domain import (
    ActionType,
    AudienceMembership,
    DesiredState,
    MembershipStatus,
    OutcomeKind,
    PersonAction,
    ProfileUpdate,
    SyncRules,
    SyncType,
)
from service.marketo.errors import OutcomeUnknownError
from service.marketo.types import RecordResult, SyncAction
from tests.engine.fakes import NO_MEMBERSHIP, PathMapper
from tests.engine.sandbox_env import Sandbox, running_sandbox

T = datetime(2026, 2, 1, tzinfo=UTC)
BY_CUSTOMER = SyncRules(
    SyncType.AUDIENCE_AND_PROFILE,
    PersonAction.UPDATE_EXISTING_AND_CREATE_NEW,
    "customerId",
    "Partners",
)
BY_EMAIL = SyncRules(
    SyncType.AUDIENCE_AND_PROFILE, PersonAction.UPDATE_EXISTING_AND_CREATE_NEW, "email"
)


def upd(
    uid: str, minute: int, members: Sequence[tuple[str, str]] = (), pid: str = "p1", **profile: Any
) -> ProfileUpdate:
    profile.setdefault("first", "F")
    profile.setdefault("last", "L")
    """With no membership given, a member of audience "a" (`[NO_MEMBERSHIP]`: none)."""
    given = () if list(members) == [NO_MEMBERSHIP] else members or (("a", "realized"),)
    return ProfileUpdate(
        update_id=uid,
        profile_id=pid,
        event_time=T + timedelta(minutes=minute),
        profile=profile,
        memberships=tuple(AudienceMembership(a, MembershipStatus(s)) for a, s in given),
    )


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with running_sandbox() as sb:
        yield sb


async def test_concurrent_updates_of_one_person_create_one_lead(sandbox: Sandbox) -> None:
    lists = await sandbox.make_lists(["A"])
    locks = KeyedLocks()
    mapper = PathMapper(dedupe="crm", dedupe_target="customerId")

    def engine() -> SyncEngine:
        return SyncEngine(
            sandbox.client, BY_CUSTOMER, mapper, audience_lists={"a": lists["A"]}, locks=locks
        )

    batches = [
        [upd(f"u{i}", i, [("a", "realized")], pid=f"p{i}", crm="C-7", email=f"c{i}@x.io")]
        for i in range(5)
    ]
    # the same person twice inside one batch as well
    batches.append(
        [
            upd("u5", 5, pid="p5", crm="C-7", email="c5@x.io"),
            upd("u6", 6, pid="p6", crm="C-7", email="c6@x.io"),
        ]
    )
    results = await asyncio.gather(*(engine().sync(b) for b in batches))

    leads = await sandbox.leads()
    assert len(leads) == 1
    (lead,) = leads
    assert lead["fields"]["customerId"] == "C-7" and lead["partition"] == "Partners"
    outcomes = [o for r in results for o in r.outcomes]
    # u5 is coalesced into the newer u6 of its batch and carries nothing of its own
    assert {o.update_id: o.kind for o in outcomes} == {
        **{f"u{i}": OutcomeKind.ACTIVATED for i in (0, 1, 2, 3, 4, 6)},
        "u5": OutcomeKind.SUPERSEDED,
    }
    assert {o.lead_id for o in outcomes if o.kind is OutcomeKind.ACTIVATED} == {lead["id"]}
    assert lead["fields"]["email"] in {f"c{i}@x.io" for i in range(7)}
    created = [o for o in outcomes if any(a.type is ActionType.CREATED for a in o.actions)]
    assert len(created) == 1
    assert (await sandbox.lists())[lists["A"]] == {lead["id"]}
    assert len(locks) == 0


async def test_stale_event_changes_nothing_and_costs_no_call(sandbox: Sandbox) -> None:
    lists = await sandbox.make_lists(["A"])
    engine = SyncEngine(sandbox.client, BY_EMAIL, PathMapper(), audience_lists={"a": lists["A"]})
    first = await engine.sync([upd("new", 10, email="s@x.io", first="Newest")])
    before_calls = await sandbox.calls()
    before_leads = await sandbox.leads()

    stale = await engine.sync(
        [upd("old", 5, email="s@x.io", first="Stale")], state=first.folded(DesiredState())
    )

    assert [(o.update_id, o.kind) for o in stale.outcomes] == [("old", OutcomeKind.SUPERSEDED)]
    assert await sandbox.leads() == before_leads
    assert before_leads[0]["fields"]["firstName"] == "Newest"
    assert await sandbox.calls() == before_calls
    assert dict(first.watermarks) == {"p1": T + timedelta(minutes=10)}


async def test_exits_remove_and_a_repeated_exit_is_not_in_list(sandbox: Sandbox) -> None:
    lists = await sandbox.make_lists(["A", "B"])
    audience_lists = {"a": lists["A"], "b": lists["B"]}
    engine = SyncEngine(sandbox.client, BY_EMAIL, PathMapper(), audience_lists=audience_lists)
    joined = await engine.sync(
        [upd("j", 1, [("a", "realized"), ("b", "realized")], email="e@x.io")]
    )
    (lead_id,) = {o.lead_id for o in joined.outcomes}
    assert await sandbox.lists() == {lists["A"]: {lead_id}, lists["B"]: {lead_id}}

    # still a member of b: the attributes, unchanged, are not written again
    state = joined.folded(DesiredState())
    left = await engine.sync([upd("x", 2, [("a", "exited")], email="e@x.io")], state=state)
    state = left.folded(state)
    again = await engine.sync([upd("y", 3, [("a", "exited")], email="e@x.io")], state=state)

    assert await sandbox.lists() == {lists["A"]: set(), lists["B"]: {lead_id}}
    # the repeated exit succeeds, but removed nothing: Marketo answered 1015 (not a member)
    for result, removal in ((left, ActionType.REMOVED), (again, ActionType.NOT_IN_LIST)):
        (outcome,) = result.outcomes
        assert outcome.kind is OutcomeKind.ACTIVATED
        assert {(a.type, a.audience_id) for a in outcome.actions} == {(removal, "a")}


async def test_batch_run_twice_creates_no_duplicate(sandbox: Sandbox) -> None:
    lists = await sandbox.make_lists(["A"])
    engine = SyncEngine(sandbox.client, BY_EMAIL, PathMapper(), audience_lists={"a": lists["A"]})
    batch = [
        upd(f"u{i}", 1, [("a", "realized")], pid=f"p{i}", email=f"r{i}@x.io") for i in range(4)
    ]

    first = await engine.sync(batch)
    second = await engine.sync(batch)  # as if the process died before retiring the batch

    assert len(await sandbox.leads()) == 4
    assert len((await sandbox.lists())[lists["A"]]) == 4
    assert {a.type for o in first.outcomes for a in o.actions} == {
        ActionType.CREATED,
        ActionType.ADDED,
    }
    assert {a.type for o in second.outcomes for a in o.actions} == {
        ActionType.UPDATED,
        ActionType.ADDED,
    }
    assert {o.update_id: o.lead_id for o in first.outcomes} == {
        o.update_id: o.lead_id for o in second.outcomes
    }


class DropBeforeCreate:
    """Arms a dropped-connection fault in the sandbox right before the first create."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.client = sandbox.client
        self.armed = True

    async def find_leads(self, *args: Any, **kw: Any) -> Any:
        return await self.client.find_leads(*args, **kw)

    async def add_to_list(self, list_id: int, lead_ids: Sequence[int]) -> Any:
        return await self.client.add_to_list(list_id, lead_ids)

    async def remove_from_list(self, list_id: int, lead_ids: Sequence[int]) -> Any:
        return await self.client.remove_from_list(list_id, lead_ids)

    async def sync_leads(
        self, records: Sequence[Mapping[str, Any]], *, action: SyncAction, **kw: Any
    ) -> list[RecordResult]:
        if action is SyncAction.CREATE_ONLY and self.armed:
            self.armed = False
            await self.sandbox.fault(path_prefix="/rest/v1/leads.json", drop=True, count=1)
        return await self.client.sync_leads(records, action=action, **kw)


class LoseAnswerAfterCreate(DropBeforeCreate):
    """The create reaches Marketo and is applied, but its answer is lost."""

    async def sync_leads(
        self, records: Sequence[Mapping[str, Any]], *, action: SyncAction, **kw: Any
    ) -> list[RecordResult]:
        results = await self.client.sync_leads(records, action=action, **kw)
        if action is SyncAction.CREATE_ONLY and self.armed:
            self.armed = False
            raise OutcomeUnknownError("answer lost", code=None)
        return results


@pytest.mark.parametrize("port", [DropBeforeCreate, LoseAnswerAfterCreate])
async def test_create_with_unknown_outcome_creates_no_duplicate(
    sandbox: Sandbox, port: type[DropBeforeCreate]
) -> None:
    lists = await sandbox.make_lists(["A"])
    engine = SyncEngine(port(sandbox), BY_EMAIL, PathMapper(), audience_lists={"a": lists["A"]})
    batch = [
        upd(f"u{i}", 1, [("a", "realized")], pid=f"p{i}", email=f"d{i}@x.io") for i in range(3)
    ]

    result = await engine.sync(batch)

    leads = await sandbox.leads()
    assert sorted(lead["fields"]["email"] for lead in leads) == ["d0@x.io", "d1@x.io", "d2@x.io"]
    assert not result.deferred
    assert {o.lead_id for o in result.outcomes} == {lead["id"] for lead in leads}
    assert (await sandbox.lists())[lists["A"]] == {lead["id"] for lead in leads}
    calls = await sandbox.calls()
    assert calls["GET /rest/v1/leads.json"] == 2  # the first look-up and the fresh one


async def test_dry_run_writes_nothing(sandbox: Sandbox) -> None:
    lists = await sandbox.make_lists(["A"])
    (known,) = await sandbox.seed({"email": "k@x.io", "firstName": "K"})
    engine = SyncEngine(sandbox.client, BY_EMAIL, PathMapper(), audience_lists={"a": lists["A"]})
    before = await sandbox.leads()

    report = await engine.dry_run(
        [
            upd("k", 1, [("a", "realized")], pid="pk", email="k@x.io"),
            upd("n", 1, [("a", "realized")], pid="pn", email="n@x.io"),
        ]
    )

    assert await sandbox.leads() == before
    assert (await sandbox.lists())[lists["A"]] == set()
    assert report.create == ("n@x.io",)
    assert [(u.dedupe_value, u.lead_id) for u in report.update] == [("k@x.io", known)]
    assert [(a.audience_id, a.add, a.remove) for a in report.audiences] == [
        ("a", ("k@x.io", "n@x.io"), ())
    ]
    writes = {k for k in await sandbox.calls() if not k.startswith("GET")}
    assert writes == {"POST /identity/oauth/token", "POST /rest/asset/v1/staticLists.json"}
