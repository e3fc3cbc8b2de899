"""Resolve then write, against an in-memory Marketo."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service.delivery.engine import KeyedLocks, SyncEngine
from service.domain import (
    HOLDER_RESOLVED,
    Action,
    ActionType,
    AudienceMembership,
    DesiredState,
    ExclusionCode,
    MembershipMark,
    MembershipStatus,
    OutcomeKind,
    PersonAction,
    ProfileUpdate,
    SyncRules,
    SyncType,
    WritePolicy,
)
from service.marketo.errors import (
    ConfigurationError,
    OutcomeUnknownError,
    QuotaExhaustedError,
    RejectedError,
    UnavailableError,
)
from service.marketo.types import SyncAction
from tests.engine.fakes import MEMBER_OF, NO_MEMBERSHIP, FakeMarketo, PathMapper, at

CREATE = SyncRules(
    SyncType.AUDIENCE_AND_PROFILE, PersonAction.UPDATE_EXISTING_AND_CREATE_NEW, "email", "Europe"
)
UPDATE_ONLY = SyncRules(SyncType.AUDIENCE_AND_PROFILE, PersonAction.UPDATE_EXISTING_ONLY, "email")
PROFILE_CREATE = SyncRules(
    SyncType.PROFILE_ONLY, PersonAction.UPDATE_EXISTING_AND_CREATE_NEW, "email"
)
AUDIENCE_ONLY = SyncRules(SyncType.AUDIENCE_ONLY, None, "email")
LISTS = {"a1": 11, "a2": 12}
UPDATE = f"sync_leads:{SyncAction.UPDATE_ONLY}"
CREATE_CALL = f"sync_leads:{SyncAction.CREATE_ONLY}"


def upd(
    uid: str, minute: int, *members: tuple[str, str], pid: str = "", **profile: Any
) -> ProfileUpdate:
    """An update of `uid`; with no membership given, a member of `MEMBER_OF` (pass
    `NO_MEMBERSHIP` for an update that carries none)."""
    given = () if members == (NO_MEMBERSHIP,) else members or ((MEMBER_OF, "realized"),)
    return ProfileUpdate(
        update_id=uid,
        profile_id=pid or uid,
        event_time=at(minute),
        profile=profile,
        memberships=tuple(AudienceMembership(a, MembershipStatus(s)) for a, s in given),
    )


def person(
    uid: str, email: str, *members: tuple[str, str], minute: int = 1, **extra: Any
) -> ProfileUpdate:
    return upd(uid, minute, *members, email=email, first="F" + uid, last="L" + uid, **extra)


def engine(fake: FakeMarketo, rules: SyncRules, **kw: Any) -> SyncEngine:
    return SyncEngine(fake, rules, PathMapper(), audience_lists=LISTS, **kw)


def by_update(result: Any) -> dict[str, Any]:
    return {o.update_id: o for o in result.outcomes}


async def test_most_recently_updated_duplicate_wins_ties_by_highest_id() -> None:
    fake = FakeMarketo()
    old = fake.seed("Default", at(1), email="dup@x.io", firstName="old")
    recent = fake.seed("Europe", at(9), email="DUP@x.io", firstName="recent")
    tie_low = fake.seed("Default", at(5), email="tie@x.io")
    tie_high = fake.seed("Asia", at(5), email="tie@x.io")
    result = await engine(fake, UPDATE_ONLY).sync(
        [person("u1", "dup@x.io", ("a1", "realized")), person("u2", "tie@x.io", ("a1", "realized"))]
    )
    outcomes = by_update(result)
    assert outcomes["u1"].lead_id == recent
    assert outcomes["u2"].lead_id == tie_high
    assert fake.leads[recent].fields["firstName"] == "Fu1"
    assert fake.leads[old].fields["firstName"] == "old"
    assert "firstName" not in fake.leads[tie_low].fields
    assert fake.lists[11] == {recent, tie_high}
    assert outcomes["u1"].actions == (Action(ActionType.UPDATED), Action(ActionType.ADDED, "a1"))
    # the lead moved by nobody: updates by id carry no partition
    assert fake.leads[recent].partition == "Europe"


async def test_create_in_chosen_partition_and_add_new_lead_to_lists() -> None:
    fake = FakeMarketo()
    result = await engine(fake, CREATE).sync([person("u1", "new@x.io", ("a1", "realized"))])
    (outcome,) = result.outcomes
    assert outcome.kind is OutcomeKind.ACTIVATED
    assert outcome.actions == (Action(ActionType.CREATED), Action(ActionType.ADDED, "a1"))
    assert outcome.lead_id is not None
    lead = fake.leads[outcome.lead_id]
    assert lead.partition == "Europe"
    assert lead.fields == {"email": "new@x.io", "firstName": "Fu1", "lastName": "Lu1"}
    assert fake.lists[11] == {outcome.lead_id}
    assert dict(result.watermarks) == {"u1": at(1)}


async def test_unmatched_without_creation_or_required_attributes_is_excluded() -> None:
    fake = FakeMarketo()
    updates = [person("u1", "a@x.io"), upd("u2", 1, email="b@x.io", first="Bo")]
    excluded_update_only = by_update(await engine(fake, UPDATE_ONLY).sync(updates))
    assert {k: (o.kind, o.reason) for k, o in excluded_update_only.items()} == {
        "u1": (OutcomeKind.EXCLUDED, "no matching lead"),
        "u2": (OutcomeKind.EXCLUDED, "no matching lead"),
    }
    created = by_update(await engine(fake, PROFILE_CREATE).sync(updates))
    assert created["u1"].kind is OutcomeKind.ACTIVATED
    assert (created["u2"].kind, created["u2"].reason) == (
        OutcomeKind.EXCLUDED,
        "missing required attributes: lastName",
    )
    assert (created["u2"].exclusion_code, created["u2"].field) == (
        ExclusionCode.MISSING_REQUIRED,
        "lastName",
    )
    assert {o.exclusion_code for o in excluded_update_only.values()} == {
        ExclusionCode.NO_MATCHING_LEAD
    }
    assert len(fake.leads) == 1


async def test_audience_only_never_writes_attributes_and_exit_removes() -> None:
    fake = FakeMarketo()
    member = fake.seed(email="m@x.io", firstName="keep")
    outsider = fake.seed(email="o@x.io")
    fake.lists[11] = {member}
    result = await engine(fake, AUDIENCE_ONLY).sync(
        [
            person("u1", "m@x.io", ("a1", "exited"), ("a2", "realized")),
            person("u2", "o@x.io", ("a1", "exited")),
            person("u3", "ghost@x.io", ("a1", "exited")),
            person("u4", "new@x.io", ("a1", "realized")),
        ]
    )
    outcomes = by_update(result)
    assert fake.count(UPDATE) == 0 and fake.count(CREATE_CALL) == 0
    assert fake.leads[member].fields == {"email": "m@x.io", "firstName": "keep"}
    assert fake.lists[11] == set() and fake.lists[12] == {member}
    assert outcomes["u1"].actions == (
        Action(ActionType.REMOVED, "a1"),
        Action(ActionType.ADDED, "a2"),
    )
    # removing a lead that is not a member (1015) is success
    assert outcomes["u2"].kind is OutcomeKind.ACTIVATED
    assert outcomes["u2"].lead_id == outsider
    # never a member: nothing to export
    assert (outcomes["u3"].kind, outcomes["u3"].exclusion_code) == (
        OutcomeKind.EXCLUDED,
        ExclusionCode.NO_AUDIENCE,
    )
    assert (outcomes["u4"].kind, outcomes["u4"].reason) == (
        OutcomeKind.EXCLUDED,
        "no matching lead",
    )
    assert len(fake.leads) == 2


async def test_lead_created_meanwhile_is_looked_up_and_updated() -> None:
    fake = FakeMarketo()
    fake.before[CREATE_CALL] = lambda: fake.seed(email="race@x.io", firstName="other")
    result = await engine(fake, CREATE).sync([person("u1", "race@x.io")])
    (outcome,) = result.outcomes
    assert len(fake.leads) == 1
    (lead,) = fake.leads.values()
    assert outcome.kind is OutcomeKind.ACTIVATED and outcome.lead_id == lead.id
    assert outcome.actions == (Action(ActionType.UPDATED), Action(ActionType.ADDED, "a1"))
    assert lead.fields["firstName"] == "Fu1"
    assert fake.count("find_leads") == 2


async def test_create_with_lost_answer_is_looked_up_not_recreated() -> None:
    fake = FakeMarketo()
    fake.after_apply[CREATE_CALL] = [OutcomeUnknownError("connection dropped", code=None)]
    result = await engine(fake, CREATE).sync([person("u1", "lost@x.io", ("a1", "realized"))])
    (outcome,) = result.outcomes
    assert len(fake.leads) == 1
    (lead,) = fake.leads.values()
    assert outcome.kind is OutcomeKind.ACTIVATED and outcome.lead_id == lead.id
    assert fake.lists[11] == {lead.id}
    assert fake.count(CREATE_CALL) == 1


async def test_create_whose_answer_is_lost_before_applying_is_retried_after_lookup() -> None:
    fake = FakeMarketo()
    fake.faults[CREATE_CALL] = [OutcomeUnknownError("timeout", code="604")]
    result = await engine(fake, CREATE).sync([person("u1", "t@x.io")])
    assert [o.actions for o in result.outcomes] == [
        (Action(ActionType.CREATED), Action(ActionType.ADDED, "a1"))
    ]
    assert len(fake.leads) == 1
    assert [name for name, _ in fake.calls] == [
        "find_leads",
        CREATE_CALL,
        "find_leads",
        CREATE_CALL,
        "add_to_list",
    ]


async def test_request_rejected_for_one_record_is_split_to_isolate_it() -> None:
    fake = FakeMarketo()
    for i in range(8):
        fake.seed(email=f"p{i}@x.io")

    def reject(record: Any) -> RejectedError | None:
        return RejectedError("609", "Invalid JSON") if record.get("city") == "bad" else None

    fake.reject_if = reject
    updates = [person(f"u{i}", f"p{i}@x.io", city="bad" if i == 5 else "ok") for i in range(8)]
    outcomes = by_update(await engine(fake, UPDATE_ONLY).sync(updates))
    assert (outcomes["u5"].kind, outcomes["u5"].marketo_code) == (OutcomeKind.FAILED, "609")
    assert all(outcomes[f"u{i}"].kind is OutcomeKind.ACTIVATED for i in range(8) if i != 5)
    # 8 -> 4+4 -> (2+2) -> (1+1): 1 + 2 + 2 + 2 calls
    assert fake.count(UPDATE) == 7


def refusing_every_write() -> tuple[FakeMarketo, list[ProfileUpdate]]:
    """Eight known people, and a Marketo that refuses every write as a configuration error."""
    fake = FakeMarketo()
    for i in range(8):
        fake.seed(email=f"p{i}@x.io")
    fake.reject_if = lambda record: ConfigurationError("1006", "Field 'loyaltyTier' not found")
    return fake, [person(f"u{i}", f"p{i}@x.io") for i in range(8)]


async def test_a_configuration_error_stops_the_batch_unsplit_and_defers_it() -> None:
    fake, updates = refusing_every_write()

    result = await engine(fake, UPDATE_ONLY).sync(updates)

    assert fake.count(UPDATE) == 1, "no record causes it: never split"
    assert result.outcomes == ()
    assert sorted(d.update_id for d in result.deferred) == sorted(u.update_id for u in updates)
    assert isinstance(result.error, ConfigurationError)


async def test_an_engine_told_so_fails_a_configuration_error_unsplit() -> None:
    fake, updates = refusing_every_write()

    result = await engine(fake, UPDATE_ONLY, configuration_stops=False).sync(updates)

    assert fake.count(UPDATE) == 1
    assert {(o.kind, o.marketo_code) for o in result.outcomes} == {(OutcomeKind.FAILED, "1006")}
    assert len(result.outcomes) == 8 and result.deferred == ()


async def test_record_level_reason_becomes_failed_with_code() -> None:
    fake = FakeMarketo()
    lead = fake.seed(email="a@x.io")

    async def sync_leads(records: Any, **kw: Any) -> Any:
        from service.marketo.types import Reason, RecordResult

        return [RecordResult("skipped", None, (Reason("1003", "Invalid value for field 'x'"),))]

    fake.sync_leads = sync_leads  # type: ignore[method-assign]
    (outcome,) = (await engine(fake, UPDATE_ONLY).sync([person("u1", "a@x.io")])).outcomes
    assert (outcome.kind, outcome.marketo_code, outcome.lead_id) == (
        OutcomeKind.FAILED,
        "1003",
        lead,
    )
    assert outcome.reason == "Invalid value for field 'x'"


async def test_transient_error_defers_without_outcome_or_watermark() -> None:
    fake = FakeMarketo()
    fake.seed(email="a@x.io")
    fake.faults[UPDATE] = [UnavailableError("608", code="608", attempts=3)]
    result = await engine(fake, UPDATE_ONLY).sync(
        [person("u1", "a@x.io"), upd("u2", 1, first="no dedupe")]
    )
    assert [(o.update_id, o.kind) for o in result.outcomes] == [("u2", OutcomeKind.EXCLUDED)]
    assert [(d.update_id, d.error.code) for d in result.deferred] == [("u1", "608")]
    assert dict(result.watermarks) == {"u2": at(1)}


async def test_quota_during_lists_defers_only_unfinished_persons() -> None:
    fake = FakeMarketo()
    fake.seed(email="a@x.io")
    fake.seed(email="b@x.io")
    fake.faults["add_to_list"] = [QuotaExhaustedError(1_800_000_000.0)]
    # u2 is a member already: its attribute update needs no list call
    result = await engine(fake, UPDATE_ONLY).sync(
        [person("u1", "a@x.io", ("a1", "realized")), person("u2", "b@x.io", NO_MEMBERSHIP)],
        state=DesiredState(
            marks={("u2", "a1"): MembershipMark(MembershipStatus.REALIZED, at(0))},
            holders={("u2", "a1"): HOLDER_RESOLVED},
        ),
    )
    assert [(o.update_id, o.actions) for o in result.outcomes] == [
        ("u2", (Action(ActionType.UPDATED),))
    ]
    (deferred,) = result.deferred
    assert deferred.update_id == "u1" and deferred.paused_until == 1_800_000_000.0
    assert result.error is deferred.error


@pytest.mark.parametrize("shared", [True, False])
async def test_concurrent_batches_for_one_person_create_one_lead(shared: bool) -> None:
    # dedupe on a custom field: createOnly (which dedupes on email) cannot save us, the lock must
    fake = FakeMarketo()
    rules = SyncRules(SyncType.PROFILE_ONLY, PersonAction.UPDATE_EXISTING_AND_CREATE_NEW, "crmId")
    shared_locks = KeyedLocks()

    def make() -> SyncEngine:
        mapper = PathMapper(dedupe="crm", dedupe_target="crmId")
        return SyncEngine(
            fake,
            rules,
            mapper,
            audience_lists=LISTS,
            locks=shared_locks if shared else KeyedLocks(),
        )

    if not shared:
        # Both batches look the person up before either creates it (planning runs in a worker
        # thread, so the batches' interleaving is not otherwise fixed): the race the lock is for.
        both_looked_up = asyncio.Barrier(2)
        find = fake.find_leads

        async def find_together(*args: Any, **kwargs: Any) -> Any:
            found = await find(*args, **kwargs)
            await both_looked_up.wait()
            return found

        fake.find_leads = find_together  # type: ignore[method-assign]

    results = await asyncio.gather(
        make().sync([person("u1", "one@x.io", crm="C-1", minute=1)]),
        make().sync([person("u2", "two@x.io", crm="c-1", minute=2)]),
    )
    if not shared:
        assert len(fake.leads) == 2  # the race the lock exists for
        return
    assert len(fake.leads) == 1
    actions = sorted(a.type for r in results for o in r.outcomes for a in o.actions)
    assert actions == [ActionType.CREATED, ActionType.UPDATED]
    assert len(shared_locks) == 0


async def test_dry_run_looks_up_and_writes_nothing() -> None:
    fake = FakeMarketo()
    known = fake.seed(email="k@x.io")
    report = await engine(fake, CREATE).dry_run(
        [
            person("u1", "k@x.io", ("a1", "realized"), ("a2", "exited")),
            person("u2", "new@x.io", ("a1", "realized"), ("a2", "exited")),
            upd("u3", 1, first="x"),
        ]
    )
    assert {name for name, _ in fake.calls} == {"find_leads"}
    assert report.create == ("new@x.io",)
    assert [(u.dedupe_value, u.lead_id) for u in report.update] == [("k@x.io", known)]
    assert [(a.audience_id, a.list_id, a.add, a.remove) for a in report.audiences] == [
        ("a1", 11, ("k@x.io", "new@x.io"), ()),
        ("a2", 12, (), ("k@x.io",)),
    ]
    assert [(o.update_id, o.kind) for o in report.outcomes] == [("u3", OutcomeKind.EXCLUDED)]


async def test_large_batch_uses_the_fewest_calls() -> None:
    fake = FakeMarketo()
    for i in range(700):
        fake.seed(email=f"e{i}@x.io")
    updates = [person(f"u{i}", f"e{i}@x.io", ("a1", "realized")) for i in range(1000)]
    result = await engine(fake, CREATE).sync(updates)
    assert len(result.outcomes) == 1000 and not result.deferred
    assert fake.count("find_leads") == 4  # 1000 / 300
    assert fake.count(UPDATE) == 3  # 700 / 300
    assert fake.count(CREATE_CALL) == 1  # 300
    assert fake.count("add_to_list") == 4  # 1000 / 300
    assert len(fake.leads) == 1000 and len(fake.lists[11]) == 1000


async def test_1005_for_a_key_held_by_another_lead_fails_without_retrying() -> None:
    # dedupe on a custom field; the e-mail (Marketo's create dedupe) belongs to another lead
    fake = FakeMarketo()
    other = fake.seed(email="shared@x.io", crmId="OTHER")
    rules = SyncRules(SyncType.PROFILE_ONLY, PersonAction.UPDATE_EXISTING_AND_CREATE_NEW, "crmId")
    mapper = PathMapper(dedupe="crm", dedupe_target="crmId")
    result = await SyncEngine(fake, rules, mapper, audience_lists=LISTS).sync(
        [person("u1", "shared@x.io", crm="MINE")]
    )
    (outcome,) = result.outcomes
    assert (outcome.kind, outcome.marketo_code) == (OutcomeKind.FAILED, "1005")
    assert fake.count(CREATE_CALL) == 1 and fake.count("find_leads") == 2
    assert list(fake.leads) == [other]


async def test_create_whose_outcome_stays_unknown_is_deferred() -> None:
    fake = FakeMarketo()
    lost = OutcomeUnknownError("timeout", code="604")
    fake.faults[CREATE_CALL] = [lost, lost, lost]
    result = await engine(fake, CREATE).sync([person("u1", "t@x.io")])
    assert result.outcomes == ()
    assert [(d.update_id, d.error) for d in result.deferred] == [("u1", lost)]
    assert result.watermarks == {}
    # every retry of the create was preceded by a fresh look-up
    assert [name for name, _ in fake.calls] == ["find_leads", CREATE_CALL] * 3


# -- write policies and the dedupe field -----------------------------------------------------

POLICIES = {"firstName": WritePolicy.IF_EMPTY, "city": WritePolicy.NEVER_CLEAR}


async def test_if_empty_keeps_a_marketo_value_and_fills_an_empty_one() -> None:
    fake = FakeMarketo()
    held = fake.seed(email="held@x.io", firstName="Marketo", lastName="M")
    blank = fake.seed(email="blank@x.io", firstName="  ", lastName="B")
    result = await engine(fake, CREATE, write_policies=POLICIES).sync(
        [person("u1", "held@x.io"), person("u2", "blank@x.io")]
    )
    outcomes = by_update(result)
    assert fake.leads[held].fields["firstName"] == "Marketo"
    assert fake.leads[held].fields["lastName"] == "Lu1"
    assert fake.leads[blank].fields["firstName"] == "Fu2"
    assert outcomes["u1"].kept_fields == ("firstName",)
    assert outcomes["u2"].kept_fields == ()
    # one look-up, asking for the policy fields beside the dedupe field
    assert fake.count("find_leads") == 1
    assert {"email", "firstName", "city"} <= set(fake.asked[0])


async def test_never_clear_skips_an_empty_value_and_writes_a_real_one() -> None:
    fake = FakeMarketo()
    kept = fake.seed(email="k@x.io", city="Paris")
    changed = fake.seed(email="c@x.io", city="Lyon")
    empty = fake.seed(email="e@x.io")
    result = await engine(fake, CREATE, write_policies=POLICIES).sync(
        [
            person("u1", "k@x.io", city=""),
            person("u2", "c@x.io", city="Nice"),
            person("u3", "e@x.io", city=" "),
        ]
    )
    outcomes = by_update(result)
    assert fake.leads[kept].fields["city"] == "Paris"
    assert fake.leads[changed].fields["city"] == "Nice"
    assert "city" not in fake.leads[empty].fields
    assert outcomes["u1"].kept_fields == ("city",)
    assert outcomes["u2"].kept_fields == ()
    # Marketo held nothing: nothing was kept
    assert outcomes["u3"].kept_fields == ()


async def test_without_policies_an_empty_value_clears_marketo() -> None:
    fake = FakeMarketo()
    lead = fake.seed(email="k@x.io", city="Paris", firstName="Marketo")
    result = await engine(fake, CREATE).sync([person("u1", "k@x.io", city="")])
    assert fake.leads[lead].fields["city"] == ""
    assert fake.leads[lead].fields["firstName"] == "Fu1"
    assert result.outcomes[0].kept_fields == ()


async def test_a_created_lead_gets_if_empty_values_but_no_empty_never_clear_value() -> None:
    fake = FakeMarketo()
    result = await engine(fake, CREATE, write_policies=POLICIES).sync(
        [person("u1", "new@x.io", city="")]
    )
    (outcome,) = result.outcomes
    assert outcome.actions[0] == Action(ActionType.CREATED)
    assert outcome.lead_id is not None
    assert fake.leads[outcome.lead_id].fields == {
        "email": "new@x.io",
        "firstName": "Fu1",
        "lastName": "Lu1",
    }
    assert outcome.kept_fields == ()


async def test_dry_run_says_which_values_the_policies_would_keep() -> None:
    fake = FakeMarketo()
    known = fake.seed(email="k@x.io", firstName="Marketo", city="Paris")
    report = await engine(fake, CREATE, write_policies=POLICIES).dry_run(
        [person("u1", "k@x.io", city="")]
    )
    assert [(u.lead_id, u.kept_fields) for u in report.update] == [(known, ("city", "firstName"))]
    assert fake.leads[known].fields["firstName"] == "Marketo"


async def test_update_by_id_never_writes_the_dedupe_field_back() -> None:
    fake = FakeMarketo()
    lead = fake.seed(email="Ann.Lee@X.io")
    result = await engine(fake, CREATE).sync([person("u1", " ann.lee@x.io ")])
    assert result.outcomes[0].lead_id == lead
    ((action, record),) = fake.written
    assert action == str(SyncAction.UPDATE_ONLY)
    assert record == {"id": lead, "firstName": "Fu1", "lastName": "Lu1"}
    # Marketo's spelling of the address stays
    assert fake.leads[lead].fields["email"] == "Ann.Lee@X.io"


async def test_a_create_carries_the_dedupe_field() -> None:
    fake = FakeMarketo()
    await engine(fake, CREATE).sync([person("u1", "new@x.io")])
    ((action, record),) = fake.written
    assert action == str(SyncAction.CREATE_ONLY)
    assert record["email"] == "new@x.io"


async def test_stale_attributes_are_not_written_and_their_memberships_are() -> None:
    fake = FakeMarketo()
    known = fake.seed(email="a@x.io", firstName="New")
    result = await engine(fake, CREATE).sync(
        [
            person("known", "a@x.io", ("a1", "realized"), minute=5),
            person("unknown", "b@x.io", ("a1", "realized"), minute=5),
        ],
        state=DesiredState(
            watermarks={"known": at(9), "unknown": at(9)},
            marks={("known", "a2"): MembershipMark(MembershipStatus.REALIZED, at(9))},
            holders={("known", "a2"): HOLDER_RESOLVED},
        ),
    )
    outcomes = by_update(result)
    assert outcomes["known"].kind is OutcomeKind.ACTIVATED
    assert outcomes["known"].actions == (Action(ActionType.ADDED, "a1"),)
    assert outcomes["known"].reason.startswith("attributes superseded")
    # an unmatched person with stale attributes only is not created from them
    assert (outcomes["unknown"].kind, outcomes["unknown"].exclusion_code) == (
        OutcomeKind.EXCLUDED,
        ExclusionCode.NO_MATCHING_LEAD,
    )
    assert fake.count(UPDATE) == fake.count(CREATE_CALL) == 0
    assert fake.leads[known].fields["firstName"] == "New"
    assert fake.lists[11] == {known}
    assert dict(result.watermarks) == {}
    # the desired status of every delivered membership fact is kept, whatever its outcome
    assert dict(result.membership_marks) == {
        ("known", "a1"): MembershipMark(MembershipStatus.REALIZED, at(5)),
        ("unknown", "a1"): MembershipMark(MembershipStatus.REALIZED, at(5)),
    }
    # the holder of a2 (stored before holders were) is now the resolved lead by its id
    assert dict(result.holders) == {("known", "a1"): known, ("known", "a2"): known}
