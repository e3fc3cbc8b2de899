"""Protobuf enum <-> domain enum maps, each built once from the proto's naming convention.

The wire value `<PREFIX>_<MEMBER>` (PREFIX: the protobuf enum's name in upper snake case) is the
domain member `<MEMBER>`: `WRITE_POLICY_IF_EMPTY` <-> `WritePolicy.IF_EMPTY`. A member whose
wire name does not follow the convention is named in the map's `exceptions`.

A map is refused at import (ValueError) when a domain member has no wire value, so a new domain
member cannot be forgotten here. On the wire, zero (`<PREFIX>_UNSPECIFIED`) means unset and a
number no domain member has is unknown: neither is in `to_domain`. `decode` reports an unknown
number as the violation "unknown value N" and returns None for both (the caller gives unset its
default: `WritePolicy.ALWAYS`, `AudienceType.PEOPLE`, or none); a stored membership status is
looked up in `to_domain` directly, so an unknown one raises KeyError. `encode` sends None, and a
value no member has (an alert type stored by another version), as UNSPECIFIED.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Generic, TypeVar, cast

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from service.domain import (
    ActionType,
    AlertType,
    AudienceType,
    FieldViolation,
    ListAction,
    MembershipStatus,
    OutcomeKind,
    PersonAction,
    SyncType,
    WritePolicy,
)
from service.store.base import DestinationState

W = TypeVar("W", bound=int)
D = TypeVar("D", bound=enum.StrEnum)


def wire_prefix(wire_enum_name: str) -> str:
    """The prefix of a protobuf enum's value names: `WritePolicy` -> `WRITE_POLICY`."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", wire_enum_name).upper()


class EnumMap(Generic[W, D]):
    """Both directions between the protobuf enum `wire` and the domain enum `domain`.

    `exceptions` names the wire value of each domain member that does not follow the
    convention; naming `<PREFIX>_UNSPECIFIED` sends the member as unset (it then never
    decodes: zero is always unset).
    """

    def __init__(
        self, wire: type[W], domain: type[D], *, exceptions: Mapping[D, str] | None = None
    ) -> None:
        values = cast(EnumTypeWrapper, wire)
        prefix = wire_prefix(values.DESCRIPTOR.name)
        numbers = dict(values.items())
        unset = f"{prefix}_UNSPECIFIED"
        if numbers.get(unset) != 0:
            raise ValueError(f"{values.DESCRIPTOR.name} has no {unset} = 0")
        self.unspecified = cast(W, 0)
        """The wire value of an unset field."""
        pairs: list[tuple[D, W]] = []
        for member in domain:
            name = (exceptions or {}).get(member, f"{prefix}_{member.name}")
            if name not in numbers:
                raise ValueError(
                    f"{domain.__name__}.{member.name} has no protobuf value {name} "
                    f"in {values.DESCRIPTOR.name}"
                )
            pairs.append((member, cast(W, numbers[name])))
        self._to_wire: dict[str, W] = dict(pairs)
        self.to_domain: Mapping[int, D] = {number: member for member, number in pairs if number}
        """Each wire value a domain member has, but zero (unset)."""
        if len(self.to_domain) != len([number for _, number in pairs if number]):
            raise ValueError(f"two members of {domain.__name__} share a protobuf value")

    def decode(self, value: int, field: str, violations: list[FieldViolation]) -> D | None:
        """The domain member of a wire value; None for zero (unset) and for an unknown value,
        which also adds the violation "unknown value N" of `field`."""
        if value == 0:
            return None
        if value not in self.to_domain:
            violations.append(FieldViolation(field, f"unknown value {value}"))
            return None
        return self.to_domain[value]

    def encode(self, member: str | None) -> W:
        """The wire value of a domain member; UNSPECIFIED for None and for a value no member
        has (an alert type stored by another version of the service)."""
        if member is None:
            return self.unspecified
        return self._to_wire.get(member, self.unspecified)


SYNC_TYPE = EnumMap(pb.SyncType, SyncType)
PERSON_ACTION = EnumMap(pb.PersonAction, PersonAction)
ALERT_TYPE = EnumMap(pb.AlertType, AlertType)
WRITE_POLICY = EnumMap(pb.WritePolicy, WritePolicy)
MEMBERSHIP_STATUS = EnumMap(pb.MembershipStatus, MembershipStatus)
DESTINATION_STATE = EnumMap(pb.DestinationState, DestinationState)
AUDIENCE_TYPE = EnumMap(pb.AudienceType, AudienceType)
LIST_ACTION = EnumMap(
    pb.ListAction, ListAction, exceptions={ListAction.NONE: "LIST_ACTION_UNSPECIFIED"}
)
OUTCOME_KIND = EnumMap(pb.OutcomeKind, OutcomeKind)
ACTION_TYPE = EnumMap(pb.ActionType, ActionType)
