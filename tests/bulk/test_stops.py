"""A bulk batch that stops part-way keeps the list joins its imports made: a later exit or
refused consent of the same person is planned against the lists as they are (the REST path's
tests: `tests/engine/test_desired_state.py`)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from service.delivery.engine import BatchResult, SyncEngine
from service.delivery.engine.bulk import BulkSyncEngine
from service.delivery.fence import LeaseUnconfirmed
from service.domain import (
    HOLDER_RESOLVED,
    ActionType,
    AudienceMembership,
    DesiredState,
    MembershipMark,
    MembershipStatus,
    OutcomeKind,
    ProfileUpdate,
)
from service.marketo.errors import RejectedError, UnavailableError
from tests.bulk.scenario import EVENT, R, ScenarioMapper, X, quick_policy
from tests.bulk.test_equivalence import RULES
from tests.engine.sandbox_env import Sandbox, running_sandbox

BOTH = RULES["audience and profile, update and create"]
REFUSED = {"marketing": {"any": {"val": "dn"}}}


def person(
    name: str, minute: int, *members: tuple[str, str], uid: str = "", **profile: Any
) -> ProfileUpdate:
    """An update of profile `p-<name>` (e-mail `<name>@x.io`) at EVENT + `minute`."""
    return ProfileUpdate(
        update_id=uid or f"{name}-{minute}",
        profile_id=f"p-{name}",
        event_time=EVENT + timedelta(minutes=minute),
        profile={"email": f"{name}@x.io", "first": name.title(), "last": "Lee", **profile},
        memberships=tuple(AudienceMembership(a, MembershipStatus(s)) for a, s in members),
    )


STOPPED = LeaseUnconfirmed("Marketo call not sent: the lease is not confirmed")
"""What a call meets once the batch is stopped (its drainer's lease lapsed part-way)."""


class ScriptedCalls:
    """The real client, except that the calls of `operation` numbered in `errors` (from 1)
    raise the error given there instead of being sent."""

    def __init__(self, sandbox: Sandbox, operation: str, errors: dict[int, Exception]) -> None:
        self.client = sandbox.client
        self.operation = operation
        self.errors = errors
        self.seen = 0

    def __getattr__(self, name: str) -> Any:
        call = getattr(self.client, name)
        if name != self.operation:
            return call

        async def scripted(*args: Any, **kwargs: Any) -> Any:
            self.seen += 1
            if self.seen in self.errors:
                raise self.errors[self.seen]
            return await call(*args, **kwargs)

        return scripted


# Each batch joins ann (an existing lead, written by id) and bea (a new lead, created by an
# import) to a1 through the imports' listId; the second look-up of the batch is stopped.
STOPS = {
    # the next wave's look-up: the first wave's imports ran to their end
    "next wave": (
        {"wave_size": 2},
        [person("ann", 1, ("a1", R)), person("bea", 1, ("a1", R)), person("cy", 1, ("a1", R))],
    ),
    # the look-up of the REST fall-back (cy's empty city cannot go in an import)
    "REST fall-back": (
        {},
        [
            person("ann", 1, ("a1", R)),
            person("bea", 1, ("a1", R)),
            person("cy", 1, ("a1", R), city=""),
        ],
    ),
    # the look-up of the lead bea's import created, for its further join (a2, by id)
    "created lead's id": (
        {},
        [person("ann", 1, ("a1", R)), person("bea", 1, ("a1", R), ("a2", R))],
    ),
}

LATER = {
    "exit": lambda name: person(name, 3, ("a1", X), uid=f"{name}-exit"),
    "refused consent": lambda name: person(name, 3, ("a1", R), uid=f"{name}-no", consents=REFUSED),
}


@pytest.mark.parametrize("later", sorted(LATER))
@pytest.mark.parametrize("stop", sorted(STOPS))
async def test_a_join_an_import_made_before_the_batch_stopped_is_removed_by_a_later_update(
    stop: str, later: str
) -> None:
    policy, batch = STOPS[stop]
    async with running_sandbox() as sb:
        (ann,) = await sb.seed({"email": "ann@x.io", "firstName": "Old", "lastName": "Lee"})
        made = await sb.make_lists(["Audience 1", "Audience 2"])
        lists = {"a1": made["Audience 1"], "a2": made["Audience 2"]}
        tracked = ("a1", "a2")
        bulk = BulkSyncEngine(
            ScriptedCalls(sb, "find_leads", {2: STOPPED}),  # type: ignore[arg-type]
            BOTH,
            ScenarioMapper(),
            clock=sb.clock,
            policy=quick_policy(**policy),
            audience_lists=lists,
            tracked_lists=tracked,
        )
        result = await bulk.sync(batch)
        assert result.outcomes == ()
        assert {d.update_id for d in result.deferred} == {u.update_id for u in batch}
        bea = next(lead["id"] for lead in await sb.leads() if lead["fields"]["email"] == "bea@x.io")
        assert (await sb.lists())[lists["a1"]] == {ann, bea}, "the imports joined a1, then the stop"
        assert dict(result.holders) == {("p-ann", "a1"): ann, ("p-bea", "a1"): HOLDER_RESOLVED}
        state = result.folded(DesiredState())
        assert state.marks[("p-ann", "a1")] == MembershipMark(
            MembershipStatus.REALIZED, EVENT + timedelta(minutes=1)
        )
        assert ("p-bea", "a2") not in state.marks, "nothing of a2 reached Marketo"

        # the newer updates come (through REST, as a small batch) before the stopped batch is
        # retried: both leads leave a1
        rest = SyncEngine(
            sb.client, BOTH, ScenarioMapper(), audience_lists=lists, tracked_lists=tracked
        )
        newer = await rest.sync([LATER[later]("ann"), LATER[later]("bea")], state=state)
        assert newer.deferred == ()
        for outcome in newer.outcomes:
            assert (ActionType.REMOVED, "a1") in {(a.type, a.audience_id) for a in outcome.actions}
        assert (await sb.lists())[lists["a1"]] == set()
        state = newer.folded(state)
        assert ("p-ann", "a1") not in state.holders and ("p-bea", "a1") not in state.holders

        # the retried batch: its memberships of a1 are older than the newer facts, so neither
        # lead joins a1 again (cy, who had no newer update, does)
        retried: BatchResult = await rest.sync(batch, state=state)
        assert retried.deferred == ()
        again = {o.update_id: o for o in retried.outcomes}
        for name in ("ann", "bea"):
            outcome = again[f"{name}-1"]
            assert outcome.kind is not OutcomeKind.FAILED
            assert (ActionType.ADDED, "a1") not in {
                (a.type, a.audience_id) for a in outcome.actions
            }
        assert not (await sb.lists())[lists["a1"]] & {ann, bea}


class StatusUnknown:
    """The real client, except that the first `import_status` of each import finds Marketo out
    of reach: the import, queued, runs to its end in Marketo while the batch stops."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.client = sandbox.client
        self.batches: list[int] = []

    def __getattr__(self, name: str) -> Any:
        call = getattr(self.client, name)
        if name != "import_status":
            return call

        async def unknown(batch_id: int) -> Any:
            if batch_id not in self.batches:
                self.batches.append(batch_id)
                raise UnavailableError("Marketo unavailable", code="502", attempts=8)
            return await call(batch_id)

        return unknown


@pytest.mark.parametrize("name", ["ann", "bea"])  # ann's lead exists, the import creates bea's
@pytest.mark.parametrize("later", sorted(LATER))
async def test_a_join_an_import_of_unknown_status_may_have_made_is_removed_by_a_later_update(
    later: str, name: str
) -> None:
    async with running_sandbox() as sb:
        await sb.seed({"email": "ann@x.io", "firstName": "Old", "lastName": "Lee"})
        made = await sb.make_lists(["Audience 1"])
        lists = {"a1": made["Audience 1"]}
        client = StatusUnknown(sb)
        bulk = BulkSyncEngine(
            client,  # type: ignore[arg-type]
            BOTH,
            ScenarioMapper(),
            clock=sb.clock,
            policy=quick_policy(),
            audience_lists=lists,
            tracked_lists=("a1",),
        )
        batch = [person(name, 1, ("a1", R))]
        result = await bulk.sync(batch)
        assert [d.update_id for d in result.deferred] == [f"{name}-1"]
        (batch_id,) = client.batches  # the import ends in Marketo all the same
        for _ in range(60):
            if (await sb.client.import_status(batch_id)).status == "Complete":
                break
            await sb.clock.sleep(1.0)
        (lead,) = [x["id"] for x in await sb.leads() if x["fields"]["email"] == f"{name}@x.io"]
        assert (await sb.lists())[lists["a1"]] == {lead}
        state = result.folded(DesiredState())

        # the newer update comes before the stopped batch is retried: the lead leaves a1
        rest = SyncEngine(
            sb.client, BOTH, ScenarioMapper(), audience_lists=lists, tracked_lists=("a1",)
        )
        newer = await rest.sync([LATER[later](name)], state=state)
        assert newer.deferred == ()
        assert (await sb.lists())[lists["a1"]] == set()


async def test_an_unconfirmed_holder_an_id_import_adds_again_is_confirmed() -> None:
    """Ann's lead holds a1 unconfirmed (the answer to its add was lost, and the add did not
    land); the id-only import that adds it again answers for it, so the next update makes no
    list call."""
    async with running_sandbox() as sb:
        (ann,) = await sb.seed({"email": "ann@x.io", "firstName": "Old", "lastName": "Lee"})
        lists = {"a1": (await sb.make_lists(["Audience 1"]))["Audience 1"]}
        bulk = BulkSyncEngine(
            sb.client,
            BOTH,
            ScenarioMapper(),
            clock=sb.clock,
            policy=quick_policy(membership_import_min=1),
            audience_lists=lists,
            tracked_lists=("a1",),
        )
        state = (await bulk.sync([person("ann", 1, ("a1", R))])).folded(DesiredState())
        assert state.holders == {("p-ann", "a1"): ann}
        await sb.client.remove_from_list(lists["a1"], [ann])
        state = replace(state, unconfirmed=frozenset({("p-ann", "a1")}))

        again = await bulk.sync([person("ann", 2, ("a1", R), first="Anne")], state=state)
        assert again.deferred == ()
        assert (await sb.lists())[lists["a1"]] == {ann}
        state = again.folded(state)
        assert state.holders == {("p-ann", "a1"): ann}
        assert state.unconfirmed == frozenset(), "the import answered for the add"

        rest = SyncEngine(
            sb.client, BOTH, ScenarioMapper(), audience_lists=lists, tracked_lists=("a1",)
        )
        later = await rest.sync([person("ann", 3, ("a1", R), first="Ann")], state=state)
        (outcome,) = later.outcomes
        assert (ActionType.ADDED, "a1") not in {(a.type, a.audience_id) for a in outcome.actions}


REJECTED = RejectedError("1003", "a record of the request is invalid")
"""A rejection of a whole request caused by one of its records (the engine splits it)."""


@pytest.mark.parametrize(
    ("errors", "batch_size"),
    [
        # Ann's add (the first chunk) is answered, then the lease's gate refuses Bob's.
        pytest.param({2: STOPPED}, 1, id="a later chunk stopped"),
        # Ann and Bob's add is rejected as a whole and split: Ann's half is answered, then
        # the lease's gate refuses Bob's.
        pytest.param({1: REJECTED, 3: STOPPED}, 300, id="a later part of a split request"),
    ],
)
async def test_list_adds_marketo_answered_before_the_batch_stopped_are_held(
    errors: dict[int, Exception], batch_size: int
) -> None:
    """Ann's lead joined a1 before the batch stopped, so her exit before the retry removes it."""
    async with running_sandbox() as sb:
        ann, _ = await sb.seed(
            {"email": "ann@x.io", "firstName": "Ann", "lastName": "Lee"},
            {"email": "bob@x.io", "firstName": "Bob", "lastName": "Lee"},
        )
        lists = {"a1": (await sb.make_lists(["Audience 1"]))["Audience 1"]}
        stopping = SyncEngine(
            ScriptedCalls(sb, "add_to_list", errors),  # type: ignore[arg-type]
            BOTH,
            ScenarioMapper(),
            audience_lists=lists,
            tracked_lists=("a1",),
            batch_size=batch_size,
        )
        result = await stopping.sync([person("ann", 1, ("a1", R)), person("bob", 1, ("a1", R))])
        assert {d.update_id for d in result.deferred} == {"ann-1", "bob-1"}
        assert (await sb.lists())[lists["a1"]] == {ann}
        state = result.folded(DesiredState())
        assert state.holders.get(("p-ann", "a1")) == ann

        rest = SyncEngine(
            sb.client, BOTH, ScenarioMapper(), audience_lists=lists, tracked_lists=("a1",)
        )
        await rest.sync([LATER["exit"]("ann")], state=state)
        assert (await sb.lists())[lists["a1"]] == set()
