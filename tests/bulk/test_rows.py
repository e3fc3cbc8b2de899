"""Row failures and warnings mapped back to profiles, concurrent creators, REST fall-backs."""

from __future__ import annotations

from typing import Any

from service.domain import FieldMapping, PersonAction, SyncRules, SyncType, WritePolicy
from service.mapping.mapper import FieldType, Mapper
from service.mapping.registry import PluginRegistry
from tests.bulk.scenario import EVENT, R, ScenarioMapper, make_updates, quick_policy, run
from tests.bulk.test_equivalence import RULES, assert_same
from tests.engine.sandbox_env import Sandbox

CREATE = PersonAction.UPDATE_EXISTING_AND_CREATE_NEW
BOTH = RULES["audience and profile, update and create"]
LONG_CITY = "C" * 300  # the sandbox's city holds 255 characters

WARNED = [
    (
        "u_long",
        {"email": "partner@x.io", "first": "Pat", "last": "Long", "city": LONG_CITY},
        [("a1", R)],
    ),
    ("u_fine", {"email": "tie@x.io", "first": "Tia", "last": "Fine"}, [("a1", R)]),
]


async def test_a_warning_is_recorded_on_the_outcome_of_its_profile() -> None:
    bulk = await run(BOTH, bulk=True, updates=make_updates(WARNED))
    outcomes = {o.update_id: o for o in bulk.result.outcomes}
    assert outcomes["u_long"].kind.value == "activated"
    assert outcomes["u_long"].reason == (
        "import warning: Value for field 'city' was truncated to its maximum length"
    )
    assert outcomes["u_fine"].reason == ""
    assert sum(job.rows_with_warning for job in bulk.jobs) == 1


async def test_the_real_mapper_refuses_over_long_text_so_no_path_truncates() -> None:
    # REST refuses an over-long value (1003) where an import truncates it with a warning; the
    # service's Mapper knows every field's length and excludes such a profile before any write.
    mapper = Mapper(
        [
            FieldMapping("email", "DedupeField"),
            FieldMapping("first", "firstName"),
            FieldMapping("last", "lastName"),
            FieldMapping("city", "city"),
        ],
        [
            FieldType("email", "email", 255),
            FieldType("firstName", "string", 255),
            FieldType("lastName", "string", 255),
            FieldType("city", "string", 255),
        ],
        PluginRegistry.build(load_entry_points=False),
        dedupe_field="email",
    )
    rest = await run(BOTH, bulk=False, updates=make_updates(WARNED), mapper=mapper)
    bulk = await run(BOTH, bulk=True, updates=make_updates(WARNED), mapper=mapper)
    assert_same(rest, bulk)
    assert bulk.outcomes()["u_long"][0] == "excluded"


def appears(partition: str, **extra: Any) -> Any:
    async def hook(sb: Sandbox) -> None:
        await sb.seed(
            {
                "email": "new@x.io",
                "firstName": "Someone",
                "lastName": "Else",
                "partition": partition,
                "updatedAt": "2026-01-01T11:00:00Z",
                **extra,
            }
        )

    return hook


async def test_a_lead_created_meanwhile_in_the_partition_is_updated_not_duplicated() -> None:
    rest = await run(BOTH, bulk=False, before_write=appears("EMEA", twitterId="@x"))
    bulk = await run(BOTH, bulk=True, before_write=appears("EMEA", twitterId="@x"))
    assert_same(rest, bulk, updated_by_create=frozenset({"u_new"}))
    news = [lead for lead in bulk.leads if "new@x.io" in repr(lead)]
    assert len(news) == 1
    assert ("firstName", "Nia") in news[0][2]


async def test_a_lead_created_meanwhile_elsewhere_is_resolved_again_through_rest() -> None:
    # the import's row fails (1010: the match lives in another partition); REST updates it by id
    rest = await run(BOTH, bulk=False, before_write=appears("Partners"))
    bulk = await run(BOTH, bulk=True, before_write=appears("Partners"))
    assert_same(rest, bulk)
    news = [lead for lead in bulk.leads if "new@x.io" in repr(lead)]
    assert len(news) == 1
    assert news[0][1] == "Partners"


async def test_a_custom_dedupe_field_is_the_lookup_field_of_the_creating_import() -> None:
    rules = SyncRules(SyncType.AUDIENCE_AND_PROFILE, CREATE, "twitterId", "EMEA")
    mapper = ScenarioMapper(dedupe="handle")
    # a lead holding the new person's handle appears: the import must update it, not add one
    hook = appears("EMEA", twitterId="@new")
    rest = await run(rules, bulk=False, mapper=mapper, before_write=hook)
    bulk = await run(
        rules, bulk=True, mapper=mapper, before_write=appears("EMEA", twitterId="@new")
    )
    assert_same(rest, bulk, updated_by_create=frozenset({"u_new"}))
    assert "twitterId" in bulk.lookups
    assert "email" not in bulk.lookups
    assert sum("@new')" in repr(lead) for lead in bulk.leads) == 1


async def test_a_job_that_fails_as_a_whole_is_redone_through_rest() -> None:
    class UnknownColumn(ScenarioMapper):
        def map_profile(self, profile: Any) -> Any:
            mapped = super().map_profile(profile)
            if profile.get("email") == "plain@x.io":
                return type(mapped)(mapped.dedupe_value, {**mapped.fields, "noSuchField": "x"})
            return mapped

    rest = await run(BOTH, bulk=False, mapper=UnknownColumn())
    bulk = await run(BOTH, bulk=True, mapper=UnknownColumn())
    assert_same(rest, bulk)
    assert "Failed" in {job.status for job in bulk.jobs}
    assert bulk.outcomes()["u_plain"][:3] == ("failed", frozenset(), "1006")


async def test_an_import_refused_for_good_is_redone_through_rest() -> None:
    async def reject(sb: Sandbox) -> None:
        await sb.fault(path_prefix="/bulk/v1/leads.json", http_status=413, count=1)

    rest = await run(BOTH, bulk=False)
    bulk = await run(BOTH, bulk=True, before_write=reject)
    assert_same(rest, bulk)


async def test_an_import_whose_outcome_is_unknown_is_deferred_with_its_profiles() -> None:
    async def drop(sb: Sandbox) -> None:
        await sb.fault(path_prefix="/bulk/v1/leads.json", drop=True, count=1)

    bulk = await run(BOTH, bulk=True, before_write=drop)
    deferred = {d.update_id for d in bulk.result.deferred}
    finished = {o.update_id for o in bulk.result.outcomes}
    assert deferred
    assert not deferred & finished
    assert deferred | finished == {u.update_id for u in make_updates()}


async def test_update_only_and_audience_only_never_create_through_an_import() -> None:
    for name in ("profile only, update existing only", "audience only",
                 "audience and profile, update existing only"):  # fmt: skip
        bulk = await run(RULES[name], bulk=True, policy=quick_policy(membership_import_min=1))
        assert bulk.lookups <= {"id"}
        assert all(part is None for _, _, part, _ in bulk.imports)
        assert not [lead for lead in bulk.leads if lead[0].startswith("new:")]


assert EVENT  # the scenario's event time is shared with these updates


async def test_a_full_import_queue_is_waited_out() -> None:
    async def crowd(sb: Sandbox) -> None:
        # another integration fills Marketo's queue (10 jobs) with imports that change nothing
        for _ in range(10):
            await sb.client.create_import(b"id\n999999\n", lookup_field="id")

    rest = await run(BOTH, bulk=False, before_write=crowd)
    bulk = await run(BOTH, bulk=True, before_write=crowd)
    assert_same(rest, bulk)
    ours = len(bulk.imports)
    # the creating import was answered 1016 at least once, then queued once there was room
    assert bulk.calls["POST /bulk/v1/leads.json"] > 10 + ours


async def test_write_policies_give_the_same_state_and_kept_fields_on_both_paths() -> None:
    policies = {"firstName": WritePolicy.IF_EMPTY, "city": WritePolicy.NEVER_CLEAR}
    rest = await run(BOTH, bulk=False, write_policies=policies)
    bulk = await run(BOTH, bulk=True, write_policies=policies)
    assert_same(rest, bulk)
    kept = {o.update_id: o.kept_fields for o in rest.result.outcomes if o.kept_fields}
    assert kept == {o.update_id: o.kept_fields for o in bulk.result.outcomes if o.kept_fields}
    # the seeded leads all have a first name: if_empty keeps every one of them
    assert kept["u_dup"] == ("firstName",)
    assert kept["u_part"] == ("firstName",)
    dup = [
        fields
        for _, partition, fields in bulk.leads
        if partition == "EMEA" and ("lastName", "Dup2") in fields
    ]
    assert dup and ("firstName", "Newer") in dup[0]
    assert bulk.jobs  # the bulk path did import
