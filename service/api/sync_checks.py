"""Checks of what callers send, before anything is stored: each profile update of Sync and
PreviewSync (`check_update`: limits, clock skew, NUL characters; a bad update is rejected alone,
naming the field) and NUL characters in any other request (`nul_violations`).

`sync_request` checks a Sync request: protobuf parses it once, the C quick look
(`service/api/_wirecheck.c`) finds the plainly good updates in one pass over its bytes,
`check_update` checks the others as messages, and the kept updates stay encoded for the inbox
(`inbox_codec` decodes them when they are delivered). A request protobuf cannot parse whole is
read update by update (`split_request`), so an update whose profile or membership does not
decode is rejected alone.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from google.protobuf import empty_pb2, struct_pb2
from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from service.api.enums import MEMBERSHIP_STATUS
from service.domain import FieldViolation, Rejected
from service.errors import InvalidArgument
from service.settings import Settings
from service.usecases.ingest import IndexedAudiences, WireUpdates

MAX_UPDATES = 10_000
"""The most updates one Sync request may carry (SyncRequest.updates); a larger request is
refused whole."""
MAX_PROFILE_ID_LENGTH = 512
MAX_UPDATE_ID_LENGTH = 128
MAX_PROFILE_BYTES = 256 * 1024
MAX_PROFILE_DEPTH = 32
MAX_MEMBERSHIPS = 1_000
MAX_CLOCK_SKEW = timedelta(seconds=Settings().max_clock_skew_seconds)
"""An event time further ahead than this is refused: it would hold back every later change.
The default of `Settings.max_clock_skew_seconds`; Sync and PreviewSync pass the setting."""

NUL = "\0"
NUL_PROBLEM = "contains a NUL character"
"""Every string of an update is refused with a NUL (U+0000) in it: PostgreSQL's text cannot
hold one, and no Marketo field needs one."""
_NUL_NAMED = 10
"""At most this many strings of one profile are named for holding a NUL."""

MEMBERSHIP_STATUSES = frozenset(MEMBERSHIP_STATUS.to_domain)
"""The statuses a membership may have (zero, unset, is refused)."""

PlainUpdates = tuple[str, str, int, list[int], list[IndexedAudiences]]
"""The C quick look at a Sync request: its destination_id and request_id, how many updates it
has, the indexes of those that are not plainly good, and the audiences of each plainly good one
that names any (see `service/api/_wirecheck.c`)."""

_plain_updates_in_c: Callable[[bytes, int], PlainUpdates | None] | None
try:
    from service.api._wirecheck import plain_updates as _plain_updates_in_c
except ImportError:  # built without a C compiler: `check_update` checks every update
    _plain_updates_in_c = None
NATIVE_CHECKS = _plain_updates_in_c is not None
"""Whether Sync's quick look runs in C; the service logs when not."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIN_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z, the Timestamp range
MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z


def event_time_limit(now: datetime, max_skew: timedelta = MAX_CLOCK_SKEW) -> tuple[int, int]:
    """The latest event time accepted at `now`, as (seconds, nanos) since the epoch."""
    limit = now + max_skew - _EPOCH
    return limit.days * 86_400 + limit.seconds, limit.microseconds * 1_000


def check_update(
    message: pb.ProfileUpdate,
    *,
    prefix: str,
    event_time_limit: tuple[int, int],
    nul_possible: bool = True,
) -> list[FieldViolation]:
    """Every problem of one update, checked on the message itself (nothing is converted).

    `event_time_limit` is the latest acceptable event time as (seconds, nanos). The profile is
    walked for nesting only where its size says it could be nested too deep, and for NUL
    characters only when `nul_possible`: False when the update's encoding has no zero byte,
    which a NUL in any string is encoded as. Sync runs this for each update (`sync_request`),
    PreviewSync too.
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
        if not (MIN_SECONDS <= seconds <= MAX_SECONDS and 0 <= nanos < 1_000_000_000):
            bad("event_time", "is not a valid timestamp")
        elif (seconds, nanos) > event_time_limit:
            bad("event_time", "is further in the future than the allowed clock skew")

    size = message.profile.ByteSize()
    if size > MAX_PROFILE_BYTES:
        bad("profile", f"is larger than {MAX_PROFILE_BYTES} bytes")
    elif size >= _BYTES_PER_LEVEL * MAX_PROFILE_DEPTH and too_deep(
        message.profile, MAX_PROFILE_DEPTH
    ):
        bad("profile", f"is nested deeper than {MAX_PROFILE_DEPTH} levels")
    elif nul_possible:
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
            if membership.status not in MEMBERSHIP_STATUSES:
                bad(f"audiences[{index}].status", "must be REALIZED, EXISTING or EXITED")
            elif audience_id:
                seen.add(audience_id)
    return violations


# -- NUL characters -----------------------------------------------------------------------------


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


# -- nesting ------------------------------------------------------------------------------------

_BYTES_PER_LEVEL = 4
"""Each level of Struct or ListValue nesting takes at least this many bytes of its parent (two
length-delimited tags with their lengths), so a container of fewer than 4 * n bytes holds
fewer than n levels and need not be walked."""


def too_deep(struct: struct_pb2.Struct, depth: int) -> bool:
    """Whether `struct` nests more than `depth` levels (counted as `inbox_codec.struct_to_dict`
    counts)."""
    if depth <= 0:
        return True
    return any(_value_too_deep(value, depth - 1) for value in struct.fields.values())


def _value_too_deep(value: struct_pb2.Value, depth: int) -> bool:
    if value.ByteSize() < _BYTES_PER_LEVEL * depth:
        return False
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return too_deep(value.struct_value, depth)
    if kind == "list_value":
        return depth <= 0 or any(
            _value_too_deep(item, depth - 1) for item in value.list_value.values
        )
    return False


# -- Sync requests ------------------------------------------------------------------------------


class _CheckedUpdates:
    """The kept updates of one Sync request, for the inbox (`WireUpdates`)."""

    __slots__ = ("_as_sent", "_memberships", "_messages", "_rejected")

    def __init__(
        self,
        as_sent: bytes | None,
        messages: Sequence[pb.ProfileUpdate],
        memberships: list[IndexedAudiences],
        rejected: Collection[int],
    ) -> None:
        """`as_sent`: the request's encoding, which protobuf parsed into `messages` (None when
        it did not parse whole); `rejected`: the indexes of the updates left out."""
        self._as_sent = as_sent
        self._messages = messages
        self._memberships = memberships
        self._rejected = rejected

    @property
    def count(self) -> int:
        return len(self._messages) - len(self._rejected)

    @property
    def memberships(self) -> Sequence[IndexedAudiences]:
        return self._memberships

    def encode(self, dropped: Collection[int] = ()) -> bytes:
        if self._as_sent is not None and not dropped and not self._rejected:
            # Decodes into the very messages that were checked; its destination_id and
            # request_id are ignored on decoding.
            return self._as_sent
        kept = [
            message
            for index, message in enumerate(self._messages)
            if index not in self._rejected and index not in dropped
        ]
        return pb.SyncRequest(updates=kept).SerializeToString()


@dataclass(frozen=True, slots=True)
class SyncRequestChecked:
    """One Sync request, its updates checked and kept encoded (see `sync_request`)."""

    destination_id: str
    request_id: str
    updates: WireUpdates
    rejected: list[Rejected]


def sync_request(
    wire: bytes, now: datetime, max_skew: timedelta = MAX_CLOCK_SKEW
) -> SyncRequestChecked:
    """Check every update of an encoded Sync request; each bad one becomes a rejection of its
    own. The good ones stay encoded: the inbox keeps them that way and `inbox_codec.decode_batch`
    converts them when they are delivered.

    Protobuf parses the request once. Every update Sync receives passes through here, so the C
    quick look (`service/api/_wirecheck.c`, when it is built) first finds the plainly good ones
    in one pass over the bytes; `check_update` checks each other update as a message, naming
    each problem (or finding it good after all). When the request does not parse whole, each
    update is read on its own (`split_request`): one whose profile or membership does not
    decode, or is nested past protobuf's parse limit, is rejected alone. Raises DecodeError when
    the request is not a SyncRequest at all, InvalidArgument when it carries more than
    `MAX_UPDATES` updates.
    """
    limit = event_time_limit(now, max_skew)
    try:
        request = pb.SyncRequest.FromString(wire)
    except DecodeError:
        return _sync_request_in_parts(wire, limit)
    messages = request.updates
    _check_count(len(messages))
    found = None if _plain_updates_in_c is None else _plain_updates_in_c(wire, limit[0])
    unsure: Sequence[int]
    memberships: list[IndexedAudiences]
    if found is None:
        unsure, memberships = range(len(messages)), []
    else:
        _, _, _, unsure, memberships = found
    rejected = _checked(messages, unsure, limit, memberships, nul_possible=b"\0" in wire)
    # Stored as sent, the request decodes into the very messages that were checked (an update
    # the C finds plain has each field once, so it decodes as the C read it).
    updates = _CheckedUpdates(wire, messages, memberships, {r.index for r in rejected})
    return SyncRequestChecked(request.destination_id, request.request_id, updates, rejected)


def _check_count(count: int) -> None:
    """Refuse a request of more than `MAX_UPDATES` updates, naming `updates`."""
    if count > MAX_UPDATES:
        raise InvalidArgument(
            [FieldViolation("updates", f"has more than {MAX_UPDATES} updates in one request")]
        )


def _checked(
    messages: Sequence[pb.ProfileUpdate],
    indexes: Iterable[int],
    limit: tuple[int, int],
    memberships: list[IndexedAudiences],
    *,
    nul_possible: bool,
) -> list[Rejected]:
    """`check_update` on the updates at `indexes` (in order): the rejections of the bad ones;
    the audiences of each good one that names any are added to `memberships`, in index order."""
    rejected: list[Rejected] = []
    added = False
    for index in indexes:
        message = messages[index]
        violations = check_update(
            message, prefix=f"updates[{index}]", event_time_limit=limit, nul_possible=nul_possible
        )
        if violations:
            rejected.append(Rejected(index, tuple(violations)))
        elif message.audiences:
            memberships.append((index, tuple(m.audience_id for m in message.audiences)))
            added = True
    if added:
        memberships.sort(key=lambda item: item[0])
    return rejected


def _sync_request_in_parts(wire: bytes, limit: tuple[int, int]) -> SyncRequestChecked:
    """`sync_request` of a request protobuf cannot parse whole: each update decoded on its own.
    The kept ones are stored re-encoded, each as it was checked."""
    destination_id, request_id, encoded = split_request(wire)
    _check_count(len(encoded))
    messages: list[pb.ProfileUpdate] = []
    rejected: list[Rejected] = []
    for index, data in enumerate(encoded):
        try:
            messages.append(pb.ProfileUpdate.FromString(data))
        except DecodeError:
            message, violations = _decoded_in_parts(data, f"updates[{index}]", limit)
            messages.append(message)
            if violations:  # else what it holds is good after all: checked with the others
                rejected.append(Rejected(index, tuple(violations)))
    undecodable = {r.index for r in rejected}
    decoded = [index for index in range(len(messages)) if index not in undecodable]
    memberships: list[IndexedAudiences] = []
    rejected += _checked(messages, decoded, limit, memberships, nul_possible=b"\0" in wire)
    rejected.sort(key=lambda r: r.index)
    updates = _CheckedUpdates(None, messages, memberships, {r.index for r in rejected})
    return SyncRequestChecked(destination_id, request_id, updates, rejected)


def _decoded_in_parts(
    data: bytes, prefix: str, limit: tuple[int, int]
) -> tuple[pb.ProfileUpdate, list[FieldViolation]]:
    """An update that does not decode, as a message of what decodes, with every problem
    `check_update` names and those of a profile or membership that does not decode."""
    message, profile, audiences = read_update(data)
    undecodable: list[FieldViolation] = []
    try:
        message.profile.MergeFromString(profile)
    except DecodeError as error:
        message.profile.Clear()
        problem = (
            f"is nested deeper than {MAX_PROFILE_DEPTH} levels"
            if "MaxDepth" in str(error)
            else "is not a valid google.protobuf.Struct"
        )
        undecodable.append(FieldViolation(f"{prefix}.profile", problem))
    broken: list[str] = []
    for position, encoded in enumerate(audiences):
        membership = message.audiences.add()
        try:
            membership.MergeFromString(encoded)
        except DecodeError:
            membership.Clear()
            broken.append(f"{prefix}.audiences[{position}].")
            undecodable.append(
                FieldViolation(f"{prefix}.audiences[{position}]", "is not a valid membership")
            )
    violations = [
        v
        for v in check_update(message, prefix=prefix, event_time_limit=limit)
        if not v.field.startswith(tuple(broken))
    ]
    # In the order check_update names fields: the profile's problem before any membership's.
    before = [v for v in violations if not v.field.startswith(f"{prefix}.audiences")]
    return message, before + undecodable + violations[len(before) :]


# -- requests protobuf cannot parse whole -------------------------------------------------------

_LEN = 2  # the wire type of strings, bytes and messages


def _fields(data: bytes) -> list[tuple[int, bytes]]:
    """The length-delimited fields of an encoded message, (number, payload) in their order (the
    others are left out); raises DecodeError when `data` is not a message."""
    fields = UnknownFieldSet(empty_pb2.Empty.FromString(data))  # every field unknown to Empty
    found = (fields[i] for i in range(len(fields)))
    return [(f.field_number, f.data) for f in found if f.wire_type == _LEN]


def _text(data: bytes) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError as error:
        raise DecodeError(f"a string is not valid UTF-8: {error}") from None


def split_request(wire: bytes) -> tuple[str, str, list[bytes]]:
    """The destination_id, request_id and each update's encoding of an encoded SyncRequest, as
    protobuf reads them (the last id when one is given twice); raises DecodeError when it is not
    a SyncRequest even with its updates left encoded."""
    destination_id = request_id = ""
    updates: list[bytes] = []
    for number, data in _fields(wire):
        if number == 1:
            destination_id = _text(data)
        elif number == 2:
            updates.append(data)
        elif number == 3:
            request_id = _text(data)
    return destination_id, request_id, updates


def read_update(data: bytes) -> tuple[pb.ProfileUpdate, bytes, list[bytes]]:
    """An encoded update that protobuf does not decode, read field by field: a message of its
    ids and event time, its profile's encoding (a profile given twice is merged, as protobuf
    merges it) and each membership's; raises DecodeError when those ids and event time do not
    decode."""
    message = pb.ProfileUpdate()
    profile: list[bytes] = []
    audiences: list[bytes] = []
    for number, payload in _fields(data):
        if number == 1:
            message.profile_id = _text(payload)
        elif number == 2:
            message.event_time.MergeFromString(payload)
        elif number == 3:
            profile.append(payload)
        elif number == 4:
            audiences.append(payload)
        elif number == 5:
            message.update_id = _text(payload)
    return message, b"".join(profile), audiences
