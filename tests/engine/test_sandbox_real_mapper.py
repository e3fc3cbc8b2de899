"""The engine with the real `Mapper` and built-in transforms, against the sandbox."""

from __future__ import annotations

from datetime import UTC, datetime

from service.delivery.engine import SyncEngine
from service.domain import (
    AudienceMembership,
    FieldMapping,
    MembershipStatus,
    OutcomeKind,
    PersonAction,
    ProfileUpdate,
    SyncRules,
    SyncType,
)
from service.mapping.mapper import FieldType, Mapper
from service.mapping.registry import PluginRegistry
from tests.engine.fakes import MEMBER_OF
from tests.engine.sandbox_env import running_sandbox

RULES = SyncRules(
    SyncType.PROFILE_ONLY, PersonAction.UPDATE_EXISTING_AND_CREATE_NEW, "email", "EMEA"
)


def mapper() -> Mapper:
    return Mapper(
        [
            FieldMapping("person.email", "DedupeField"),
            FieldMapping("person.first", "firstName"),
            FieldMapping("person.last", "lastName"),
            FieldMapping("person.score", "accountScore"),
        ],
        [
            FieldType("email", "email", 255),
            FieldType("firstName", "string", 255),
            FieldType("lastName", "string", 255),
            FieldType("accountScore", "integer"),
        ],
        PluginRegistry.build(load_entry_points=False),
        dedupe_field="email",
    )


def update(uid: str, **person: object) -> ProfileUpdate:
    return ProfileUpdate(
        uid,
        "p-" + uid,
        datetime(2026, 3, 1, tzinfo=UTC),
        {"person": person},
        (AudienceMembership(MEMBER_OF, MembershipStatus.REALIZED),),
    )


async def test_mapped_values_reach_marketo_and_rejected_values_are_excluded() -> None:
    async with running_sandbox() as sandbox:
        # a Profile only destination's activated audience has no list
        engine = SyncEngine(sandbox.client, RULES, mapper(), audience_lists={MEMBER_OF: 0})
        result = await engine.sync(
            [
                update("good", email="m@x.io", first="Mia", last="Map", score="42"),
                update("bad", email="b@x.io", first="Bo", last="Bad", score="forty-two"),
            ]
        )
        outcomes = {o.update_id: o for o in result.outcomes}
        assert outcomes["good"].kind is OutcomeKind.ACTIVATED
        assert outcomes["bad"].kind is OutcomeKind.EXCLUDED
        assert outcomes["bad"].reason.startswith("value rejected by mapping: ")
        (lead,) = await sandbox.leads()
        assert lead["partition"] == "EMEA"
        assert {k: lead["fields"].get(k) for k in ("email", "firstName", "lastName")} == {
            "email": "m@x.io",
            "firstName": "Mia",
            "lastName": "Map",
        }
        assert lead["fields"]["accountScore"] == 42
