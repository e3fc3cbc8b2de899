"""Protobuf <-> domain conversion: the only place besides the servicer that touches `_proto`.

Conversions of caller input validate as they go and report problems as field violations
(`FieldViolation(field, description)`) so one answer can name every bad field at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from google.protobuf.message import DecodeError, Message

from service._proto.marketo_destination.internal.v1 import ingest_pb2 as ingest_pb
from service._proto.marketo_destination.v1 import destination_pb2 as pb
from service.caches import BytesBoundedCache, deep_size
from service.domain import (
    ActionType,
    ActivatedAudience,
    AlertState,
    AlertSubscription,
    Audience,
    AudienceMembership,
    AudienceType,
    DecodedBatch,
    DestinationSpec,
    FieldMapping,
    FieldViolation,
    ListAction,
    MarketoConnection,
    MembershipStatus,
    Outcome,
    OutcomeKind,
    PersonAction,
    PreviewResult,
    ProfileUpdate,
    Rejected,
    SyncAck,
    SyncType,
    UndecodableUpdate,
)
from service.errors import InvalidArgument
from service.store.base import (
    ActivationRecord,
    Dataflow,
    DestinationState,
    OutcomeRecord,
)
from service.usecases.alerts import AlertEvent
from service.usecases.destinations import Destination, InstanceDescription
from service.usecases.ingest import IndexedAudiences, IndexedUpdate, WireUpdates

MAX_PROFILE_ID_LENGTH = 512
MAX_UPDATE_ID_LENGTH = 128
MAX_PROFILE_BYTES = 256 * 1024
MAX_PROFILE_DEPTH = 32
MAX_MEMBERSHIPS = 1_000
MAX_CLOCK_SKEW = timedelta(seconds=300)
"""An event time further ahead than this is refused: it would hold back every later change.
The default of `Settings.max_clock_skew_seconds`; Sync and PreviewSync pass the setting."""

PlainUpdates = tuple[str, str, int, list[int], list[IndexedAudiences]]
"""A quick look at a Sync request: its destination_id and request_id, how many updates it has,
the indexes of those that are not plainly good, and the audiences of each plainly good one that
names any (see `plain_updates`)."""

_plain_updates_in_c: Callable[[bytes, int], PlainUpdates | None] | None
try:
    from service.api._wirecheck import plain_updates as _plain_updates_in_c
except ImportError:  # built without a C compiler: the same checks run in Python
    _plain_updates_in_c = None
NATIVE_CHECKS = _plain_updates_in_c is not None
"""Whether Sync's quick look runs in C (`service/api/_wirecheck.c`); the service logs when not."""


_MEMBERSHIP_STATUS: dict[int, MembershipStatus] = {
    pb.MEMBERSHIP_STATUS_REALIZED: MembershipStatus.REALIZED,
    pb.MEMBERSHIP_STATUS_EXISTING: MembershipStatus.EXISTING,
    pb.MEMBERSHIP_STATUS_EXITED: MembershipStatus.EXITED,
}
_MEMBERSHIP_STATUS_PB: dict[MembershipStatus, pb.MembershipStatus] = {
    MembershipStatus.REALIZED: pb.MEMBERSHIP_STATUS_REALIZED,
    MembershipStatus.EXISTING: pb.MEMBERSHIP_STATUS_EXISTING,
    MembershipStatus.EXITED: pb.MEMBERSHIP_STATUS_EXITED,
}


class _TooDeepError(ValueError):
    pass


def struct_to_dict(struct: struct_pb2.Struct, max_depth: int = MAX_PROFILE_DEPTH) -> dict[str, Any]:
    """Convert a Struct to plain Python values; raise ValueError past `max_depth` levels."""
    return _struct(struct, max_depth)


def _struct(struct: struct_pb2.Struct, depth: int) -> dict[str, Any]:
    if depth <= 0:
        raise _TooDeepError
    return {key: _value(value, depth - 1) for key, value in struct.fields.items()}


def _value(value: struct_pb2.Value, depth: int) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return _struct(value.struct_value, depth)
    if kind == "list_value":
        if depth <= 0:
            raise _TooDeepError
        return [_value(item, depth - 1) for item in value.list_value.values]
    return None


def timestamp(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    if moment is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def duration(delta: timedelta) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromTimedelta(delta)
    return value


def derive_update_id(message: pb.ProfileUpdate) -> str:
    """A stable idempotency key for an update sent without one: same content, same key.

    Deterministic serialization orders map (Struct) keys, so equal content gives equal bytes.
    An empty profile counts as none: a caller may encode it either way.
    """
    if message.HasField("profile") and not message.profile.fields:
        without = pb.ProfileUpdate()
        without.CopyFrom(message)
        without.ClearField("profile")
        message = without
    content = message.SerializeToString(deterministic=True)
    return "sha256:" + hashlib.sha256(content).hexdigest()[:40]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z, the Timestamp range
_MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z


def _event_time(stamp: timestamp_pb2.Timestamp) -> datetime | None:
    """The timestamp as an aware datetime, or None outside the valid Timestamp range."""
    seconds, nanos = stamp.seconds, stamp.nanos
    if not (_MIN_SECONDS <= seconds <= _MAX_SECONDS and 0 <= nanos < 1_000_000_000):
        return None
    return _EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1_000)


def check_update(
    message: pb.ProfileUpdate, *, prefix: str, event_time_limit: tuple[int, int]
) -> list[FieldViolation]:
    """Every problem of one update, checked on the message itself (nothing is converted).

    `event_time_limit` is the latest acceptable event time as (seconds, nanos). The profile is
    walked only where its size says it could be nested too deep. Sync runs this for each update
    its quick look (`sync_request`) did not find plainly good; PreviewSync for every update.
    """
    violations: list[FieldViolation] = []

    def bad(field: str, description: str) -> None:
        violations.append(FieldViolation(f"{prefix}.{field}", description))

    profile_id = message.profile_id
    if not profile_id:
        bad("profile_id", "is required")
    elif len(profile_id) > MAX_PROFILE_ID_LENGTH:
        bad("profile_id", f"is longer than {MAX_PROFILE_ID_LENGTH} characters")
    elif NUL in profile_id:
        bad("profile_id", NUL_PROBLEM)
    if len(message.update_id) > MAX_UPDATE_ID_LENGTH:
        bad("update_id", f"is longer than {MAX_UPDATE_ID_LENGTH} characters")
    elif NUL in message.update_id:
        bad("update_id", NUL_PROBLEM)

    if not message.HasField("event_time"):
        bad("event_time", "is required")
    else:
        stamp = message.event_time
        seconds, nanos = stamp.seconds, stamp.nanos
        if not (_MIN_SECONDS <= seconds <= _MAX_SECONDS and 0 <= nanos < 1_000_000_000):
            bad("event_time", "is not a valid timestamp")
        elif (seconds, nanos) > event_time_limit:
            bad("event_time", "is further in the future than the allowed clock skew")

    size = message.profile.ByteSize()
    if size > MAX_PROFILE_BYTES:
        bad("profile", f"is larger than {MAX_PROFILE_BYTES} bytes")
    elif size >= _BYTES_PER_LEVEL * MAX_PROFILE_DEPTH and _too_deep(
        message.profile, MAX_PROFILE_DEPTH
    ):
        bad("profile", f"is nested deeper than {MAX_PROFILE_DEPTH} levels")
    else:
        for field, description in _nul_strings(message.profile, "profile"):
            bad(field, description)

    audiences = message.audiences
    if audiences:
        if len(audiences) > MAX_MEMBERSHIPS:
            bad("audiences", f"has more than {MAX_MEMBERSHIPS} memberships")
        seen: set[str] = set()
        for index, membership in enumerate(audiences[:MAX_MEMBERSHIPS]):
            audience_id = membership.audience_id
            if not audience_id:
                bad(f"audiences[{index}].audience_id", "is required")
            elif NUL in audience_id:
                bad(f"audiences[{index}].audience_id", NUL_PROBLEM)
            elif audience_id in seen:
                bad(f"audiences[{index}].audience_id", "appears twice in one update")
            if membership.status not in _MEMBERSHIP_STATUS:
                bad(f"audiences[{index}].status", "must be REALIZED, EXISTING or EXITED")
            elif audience_id:
                seen.add(audience_id)
    return violations


NUL = "\0"
NUL_PROBLEM = "contains a NUL character"
"""Every string of an update is refused with a NUL (U+0000) in it: PostgreSQL's text cannot
hold one, and no Marketo field needs one."""
_NUL_NAMED = 10
"""At most this many strings of one profile are named for holding a NUL."""


def _nul_strings(struct: struct_pb2.Struct, path: str) -> list[tuple[str, str]]:
    """(field path, problem) of the first `_NUL_NAMED` keys and string values of a profile
    (nested within the depth limit, walked in key order) that hold a NUL character; a key is
    named with its NUL written as the two characters \\0."""
    found: list[tuple[str, str]] = []
    _struct_nuls(struct, path, found)
    return found


def _struct_nuls(struct: struct_pb2.Struct, path: str, found: list[tuple[str, str]]) -> None:
    fields = struct.fields
    for key in sorted(fields):  # a map's order is not its encoding's: name them in key order
        if len(found) >= _NUL_NAMED:
            return
        if NUL in key:
            found.append((f"{path}.{key.replace(NUL, chr(92) + '0')}", f"key {NUL_PROBLEM}"))
        else:
            _value_nuls(fields[key], f"{path}.{key}", found)


def _value_nuls(value: struct_pb2.Value, path: str, found: list[tuple[str, str]]) -> None:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        if NUL in value.string_value:
            found.append((path, NUL_PROBLEM))
    elif kind == "struct_value":
        _struct_nuls(value.struct_value, path, found)
    elif kind == "list_value":
        for index, item in enumerate(value.list_value.values):
            if len(found) >= _NUL_NAMED:
                return
            _value_nuls(item, f"{path}[{index}]", found)


_PROFILE_UPDATE = pb.ProfileUpdate.DESCRIPTOR


def nul_violations(message: Message) -> list[FieldViolation]:
    """The first `_NUL_NAMED` strings of a request (nested messages, lists, maps and Structs
    included) that hold a NUL character, each named by its path (`spec.name`,
    `audiences[2].name`, `mappings[0].options[country]`): every RPC that takes one request is
    refused with them at the edge, before anything is stored or sent. Profile updates are left
    to `check_update`, which rejects each bad one alone (PreviewSync)."""
    found: list[tuple[str, str]] = []
    _message_nuls(message, "", found)
    return [FieldViolation(path, problem) for path, problem in found]


def _message_nuls(message: Message, path: str, found: list[tuple[str, str]]) -> None:
    if isinstance(message, struct_pb2.Struct):
        _struct_nuls(message, path, found)
        return
    if isinstance(message, struct_pb2.Value):
        _value_nuls(message, path, found)
        return
    for descriptor, value in message.ListFields():
        if len(found) >= _NUL_NAMED:
            return
        entry = descriptor.message_type
        if entry is _PROFILE_UPDATE:
            continue  # checked update by update (`check_update`): a bad one is rejected alone
        name = f"{path}.{descriptor.name}" if path else descriptor.name
        if entry is not None and entry.GetOptions().map_entry:
            for key in sorted(value):
                text = str(key)
                where = f"{name}[{text.replace(NUL, chr(92) + '0')}]"
                if NUL in text:
                    found.append((where, f"key {NUL_PROBLEM}"))
                else:
                    _item_nuls(value[key], where, found)
        elif descriptor.is_repeated:
            for index, item in enumerate(value):
                _item_nuls(item, f"{name}[{index}]", found)
        else:
            _item_nuls(value, name, found)


def _item_nuls(value: object, path: str, found: list[tuple[str, str]]) -> None:
    if isinstance(value, str):
        if NUL in value:
            found.append((path, NUL_PROBLEM))
    elif isinstance(value, Message):
        _message_nuls(value, path, found)


_BYTES_PER_LEVEL = 4
"""Each level of Struct or ListValue nesting takes at least this many bytes of its parent (two
length-delimited tags with their lengths), so a container of fewer than 4 * n bytes holds
fewer than n levels and need not be walked."""


def _too_deep(struct: struct_pb2.Struct, depth: int) -> bool:
    """Whether `struct` nests more than `depth` levels (counted as `struct_to_dict` counts)."""
    if depth <= 0:
        return True
    return any(_value_too_deep(value, depth - 1) for value in struct.fields.values())


def _value_too_deep(value: struct_pb2.Value, depth: int) -> bool:
    if value.ByteSize() < _BYTES_PER_LEVEL * depth:
        return False
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return _too_deep(value.struct_value, depth)
    if kind == "list_value":
        return depth <= 0 or any(
            _value_too_deep(item, depth - 1) for item in value.list_value.values
        )
    return False


def event_time_limit(now: datetime, max_skew: timedelta = MAX_CLOCK_SKEW) -> tuple[int, int]:
    """The latest event time accepted at `now`, as (seconds, nanos) since the epoch."""
    limit = now + max_skew - _EPOCH
    return limit.days * 86_400 + limit.seconds, limit.microseconds * 1_000


def decode_update(message: pb.ProfileUpdate) -> ProfileUpdate:
    """Convert an update that passed `check_update`."""
    event_time = _event_time(message.event_time)
    if event_time is None:
        raise ValueError(f"update of {message.profile_id!r} has an invalid event_time")
    return ProfileUpdate(
        update_id=message.update_id or derive_update_id(message),
        profile_id=message.profile_id,
        event_time=event_time,
        profile=struct_to_dict(message.profile),
        memberships=tuple(
            AudienceMembership(m.audience_id, _MEMBERSHIP_STATUS[m.status])
            for m in message.audiences
        ),
    )


def profile_update(
    message: pb.ProfileUpdate, *, prefix: str, now: datetime, max_skew: timedelta = MAX_CLOCK_SKEW
) -> ProfileUpdate | list[FieldViolation]:
    """Convert and validate one update; return its violations instead when it is bad."""
    limit = event_time_limit(now, max_skew)
    violations = check_update(message, prefix=prefix, event_time_limit=limit)
    return violations or decode_update(message)


def rejection(violations: Sequence[FieldViolation], index: int) -> pb.Rejection:
    """One Rejection for an update, naming its first bad field and listing every problem."""
    reason = "; ".join(f"{v.field} {v.description}" for v in violations)
    return pb.Rejection(index=index, reason=reason, field=violations[0].field)


# -- destinations -------------------------------------------------------------------------------

_SYNC_TYPE: dict[pb.SyncType, SyncType] = {
    pb.SYNC_TYPE_AUDIENCE_AND_PROFILE: SyncType.AUDIENCE_AND_PROFILE,
    pb.SYNC_TYPE_PROFILE_ONLY: SyncType.PROFILE_ONLY,
    pb.SYNC_TYPE_AUDIENCE_ONLY: SyncType.AUDIENCE_ONLY,
}
_SYNC_TYPE_PB: dict[SyncType, pb.SyncType] = {value: key for key, value in _SYNC_TYPE.items()}
_PERSON_ACTION: dict[pb.PersonAction, PersonAction] = {
    pb.PERSON_ACTION_UPDATE_EXISTING_AND_CREATE_NEW: PersonAction.UPDATE_EXISTING_AND_CREATE_NEW,
    pb.PERSON_ACTION_UPDATE_EXISTING_ONLY: PersonAction.UPDATE_EXISTING_ONLY,
}
_PERSON_ACTION_PB: dict[PersonAction, pb.PersonAction] = {
    value: key for key, value in _PERSON_ACTION.items()
}
_ALERT_TYPE: dict[pb.AlertType, str] = {
    pb.ALERT_TYPE_SKIPPED_RATE: "skipped_rate",
    pb.ALERT_TYPE_FAILURE_RATE: "failure_rate",
    pb.ALERT_TYPE_DELIVERY_DELAYED: "delivery_delayed",
    pb.ALERT_TYPE_QUOTA_EXHAUSTED: "quota_exhausted",
    pb.ALERT_TYPE_AUTHENTICATION_FAILING: "authentication_failing",
    pb.ALERT_TYPE_SCHEMA_MISMATCH: "schema_mismatch",
}
_ALERT_TYPE_PB: dict[str, pb.AlertType] = {value: key for key, value in _ALERT_TYPE.items()}
_STATE_PB: dict[DestinationState, pb.DestinationState] = {
    DestinationState.ACTIVE: pb.DESTINATION_STATE_ACTIVE,
    DestinationState.QUOTA_PAUSED: pb.DESTINATION_STATE_QUOTA_PAUSED,
    DestinationState.AUTH_FAILING: pb.DESTINATION_STATE_AUTH_FAILING,
    DestinationState.SCHEMA_PAUSED: pb.DESTINATION_STATE_SCHEMA_PAUSED,
}
_AUDIENCE_TYPE: dict[int, AudienceType] = {
    pb.AUDIENCE_TYPE_UNSPECIFIED: AudienceType.PEOPLE,
    pb.AUDIENCE_TYPE_PEOPLE: AudienceType.PEOPLE,
    pb.AUDIENCE_TYPE_ACCOUNT: AudienceType.ACCOUNT,
    pb.AUDIENCE_TYPE_PROSPECT: AudienceType.PROSPECT,
    pb.AUDIENCE_TYPE_DATASET: AudienceType.DATASET,
}
_LIST_ACTION_PB: dict[ListAction, pb.ListAction] = {
    ListAction.CREATED: pb.LIST_ACTION_CREATED,
    ListAction.LINKED: pb.LIST_ACTION_LINKED,
    ListAction.UNCHANGED: pb.LIST_ACTION_UNCHANGED,
}
_OUTCOME_KIND_PB: dict[OutcomeKind, pb.OutcomeKind] = {
    OutcomeKind.ACTIVATED: pb.OUTCOME_KIND_ACTIVATED,
    OutcomeKind.EXCLUDED: pb.OUTCOME_KIND_EXCLUDED,
    OutcomeKind.FAILED: pb.OUTCOME_KIND_FAILED,
    OutcomeKind.SUPERSEDED: pb.OUTCOME_KIND_SUPERSEDED,
}
_ACTION_PB: dict[ActionType, pb.ActionType] = {
    ActionType.CREATED: pb.ACTION_TYPE_CREATED,
    ActionType.UPDATED: pb.ACTION_TYPE_UPDATED,
    ActionType.ADDED: pb.ACTION_TYPE_ADDED,
    ActionType.REMOVED: pb.ACTION_TYPE_REMOVED,
}


def _enum(
    value: int, table: Mapping[Any, Any], field: str, violations: list[FieldViolation]
) -> Any:
    """Map a proto enum value; an unknown non-zero value is a violation, zero means unset."""
    if value == 0:
        return None
    if value not in table:
        violations.append(FieldViolation(field, f"unknown value {value}"))
        return None
    return table[value]


def destination_id(value: str) -> str:
    """The destination_id of a request about one destination; raise InvalidArgument when it is
    empty or holds a NUL character, which no id has (PostgreSQL's text cannot even be asked for
    one). Configure and DescribeMarketo, where it is optional, do not call this."""
    if not value:
        raise InvalidArgument([FieldViolation("destination_id", "is required")])
    if NUL in value:
        raise InvalidArgument([FieldViolation("destination_id", NUL_PROBLEM)])
    return value


def destination_spec(message: pb.DestinationSpec) -> DestinationSpec:
    """Convert a spec; raise InvalidArgument for enum values this version does not know."""
    violations: list[FieldViolation] = []
    sync_type = _enum(message.sync_type, _SYNC_TYPE, "spec.sync_type", violations)
    person_action = _enum(message.person_action, _PERSON_ACTION, "spec.person_action", violations)
    alerts = message.alerts
    types = []
    for index, value in enumerate(alerts.types):
        alert_type = _enum(value, _ALERT_TYPE, f"spec.alerts.types[{index}]", violations)
        if alert_type is None and value == 0:
            violations.append(FieldViolation(f"spec.alerts.types[{index}]", "must be set"))
        elif alert_type is not None:
            types.append(alert_type)
    delay = timedelta(minutes=15)
    if alerts.HasField("delivery_delay_threshold"):
        try:
            delay = alerts.delivery_delay_threshold.ToTimedelta()
        except (ValueError, OverflowError):
            violations.append(
                FieldViolation("spec.alerts.delivery_delay_threshold", "is not a valid duration")
            )
    if violations:
        raise InvalidArgument(violations)
    return DestinationSpec(
        name=message.name,
        description=message.description,
        connection=marketo_connection(message.connection),
        workspace=message.workspace,
        sync_type=sync_type,
        partition=message.partition,
        dedupe_field=message.dedupe_field,
        person_action=person_action,
        alerts=AlertSubscription(
            types=tuple(types),
            webhook_url=alerts.webhook_url,
            webhook_secret=alerts.webhook_secret,
            failure_rate_threshold=alerts.failure_rate_threshold or 0.05,
            delivery_delay_threshold=delay,
        ),
        marketing_actions=tuple(message.marketing_actions),
        consent_path=message.consent_path,
    )


def _spec_pb(spec: DestinationSpec) -> pb.DestinationSpec:
    """The spec as callers see it: secrets always empty."""
    alerts = spec.alerts
    return pb.DestinationSpec(
        name=spec.name,
        description=spec.description,
        connection=pb.MarketoConnection(
            munchkin_id=spec.connection.munchkin_id,
            client_id=spec.connection.client_id,
            endpoint=spec.connection.endpoint,
        ),
        workspace=spec.workspace,
        sync_type=_SYNC_TYPE_PB[spec.sync_type] if spec.sync_type else pb.SYNC_TYPE_UNSPECIFIED,
        partition=spec.partition,
        dedupe_field=spec.dedupe_field,
        person_action=(
            _PERSON_ACTION_PB[spec.person_action]
            if spec.person_action
            else pb.PERSON_ACTION_UNSPECIFIED
        ),
        alerts=pb.AlertSubscription(
            types=[_ALERT_TYPE_PB[t] for t in alerts.types],
            webhook_url=alerts.webhook_url,
            failure_rate_threshold=alerts.failure_rate_threshold,
            delivery_delay_threshold=duration(alerts.delivery_delay_threshold),
        ),
        marketing_actions=list(spec.marketing_actions),
        consent_path=spec.consent_path,
    )


def mapping_pb(mapping: FieldMapping) -> pb.FieldMapping:
    return pb.FieldMapping(
        source=mapping.source,
        target=mapping.target,
        transform=mapping.transform or "",
        options=dict(mapping.options),
        labels=list(mapping.labels),
    )


def destination_pb(
    destination: Destination, activations: Sequence[ActivationRecord] = ()
) -> pb.Destination:
    record = destination.record
    return pb.Destination(
        id=record.id,
        spec=_spec_pb(destination.spec),
        client_secret_set=bool(record.spec.connection.client_secret),
        state=_STATE_PB[record.state],
        state_reason=record.state_reason,
        paused_until=timestamp(record.paused_until),
        create_time=timestamp(record.created_at) if record.id else None,
        update_time=timestamp(record.updated_at) if record.id else None,
        audiences=[
            pb.ActivatedAudience(
                audience_id=a.audience_id,
                marketo_list_id=a.marketo_list_id,
                list_name=a.list_name,
            )
            for a in activations
            if a.active
        ],
        mappings=[mapping_pb(m) for m in record.mappings],
    )


def instance_description_pb(description: InstanceDescription) -> pb.DescribeMarketoResponse:
    return pb.DescribeMarketoResponse(
        workspaces=[pb.Workspace(id=w.id, name=w.name) for w in description.workspaces],
        partitions=[
            pb.Partition(id=p.id, name=p.name, description=p.description)
            for p in description.partitions
        ],
        dedupe_fields=list(description.dedupe_fields),
        fields=[
            pb.MarketoField(
                name=f.name,
                display_name=f.display_name,
                data_type=f.data_type,
                length=f.length or 0,
                updateable=f.updateable,
                searchable=f.name in description.searchable,
            )
            for f in description.fields
            if f.updateable
        ],
    )


# -- activation ---------------------------------------------------------------------------------


def audience(message: pb.Audience, index: int) -> Audience:
    if message.type not in _AUDIENCE_TYPE:
        raise InvalidArgument(
            [FieldViolation(f"audiences[{index}].type", f"unknown value {message.type}")]
        )
    return Audience(
        id=message.id,
        name=message.name,
        origin=message.origin,
        type=_AUDIENCE_TYPE[message.type],
        marketo_list_id=message.marketo_list_id,
        link_existing_list=message.link_existing_list,
    )


def field_mapping(message: pb.FieldMapping) -> FieldMapping:
    return FieldMapping(
        source=message.source.strip(),
        target=message.target.strip(),
        transform=message.transform.strip() or None,
        options=dict(message.options),
        labels=tuple(message.labels),
    )


def activated_audience_pb(activated: ActivatedAudience) -> pb.ActivatedAudience:
    return pb.ActivatedAudience(
        audience_id=activated.audience_id,
        marketo_list_id=activated.marketo_list_id,
        list_name=activated.list_name,
        list_action=_LIST_ACTION_PB.get(activated.list_action, pb.LIST_ACTION_UNSPECIFIED),
    )


# -- sync ---------------------------------------------------------------------------------------


def updates(
    messages: Sequence[pb.ProfileUpdate], now: datetime, max_skew: timedelta = MAX_CLOCK_SKEW
) -> tuple[list[IndexedUpdate], list[Rejected]]:
    """Convert every update of a request; each bad one becomes a rejection of its own."""
    good: list[IndexedUpdate] = []
    bad: list[Rejected] = []
    for index, message in enumerate(messages):
        converted = profile_update(message, prefix=f"updates[{index}]", now=now, max_skew=max_skew)
        if isinstance(converted, ProfileUpdate):
            good.append(IndexedUpdate(index, converted))
        else:
            bad.append(Rejected(index, tuple(converted)))
    return good, bad


class _RequestUpdates:
    """The checked updates of one Sync request, kept as the caller encoded them."""

    __slots__ = ("_as_sent", "_memberships", "_rejected", "_total", "_view", "_wire")

    def __init__(
        self, wire: bytes, total: int, memberships: list[IndexedAudiences], *, as_sent: bool
    ) -> None:
        """`as_sent`: the request's bytes may be stored as they are (see `sync_request`)."""
        self._wire = wire
        self._total = total
        self._memberships = memberships
        self._as_sent = as_sent
        self._rejected: set[int] = set()
        self._view: ingest_pb.SyncRequestView | None = None

    @property
    def view(self) -> ingest_pb.SyncRequestView:
        """The request read as a view (only when an update needs a look of its own)."""
        if self._view is None:
            self._view = ingest_pb.SyncRequestView.FromString(self._wire)
        return self._view

    def reject(self, rejected: Sequence[Rejected]) -> None:
        self._rejected.update(r.index for r in rejected)

    @property
    def count(self) -> int:
        return self._total - len(self._rejected)

    @property
    def memberships(self) -> Sequence[IndexedAudiences]:
        return self._memberships

    def encode(self, dropped: Collection[int] = ()) -> bytes:
        if self._as_sent and not dropped and not self._rejected:
            # The request itself: its destination_id and request_id are ignored on decoding.
            return self._wire
        kept = [
            update
            for index, update in enumerate(self.view.updates)
            if index not in self._rejected and index not in dropped
        ]
        return ingest_pb.SyncRequestView(updates=kept).SerializeToString()


@dataclass(frozen=True, slots=True)
class SyncRequestChecked:
    """One Sync request, its updates checked but still encoded (see `sync_request`)."""

    destination_id: str
    request_id: str
    updates: WireUpdates
    rejected: list[Rejected]


def sync_request(
    wire: bytes, now: datetime, max_skew: timedelta = MAX_CLOCK_SKEW
) -> SyncRequestChecked:
    """Check every update of an encoded Sync request without converting it; each bad one
    becomes a rejection of its own. The good ones stay in the caller's encoding: the inbox keeps
    them that way and `decode_batch` converts them when they are delivered.

    Every update Sync receives passes through here, so a quick look (`plain_updates`) first
    finds the plainly good ones; each other update is decoded and goes through `check_update`,
    which names each problem (or finds it good after all). Raises DecodeError when the request
    is not a SyncRequest at all.
    """
    limit = event_time_limit(now, max_skew)
    (destination_id, request_id, total, unsure, memberships), by_c = plain_updates(wire, limit[0])
    # The bytes as sent are stored only when the C found every update plain: each field given
    # once, so delivery decodes each update exactly as it was checked. Otherwise they are stored
    # as the view read them: of a profile given twice, for one, the view keeps the last (which is
    # what was checked), where protobuf would merge the two.
    updates = _RequestUpdates(wire, total, memberships, as_sent=by_c and not unsure)
    bad: list[Rejected] = []
    if unsure:
        views = updates.view.updates
        for index in unsure:
            message, violations = _decoded(
                views[index], prefix=f"updates[{index}]", event_time_limit=limit
            )
            if violations:
                bad.append(Rejected(index, tuple(violations)))
            elif message.audiences:
                memberships.append((index, tuple(a.audience_id for a in message.audiences)))
        memberships.sort(key=lambda item: item[0])
        updates.reject(bad)
    return SyncRequestChecked(destination_id, request_id, updates, bad)


def plain_updates(wire: bytes, latest_seconds: int) -> tuple[PlainUpdates, bool]:
    """Which updates of the request (`wire`: its encoding) are plainly good: every field
    known and given once, within the limits `check_update` applies (an event time after the
    epoch and before `latest_seconds`), their profile and memberships decodable. The others are
    "unsure": `sync_request` checks each of them in full. Also whether the C gave the answer.

    In C (`service/api/_wirecheck.c`, one pass over the encoding) when the extension is built, else
    in Python (`_plain_updates_in_python`); tests hold the two to the same verdicts. Either way
    one parse of the whole request by protobuf, which delivery decodes it with, vouches that
    every update decodes; when it fails, each update is looked at on its own. Raises DecodeError
    when the request is not a SyncRequest at all.
    """
    full: pb.SyncRequest | None
    try:
        full = pb.SyncRequest.FromString(wire)
    except DecodeError:
        full = None
    if full is not None and _plain_updates_in_c is not None:
        found = _plain_updates_in_c(wire, latest_seconds)
        if found is not None:
            return found, True
    view = ingest_pb.SyncRequestView.FromString(wire)
    return _plain_updates_in_python(full, latest_seconds, view), False


def _plain_updates_in_python(
    full: pb.SyncRequest | None, latest_seconds: int, request: ingest_pb.SyncRequestView
) -> PlainUpdates:
    """`plain_updates` in Python on the request read as a view; `full`: the request decoded,
    None when it does not decode."""
    unsure: list[int] = []
    memberships: list[IndexedAudiences] = []
    updates = request.updates
    for index, update in enumerate(updates):
        profile_id = update.profile_id
        stamp = update.event_time
        if (
            0 < len(profile_id) <= MAX_PROFILE_ID_LENGTH
            and len(update.update_id) <= MAX_UPDATE_ID_LENGTH
            and NUL not in profile_id
            and NUL not in update.update_id
            and 0 < stamp.seconds < latest_seconds
            and 0 <= stamp.nanos < 1_000_000_000
            and _plain_profile(update.profile, full, index)
        ):
            audiences = update.audiences
            if not audiences:
                continue
            known, audience_ids = _MEMBERSHIPS.lookup(key := tuple(audiences))
            if not known:
                audience_ids = _audience_ids(key)
            if audience_ids is not None:
                memberships.append((index, audience_ids))
                continue
        unsure.append(index)
    return request.destination_id, request.request_id, len(updates), unsure, memberships


_SHALLOW = _BYTES_PER_LEVEL * MAX_PROFILE_DEPTH
"""A profile of fewer bytes than this cannot be nested too deep."""


def _plain_profile(profile: bytes, full: pb.SyncRequest | None, index: int) -> bool:
    """Whether the encoded profile of update `index` is plainly valid, within the size and
    depth limits and without a NUL character in any string (`full`: the whole request decoded,
    when it decodes). A string with a NUL has a zero byte in its encoding, so a profile without
    one is walked for them no further."""
    if len(profile) > MAX_PROFILE_BYTES:
        return False
    zero = b"\0" in profile
    if full is not None and len(profile) < _SHALLOW and not zero:
        return True
    if full is not None:
        struct = full.updates[index].profile
    else:
        try:
            struct = struct_pb2.Struct.FromString(profile)
        except DecodeError:
            return False
    if _too_deep(struct, MAX_PROFILE_DEPTH):
        return False
    return not zero or not _nul_strings(struct, "profile")


MEMBERSHIPS_CACHE_BYTES = 8 * 1024 * 1024
"""The most the remembered memberships (`_MEMBERSHIPS`) hold, keys and values counted."""
_MEMBERSHIPS: BytesBoundedCache[tuple[bytes, ...], tuple[str, ...] | None] = BytesBoundedCache(
    MEMBERSHIPS_CACHE_BYTES, deep_size
)
"""An update's encoded memberships -> their audience ids, or None when they are not plainly
good. The same few combinations come again and again, so each is decoded once; a caller sending
ever new ones only pushes the least recently used out."""


def _audience_ids(audiences: tuple[bytes, ...]) -> tuple[str, ...] | None:
    """The audience ids of encoded memberships (remembered); None when any is not plainly
    good."""
    audience_ids: tuple[str, ...] | None = None
    if len(audiences) <= MAX_MEMBERSHIPS:
        try:
            decoded = [pb.AudienceMembership.FromString(encoded) for encoded in audiences]
        except DecodeError:
            decoded = []
        found = tuple(m.audience_id for m in decoded)
        if (
            decoded
            and all(found)
            and not any(NUL in audience_id for audience_id in found)
            and len(set(found)) == len(found)
            and all(m.status in _MEMBERSHIP_STATUS for m in decoded)
        ):
            audience_ids = found
    _MEMBERSHIPS.put(audiences, audience_ids)
    return audience_ids


def _decoded(
    update: ingest_pb.ProfileUpdateView, *, prefix: str, event_time_limit: tuple[int, int]
) -> tuple[pb.ProfileUpdate, list[FieldViolation]]:
    """The update as a full message, with every problem `check_update` names, and those of a
    profile or membership that does not even decode (it is left out of the message)."""
    message = pb.ProfileUpdate(profile_id=update.profile_id, update_id=update.update_id)
    if update.HasField("event_time"):
        message.event_time.CopyFrom(update.event_time)
    undecodable: list[FieldViolation] = []
    try:
        message.profile.ParseFromString(update.profile)
    except DecodeError as error:
        message.profile.Clear()
        problem = (
            f"is nested deeper than {MAX_PROFILE_DEPTH} levels"
            if "MaxDepth" in str(error)
            else "is not a valid google.protobuf.Struct"
        )
        undecodable.append(FieldViolation(f"{prefix}.profile", problem))
    broken: set[str] = set()
    for position, encoded in enumerate(update.audiences):
        membership = message.audiences.add()
        try:
            membership.ParseFromString(encoded)
        except DecodeError:
            membership.Clear()
            broken.add(f"{prefix}.audiences[{position}].")
            undecodable.append(
                FieldViolation(f"{prefix}.audiences[{position}]", "is not a valid membership")
            )
    violations = [
        v
        for v in check_update(message, prefix=prefix, event_time_limit=event_time_limit)
        if not v.field.startswith(tuple(broken))
    ]
    # In the order check_update names fields: the profile's problem before any membership's.
    before = [v for v in violations if not v.field.startswith(f"{prefix}.audiences")]
    return message, before + undecodable + violations[len(before) :]


def decode_updates(body: bytes) -> list[ProfileUpdate]:
    """The updates of an inbox batch written by `sync_request` or `encode_updates`."""
    return [decode_update(message) for message in pb.SyncRequest.FromString(body).updates]


def decode_batch(body: bytes) -> DecodedBatch:
    """`decode_updates` for delivery: a batch that does not decode (a damaged row) never fails
    whole. Each of its updates is decoded on its own; one that does not decode is returned as
    undecodable, with the ids and event time that could still be read."""
    try:
        return DecodedBatch(tuple(decode_updates(body)))
    except Exception:  # whatever it was, each update is tried on its own below
        pass
    try:
        views = ingest_pb.SyncRequestView.FromString(body).updates
    except DecodeError as error:
        return DecodedBatch((), problem=f"the stored batch is not a SyncRequest: {error}")
    updates: list[ProfileUpdate] = []
    undecodable: list[UndecodableUpdate] = []
    for view in views:
        try:
            updates.append(decode_update(pb.ProfileUpdate.FromString(view.SerializeToString())))
        except Exception as error:  # the update fails, with the reason
            stamp = view.event_time if view.HasField("event_time") else None
            undecodable.append(
                UndecodableUpdate(
                    update_id=view.update_id,
                    profile_id=view.profile_id,
                    event_time=None if stamp is None else _event_time(stamp),
                    reason="its stored bytes could not be decoded: "
                    f"{error or type(error).__name__}",
                )
            )
    return DecodedBatch(tuple(updates), tuple(undecodable))


def encode_updates(updates: Sequence[ProfileUpdate]) -> bytes:
    """Domain updates as an inbox batch (for tools and tests that have no request)."""
    request = pb.SyncRequest()
    for update in updates:
        message = request.updates.add(update_id=update.update_id, profile_id=update.profile_id)
        message.event_time.FromDatetime(update.event_time.astimezone(UTC))
        message.profile.update(dict(update.profile))
        for membership in update.memberships:
            message.audiences.add(
                audience_id=membership.audience_id, status=_MEMBERSHIP_STATUS_PB[membership.status]
            )
    return request.SerializeToString()


def _rejections(*groups: Sequence[Rejected]) -> list[pb.Rejection]:
    """Rejections of conversion and of the use case, merged in request order."""
    every = sorted((r for group in groups for r in group), key=lambda r: r.index)
    return [rejection(r.violations, r.index) for r in every]


def preview_pb(preview: PreviewResult, rejected: Sequence[Rejected]) -> pb.PreviewSyncResponse:
    return pb.PreviewSyncResponse(
        created=preview.created,
        updated=preview.updated,
        audiences=[
            pb.PreviewAudience(
                audience_id=change.audience_id, added=len(change.add), removed=len(change.remove)
            )
            for change in preview.audiences
        ],
        outcomes=[
            pb.PreviewOutcome(profile_id=o.profile_id, outcome=_outcome_pb(o))
            for o in preview.outcomes
        ],
        rejected=_rejections(rejected, preview.rejected),
    )


def marketo_connection(message: pb.MarketoConnection) -> MarketoConnection:
    return MarketoConnection(
        munchkin_id=message.munchkin_id.strip(),
        client_id=message.client_id,
        client_secret=message.client_secret,
        endpoint=message.endpoint.strip(),
    )


def sync_response(request_id: str, ack: SyncAck, rejected: Sequence[Rejected]) -> pb.SyncResponse:
    return pb.SyncResponse(
        accepted=ack.accepted,
        rejected=_rejections(rejected, ack.rejected),
        request_id=request_id,
        ack_sequence=ack.last_sequence,
    )


# -- observe ------------------------------------------------------------------------------------


def outcome_pb(record: OutcomeRecord) -> pb.ProfileOutcome:
    message = _outcome_pb(record.outcome)
    message.event_time.FromDatetime(record.event_time.astimezone(UTC))
    message.outcome_time.FromDatetime(record.recorded_at.astimezone(UTC))
    return message


def _outcome_pb(outcome: Outcome) -> pb.ProfileOutcome:
    return pb.ProfileOutcome(
        profile_id=outcome.profile_id,
        dedupe_value=outcome.dedupe_value or "",
        kind=_OUTCOME_KIND_PB[outcome.kind],
        actions=[
            pb.Action(type=_ACTION_PB[a.type], audience_id=a.audience_id or "")
            for a in outcome.actions
        ],
        lead_id=outcome.lead_id or 0,
        reason=outcome.reason,
        marketo_code=outcome.marketo_code,
        update_id=outcome.update_id,
        exclusion_code=outcome.exclusion_code.value if outcome.exclusion_code else "",
        field=outcome.field,
    )


def dataflow_pb(flow: Dataflow) -> pb.Dataflow:
    return pb.Dataflow(
        destination_id=flow.destination_id,
        received=flow.received,
        activated=pb.ActivatedCounts(
            created=flow.created, updated=flow.updated, added=flow.added, removed=flow.removed
        ),
        excluded=dict(flow.excluded),
        failed=dict(flow.failed),
        pending=flow.pending,
        oldest_pending_age=duration(flow.oldest_pending_age or timedelta(0)),
        runs=[
            pb.DataflowRun(
                start_time=timestamp(run.start),
                received=run.received,
                activated=run.activated,
                excluded=run.excluded,
                failed=run.failed,
                skipped_rate=run.skipped_rate,
            )
            for run in flow.runs
        ],
        superseded=flow.superseded,
        duplicates=flow.duplicates,
        paused_until=timestamp(flow.paused_until),
        excluded_by_field=[
            pb.ExclusionCount(code=code, field=field, count=count)
            for (code, field), count in sorted(flow.excluded_by_field.items())
        ],
        state=_STATE_PB[flow.state],
        state_reason=flow.state_reason,
        marketo_calls=None
        if flow.marketo_calls is None
        else pb.MarketoCalls(
            ours=flow.marketo_calls.ours,
            others=flow.marketo_calls.others,
            remaining=flow.marketo_calls.remaining,
            usage_read_at=timestamp(flow.marketo_calls.usage_read_at),
        ),
    )


def alert_event_pb(event: AlertEvent) -> pb.Alert:
    alert = event.alert
    return pb.Alert(
        id=alert.id,
        destination_id=alert.destination_id,
        type=_ALERT_TYPE_PB.get(alert.type, pb.ALERT_TYPE_UNSPECIFIED),
        message=alert.message,
        raise_time=timestamp(alert.raised_at),
        resolved=event.state is AlertState.RESOLVED,
        paused_until=timestamp(alert.paused_until),
    )
