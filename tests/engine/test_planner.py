"""Planning: supersede, exclude and coalesce, with no Marketo."""

from __future__ import annotations

from typing import Any

from service.delivery.engine import plan_batch as plan_any
from service.domain import (
    AudienceMembership,
    ExclusionCode,
    MembershipMark,
    MembershipStatus,
    OutcomeKind,
    PersonAction,
    ProfileUpdate,
    SyncRules,
    SyncType,
)
from tests.engine.fakes import MEMBER_OF, NO_MEMBERSHIP, PathMapper, at

BOTH = SyncRules(
    SyncType.AUDIENCE_AND_PROFILE, PersonAction.UPDATE_EXISTING_AND_CREATE_NEW, "email"
)
AUDIENCE_ONLY = SyncRules(SyncType.AUDIENCE_ONLY, None, "email")
PROFILE_ONLY = SyncRules(SyncType.PROFILE_ONLY, PersonAction.UPDATE_EXISTING_ONLY, "email")
LISTS = {"a1": 11, "a2": 12}
REALIZED = MembershipStatus.REALIZED
EXITED = MembershipStatus.EXITED


def upd(
    uid: str, pid: str, minute: int, *members: tuple[str, MembershipStatus], **profile: Any
) -> ProfileUpdate:
    """With no membership given, a member of `MEMBER_OF` (`NO_MEMBERSHIP`: none)."""
    given: tuple[tuple[str, Any], ...] = (
        () if members == (NO_MEMBERSHIP,) else members or ((MEMBER_OF, REALIZED),)
    )
    return ProfileUpdate(
        update_id=uid,
        profile_id=pid,
        event_time=at(minute),
        profile=profile,
        memberships=tuple(AudienceMembership(a, MembershipStatus(s)) for a, s in given),
    )


def plan_batch(*args: Any, **kwargs: Any) -> Any:
    """`plan_batch` for a destination that activated `LISTS` unless told otherwise."""
    kwargs.setdefault("audience_lists", LISTS)
    return plan_any(*args, **kwargs)


def kinds(plan: Any) -> dict[str, tuple[OutcomeKind, str]]:
    return {o.update_id: (o.kind, o.reason) for o in plan.outcomes}


def test_update_older_than_watermark_is_superseded_equal_is_not() -> None:
    plan = plan_batch(
        [upd("u1", "p1", 5, NO_MEMBERSHIP, email="a@x.io"), upd("u2", "p2", 10, email="b@x.io")],
        BOTH,
        PathMapper(),
        watermarks={"p1": at(6), "p2": at(10)},
    )
    assert [o.update_id for o in plan.outcomes] == ["u1"]
    assert plan.outcomes[0].kind is OutcomeKind.SUPERSEDED
    assert [p.dedupe_value for p in plan.persons] == ["b@x.io"]


def test_latest_event_wins_and_memberships_merge_per_audience() -> None:
    plan = plan_batch(
        [
            upd("late", "p1", 20, ("a1", EXITED), email="a@x.io", city="Oslo"),
            upd("early", "p1", 10, ("a1", REALIZED), ("a2", REALIZED), email="a@x.io", city="Rome"),
            upd("middle", "p1", 15, email="a@x.io", city="Bern"),
        ],
        BOTH,
        PathMapper(),
        audience_lists=LISTS,
    )
    (person,) = plan.persons
    assert person.fields["city"] == "Oslo"
    assert dict(person.memberships) == {"a1": EXITED, "a2": REALIZED}
    # "early" still carries the winning a2 membership; "middle" carries nothing that wins
    assert sorted(u.update_id for u in person.updates) == ["early", "late"]
    assert kinds(plan) == {
        "middle": (OutcomeKind.SUPERSEDED, "superseded by a newer update in the same batch")
    }
    assert dict(person.watermarks) == {"p1": at(20)}


def test_profiles_sharing_a_dedupe_value_coalesce_case_insensitively() -> None:
    plan = plan_batch(
        [
            upd("u1", "p1", 30, ("a1", REALIZED), email="Ann@X.io", first="New"),
            upd("u2", "p2", 10, ("a2", REALIZED), email="ann@x.io", first="Old"),
        ],
        BOTH,
        PathMapper(),
        audience_lists=LISTS,
    )
    (person,) = plan.persons
    assert person.fields["firstName"] == "New"
    assert dict(person.memberships) == {"a1": REALIZED, "a2": REALIZED}
    assert {u.update_id for u in person.updates} == {"u1", "u2"}
    assert dict(person.watermarks) == {"p1": at(30), "p2": at(10)}


def test_exclusions_name_their_reason() -> None:
    plan = plan_batch(
        [
            upd("consent", "p1", 1, email="a@x.io", consents={"marketing": {"any": {"val": "n"}}}),
            upd("nodedupe", "p2", 1, first="Ann"),
            upd("rejected", "p3", 1, email="c@x.io", city="!"),
            upd("fine", "p4", 1, email="d@x.io", consents={"marketing": {"any": {"val": "y"}}}),
        ],
        BOTH,
        PathMapper(),
    )
    assert kinds(plan) == {
        "consent": (OutcomeKind.EXCLUDED, "marketing consent refused"),
        "nodedupe": (OutcomeKind.EXCLUDED, "no dedupe value"),
        "rejected": (OutcomeKind.EXCLUDED, "value rejected by mapping: city: not a valid value"),
    }
    assert {o.update_id: (o.exclusion_code, o.field) for o in plan.outcomes} == {
        "consent": (ExclusionCode.CONSENT_REFUSED, ""),
        "nodedupe": (ExclusionCode.MISSING_DEDUPE_VALUE, "email"),
        "rejected": (ExclusionCode.VALUE_REJECTED, "city"),
    }
    assert [p.dedupe_value for p in plan.persons] == ["d@x.io"]
    assert dict(plan.watermarks) == {"p1": at(1), "p2": at(1), "p3": at(1)}


def test_consent_refused_later_blocks_the_older_update() -> None:
    plan = plan_batch(
        [
            upd("old", "p1", 1, email="a@x.io"),
            upd("new", "p1", 2, email="a@x.io", consents={"marketing": {"any": {"val": "n"}}}),
        ],
        BOTH,
        PathMapper(),
    )
    assert plan.persons == ()
    assert kinds(plan)["new"][0] is OutcomeKind.EXCLUDED
    assert kinds(plan)["old"][0] is OutcomeKind.SUPERSEDED


def test_custom_consent_path() -> None:
    rules = SyncRules(
        SyncType.PROFILE_ONLY, PersonAction.UPDATE_EXISTING_ONLY, "email", consent_path="c.mkt"
    )
    plan = plan_batch([upd("u", "p", 1, email="a@x.io", c={"mkt": "n"})], rules, PathMapper())
    assert kinds(plan) == {"u": (OutcomeKind.EXCLUDED, "marketing consent refused")}


def test_memberships_of_unknown_audiences_are_ignored_and_profile_only_keeps_them() -> None:
    updates = [upd("u", "p", 1, ("a1", REALIZED), ("zz", REALIZED), email="a@x.io")]
    (both,) = plan_batch(updates, BOTH, PathMapper(), audience_lists=LISTS).persons
    assert dict(both.memberships) == {"a1": REALIZED}
    # Profile only keeps no list but records the desired status: it decides who is exported
    (profile,) = plan_batch(updates, PROFILE_ONLY, PathMapper(), audience_lists=LISTS).persons
    assert dict(profile.memberships) == {"a1": REALIZED}
    assert dict(profile.desired) == {"a1": True} and not profile.holders


def test_a_profile_of_no_activated_audience_is_excluded_for_every_sync_type() -> None:
    for rules in (BOTH, PROFILE_ONLY, AUDIENCE_ONLY):
        plan = plan_batch(
            [
                upd("never", "p1", 1, NO_MEMBERSHIP, email="a@x.io"),
                upd("other", "p2", 1, ("zz", REALIZED), email="b@x.io"),
                upd("member", "p3", 1, email="c@x.io"),
            ],
            rules,
            PathMapper(),
        )
        assert {o.update_id: o.exclusion_code for o in plan.outcomes} == {
            "never": ExclusionCode.NO_AUDIENCE,
            "other": ExclusionCode.NO_AUDIENCE,
        }, rules
        assert [p.updates[0].update_id for p in plan.persons] == ["member"]


def test_an_attribute_update_of_a_stored_member_is_exported_without_list_change() -> None:
    plan = plan_batch(
        [upd("attrs", "p1", 5, NO_MEMBERSHIP, email="a@x.io", city="Oslo")],
        BOTH,
        PathMapper(),
        membership_marks={("p1", "a1"): MembershipMark(REALIZED, at(1))},
    )
    (person,) = plan.persons
    assert person.fields["city"] == "Oslo" and not person.no_audience
    assert dict(person.memberships) == {} and dict(person.desired) == {"a1": True}


def test_an_exit_from_the_last_audience_removes_but_writes_no_attributes() -> None:
    plan = plan_batch(
        [upd("exit", "p1", 5, ("a1", EXITED), email="a@x.io", city="Oslo")],
        BOTH,
        PathMapper(),
        membership_marks={("p1", "a1"): MembershipMark(REALIZED, at(1))},
    )
    (person,) = plan.persons
    assert person.no_audience and not person.writes_attributes and not person.fields
    assert dict(person.desired) == {"a1": False} and "a1" in person.holders
    # Profile only has no list to leave: nothing is exported, the exit is recorded
    plan = plan_batch(
        [upd("exit", "p1", 5, ("a1", EXITED), email="a@x.io", city="Oslo")],
        PROFILE_ONLY,
        PathMapper(),
        membership_marks={("p1", "a1"): MembershipMark(REALIZED, at(1))},
    )
    assert not plan.persons
    assert [o.exclusion_code for o in plan.outcomes] == [ExclusionCode.NO_AUDIENCE]
    assert plan.membership_marks[("p1", "a1")] == MembershipMark(EXITED, at(5))


def test_audience_only_without_activated_membership_is_excluded() -> None:
    plan = plan_batch(
        [upd("u", "p", 1, ("zz", REALIZED), email="a@x.io")],
        AUDIENCE_ONLY,
        PathMapper(),
        audience_lists=LISTS,
    )
    assert plan.persons == ()
    assert kinds(plan)["u"][0] is OutcomeKind.EXCLUDED
    assert plan.outcomes[0].exclusion_code is ExclusionCode.NO_AUDIENCE


def test_mapper_raising_missing_dedupe_value_is_no_dedupe_value() -> None:
    plan = plan_batch([upd("u", "p", 1, first="Ann")], BOTH, PathMapper(raise_on_missing=True))
    assert kinds(plan) == {"u": (OutcomeKind.EXCLUDED, "no dedupe value")}
    assert plan.outcomes[0].exclusion_code is ExclusionCode.MISSING_DEDUPE_VALUE


def test_a_dedupe_value_with_a_comma_is_excluded_saying_why() -> None:
    plan = plan_batch(
        [upd("comma", "p1", 1, email="a,b@x.io"), upd("fine", "p2", 1, email="c@x.io")],
        BOTH,
        PathMapper(),
    )
    (outcome,) = plan.outcomes
    assert (outcome.update_id, outcome.kind) == ("comma", OutcomeKind.EXCLUDED)
    assert (outcome.exclusion_code, outcome.field) == (
        ExclusionCode.DEDUPE_VALUE_HAS_COMMA,
        "email",
    )
    assert "comma" in outcome.reason and "separator" in outcome.reason
    assert outcome.dedupe_value == "a,b@x.io"
    assert [p.dedupe_value for p in plan.persons] == ["c@x.io"]


def test_every_excluded_outcome_carries_a_dedupe_value_it_knows() -> None:
    refused = {"marketing": {"any": {"val": "n"}}}
    plan = plan_batch(
        [
            upd("consent", "p1", 1, email="a@x.io", consents=refused),
            upd("rejected", "p2", 1, email="c@x.io", city="!"),
            upd("nodedupe", "p3", 1, first="Ann", consents=refused),
        ],
        BOTH,
        PathMapper(),
    )
    assert {o.update_id: o.dedupe_value for o in plan.outcomes} == {
        "consent": "a@x.io",
        "rejected": None,  # the mapping refused the profile: no value is known
        "nodedupe": None,
    }


def test_dedupe_values_differing_in_case_and_spaces_are_one_person() -> None:
    plan = plan_batch(
        [upd("u1", "p1", 1, email=" Ann@X.io"), upd("u2", "p2", 2, email="ann@x.io ")],
        BOTH,
        PathMapper(),
    )
    (person,) = plan.persons
    assert {u.update_id for u in person.updates} == {"u2"}
    assert [o.update_id for o in plan.outcomes] == ["u1"]


# -- ordering per kind of fact ---------------------------------------------------------------


def ordered(
    updates: list[ProfileUpdate],
    watermarks: dict[str, Any] | None = None,
    membership_marks: dict[tuple[str, str], MembershipMark] | None = None,
) -> Any:
    """The plan of `updates` (Audience and profile, a1 and a2 activated) against these marks."""
    return plan_batch(
        updates,
        BOTH,
        PathMapper(),
        watermarks=watermarks,
        membership_marks=membership_marks,
        audience_lists=LISTS,
    )


def test_a_lagging_entry_is_delivered_without_its_stale_attributes() -> None:
    plan = ordered(
        [upd("entry", "p1", 10, ("a1", REALIZED), email="a@x.io", city="Old")],
        watermarks={"p1": at(20)},
    )
    assert plan.outcomes == ()
    (person,) = plan.persons
    assert dict(person.memberships) == {"a1": REALIZED}
    assert not person.writes_attributes
    assert dict(person.fields) == {}
    assert person.stale_attributes == {"entry"}
    assert dict(person.watermarks) == {}
    assert dict(person.membership_marks) == {("p1", "a1"): MembershipMark(REALIZED, at(10))}


def test_a_membership_older_than_its_own_mark_is_dropped_alone() -> None:
    plan = ordered(
        [upd("u", "p1", 10, ("a1", EXITED), ("a2", REALIZED), email="a@x.io", city="Rome")],
        watermarks={"p1": at(5)},
        membership_marks={("p1", "a1"): MembershipMark(REALIZED, at(11))},
    )
    (person,) = plan.persons
    assert dict(person.memberships) == {"a2": REALIZED}
    assert person.writes_attributes and person.fields["city"] == "Rome"
    assert person.stale_attributes == frozenset()
    assert dict(person.membership_marks) == {("p1", "a2"): MembershipMark(REALIZED, at(10))}


def test_an_update_with_every_fact_stale_is_superseded() -> None:
    plan = ordered(
        [
            upd("exit", "p1", 5, ("a1", EXITED), email="a@x.io"),
            upd("other", "p1", 5, ("a9", EXITED), email="a@x.io"),
        ],
        watermarks={"p1": at(20)},
        membership_marks={("p1", "a1"): MembershipMark(REALIZED, at(10))},
    )
    assert plan.persons == ()
    assert kinds(plan) == {
        "exit": (OutcomeKind.SUPERSEDED, "older than the update already applied for this profile"),
        "other": (OutcomeKind.SUPERSEDED, "older than the update already applied for this profile"),
    }


def test_a_membership_mark_never_supersedes_attributes() -> None:
    plan = ordered(
        [upd("attrs", "p1", 10, email="a@x.io", city="Rome")],
        watermarks={"p1": at(5)},
        membership_marks={("p1", "a1"): MembershipMark(REALIZED, at(30))},
    )
    (person,) = plan.persons
    assert person.fields["city"] == "Rome"
    assert dict(person.memberships) == {}
    assert dict(person.watermarks) == {"p1": at(10)}


def test_in_a_batch_the_newest_fact_of_each_kind_wins() -> None:
    plan = ordered(
        [
            upd("attrs", "p1", 30, NO_MEMBERSHIP, email="a@x.io", city="New"),
            upd("entry", "p1", 20, ("a1", REALIZED), email="a@x.io", city="Mid"),
            upd("lagging", "p1", 10, ("a1", EXITED), ("a2", REALIZED), email="a@x.io"),
            upd("stale", "p1", 8, NO_MEMBERSHIP, email="a@x.io", city="Stale"),
        ],
        watermarks={"p1": at(15)},
    )
    (person,) = plan.persons
    assert person.fields["city"] == "New"
    assert dict(person.memberships) == {"a1": REALIZED, "a2": REALIZED}
    assert sorted(u.update_id for u in person.updates) == ["attrs", "entry", "lagging"]
    assert person.stale_attributes == {"lagging"}
    assert kinds(plan) == {
        "stale": (OutcomeKind.SUPERSEDED, "older than the update already applied for this profile")
    }
    assert dict(person.watermarks) == {"p1": at(30)}
    assert dict(person.membership_marks) == {
        ("p1", "a1"): MembershipMark(REALIZED, at(20)),
        ("p1", "a2"): MembershipMark(REALIZED, at(10)),
    }
