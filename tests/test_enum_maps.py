"""The protobuf <-> domain enum maps of `service/api/enums.py`."""

from __future__ import annotations

import enum

import pytest

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from service.api import convert, enums
from service.api.enums import EnumMap, wire_prefix
from service.domain import FieldViolation, ListAction, MembershipStatus, WritePolicy
from service.errors import InvalidArgument

MAPS = {
    name: value
    for name, value in vars(enums).items()
    if isinstance(value, EnumMap) and name.isupper()
}


def test_every_enum_map_is_tested() -> None:
    assert set(MAPS) == {
        "SYNC_TYPE",
        "PERSON_ACTION",
        "ALERT_TYPE",
        "WRITE_POLICY",
        "MEMBERSHIP_STATUS",
        "DESTINATION_STATE",
        "AUDIENCE_TYPE",
        "LIST_ACTION",
        "OUTCOME_KIND",
        "ACTION_TYPE",
    }


@pytest.mark.parametrize("name", sorted(MAPS))
def test_every_member_round_trips_through_its_wire_value_of_the_same_name(name: str) -> None:
    table = MAPS[name]
    members = list(table.to_domain.values())
    assert len(members) == len(set(members))
    for number, member in table.to_domain.items():
        violations: list[FieldViolation] = []
        assert table.encode(member) == number
        assert table.decode(number, "f", violations) is member
        assert violations == []
        assert (
            pb.DESCRIPTOR.enum_types_by_name[type(member).__name__].values_by_number[number].name
            == f"{name}_{member.name}"
        )


def test_the_one_exception_sends_a_list_without_action_as_unspecified() -> None:
    assert set(ListAction) - set(enums.LIST_ACTION.to_domain.values()) == {ListAction.NONE}
    assert enums.LIST_ACTION.encode(ListAction.NONE) == pb.LIST_ACTION_UNSPECIFIED
    assert enums.LIST_ACTION.encode(None) == pb.LIST_ACTION_UNSPECIFIED


def test_the_wire_prefix_is_the_enum_name_in_upper_snake_case() -> None:
    assert wire_prefix("WritePolicy") == "WRITE_POLICY"
    assert wire_prefix("DestinationState") == "DESTINATION_STATE"
    assert wire_prefix("AlertType") == "ALERT_TYPE"


def test_a_domain_member_without_a_wire_value_is_refused() -> None:
    class Policy(enum.StrEnum):
        ALWAYS = "always"
        IF_EMPTY = "if_empty"
        NEVER_CLEAR = "never_clear"
        SOMETIMES = "sometimes"

    with pytest.raises(
        ValueError, match=r"Policy\.SOMETIMES has no protobuf value WRITE_POLICY_SOMETIMES"
    ):
        EnumMap(pb.WritePolicy, Policy)


def test_an_exception_names_the_wire_value_of_a_member_off_the_convention() -> None:
    class Policy(enum.StrEnum):
        ALWAYS = "always"
        ONLY_IF_EMPTY = "only_if_empty"

    table = EnumMap(
        pb.WritePolicy, Policy, exceptions={Policy.ONLY_IF_EMPTY: "WRITE_POLICY_IF_EMPTY"}
    )

    assert dict(table.to_domain) == {
        pb.WRITE_POLICY_ALWAYS: Policy.ALWAYS,
        pb.WRITE_POLICY_IF_EMPTY: Policy.ONLY_IF_EMPTY,
    }
    with pytest.raises(
        ValueError, match=r"Policy\.ONLY_IF_EMPTY has no protobuf value WRITE_POLICY_NOPE"
    ):
        EnumMap(pb.WritePolicy, Policy, exceptions={Policy.ONLY_IF_EMPTY: "WRITE_POLICY_NOPE"})


def test_two_members_on_one_wire_value_are_refused() -> None:
    class Policy(enum.StrEnum):
        ALWAYS = "always"
        IF_EMPTY = "if_empty"

    with pytest.raises(ValueError, match="two members of Policy share a protobuf value"):
        EnumMap(pb.WritePolicy, Policy, exceptions={Policy.IF_EMPTY: "WRITE_POLICY_ALWAYS"})


def test_unset_is_none_and_an_unknown_wire_number_is_a_violation() -> None:
    violations: list[FieldViolation] = []

    assert enums.WRITE_POLICY.decode(pb.WRITE_POLICY_UNSPECIFIED, "w", violations) is None
    assert violations == []
    assert enums.WRITE_POLICY.decode(99, "w", violations) is None
    assert violations == [FieldViolation("w", "unknown value 99")]


def test_an_alert_type_no_member_has_goes_on_the_wire_as_unspecified() -> None:
    assert enums.ALERT_TYPE.encode("drift") == pb.ALERT_TYPE_DRIFT
    assert enums.ALERT_TYPE.encode("retired_type") == pb.ALERT_TYPE_UNSPECIFIED


def test_an_unknown_membership_status_is_not_decoded() -> None:
    assert enums.MEMBERSHIP_STATUS.to_domain[pb.MEMBERSHIP_STATUS_EXITED] is MembershipStatus.EXITED
    with pytest.raises(KeyError):
        enums.MEMBERSHIP_STATUS.to_domain[pb.MEMBERSHIP_STATUS_UNSPECIFIED]
    with pytest.raises(KeyError):
        enums.MEMBERSHIP_STATUS.to_domain[7]


def test_unknown_wire_numbers_of_a_request_name_their_fields() -> None:
    spec = pb.DestinationSpec(sync_type=9, person_action=8)
    spec.alerts.types.extend([pb.ALERT_TYPE_DRIFT, 0, 12])
    with pytest.raises(InvalidArgument) as raised:
        convert.destination_spec(spec)
    assert list(raised.value.violations) == [
        FieldViolation("spec.sync_type", "unknown value 9"),
        FieldViolation("spec.person_action", "unknown value 8"),
        FieldViolation("spec.alerts.types[1]", "must be set"),
        FieldViolation("spec.alerts.types[2]", "unknown value 12"),
    ]

    with pytest.raises(InvalidArgument) as raised:
        convert.field_mapping(pb.FieldMapping(source="a", target="b", write_policy=5), 2)
    assert list(raised.value.violations) == [
        FieldViolation("mappings[2].write_policy", "unknown value 5")
    ]

    with pytest.raises(InvalidArgument) as raised:
        convert.audience(pb.Audience(id="a", type=6), 3)
    assert list(raised.value.violations) == [FieldViolation("audiences[3].type", "unknown value 6")]


def test_unset_wire_values_of_a_request_take_their_defaults() -> None:
    assert (
        convert.field_mapping(pb.FieldMapping(source="a", target="b"), 0).write
        is WritePolicy.ALWAYS
    )
    assert convert.audience(pb.Audience(id="a"), 0).type == "people"
    spec = convert.destination_spec(pb.DestinationSpec(name="n"))
    assert spec.sync_type is None and spec.person_action is None
    assert convert._spec_pb(spec).sync_type == pb.SYNC_TYPE_UNSPECIFIED
    assert convert._spec_pb(spec).person_action == pb.PERSON_ACTION_UNSPECIFIED
