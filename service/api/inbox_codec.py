"""The inbox's encoding of profile updates: a batch is an encoded `SyncRequest` of the kept
updates (as Sync stored it, see `sync_checks.sync_request`). `decode_batch` converts one for
delivery (the store's unpack is given it), `encode_updates` writes one from domain updates,
`decode_update` converts one checked update (PreviewSync too).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.message import DecodeError

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from service.api.enums import MEMBERSHIP_STATUS
from service.api.sync_checks import (
    MAX_PROFILE_DEPTH,
    MAX_SECONDS,
    MIN_SECONDS,
    read_update,
    split_request,
)
from service.domain import (
    AudienceMembership,
    DecodedBatch,
    ProfileUpdate,
    UndecodableUpdate,
)


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


def _event_time(stamp: timestamp_pb2.Timestamp) -> datetime | None:
    """The timestamp as an aware datetime, or None outside the valid Timestamp range."""
    seconds, nanos = stamp.seconds, stamp.nanos
    if not (MIN_SECONDS <= seconds <= MAX_SECONDS and 0 <= nanos < 1_000_000_000):
        return None
    return _EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1_000)


def decode_update(message: pb.ProfileUpdate) -> ProfileUpdate:
    """Convert an update that passed `sync_checks.check_update`."""
    event_time = _event_time(message.event_time)
    if event_time is None:
        raise ValueError(f"update of {message.profile_id!r} has an invalid event_time")
    return ProfileUpdate(
        update_id=message.update_id or derive_update_id(message),
        profile_id=message.profile_id,
        event_time=event_time,
        profile=struct_to_dict(message.profile),
        memberships=tuple(
            AudienceMembership(m.audience_id, MEMBERSHIP_STATUS.to_domain[m.status])
            for m in message.audiences
        ),
    )


def decode_updates(body: bytes) -> list[ProfileUpdate]:
    """The updates of an inbox batch written by `sync_checks.sync_request` or
    `encode_updates`."""
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
        encoded = [(data, read_update(data)[0]) for data in split_request(body)[2]]
    except DecodeError as error:
        return DecodedBatch((), problem=f"the stored batch is not a SyncRequest: {error}")
    updates: list[ProfileUpdate] = []
    undecodable: list[UndecodableUpdate] = []
    for data, readable in encoded:
        try:
            updates.append(decode_update(pb.ProfileUpdate.FromString(data)))
        except Exception as error:  # the update fails, with the reason
            stamp = readable.event_time if readable.HasField("event_time") else None
            undecodable.append(
                UndecodableUpdate(
                    update_id=readable.update_id,
                    profile_id=readable.profile_id,
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
                audience_id=membership.audience_id,
                status=MEMBERSHIP_STATUS.encode(membership.status),
            )
    return request.SerializeToString()
