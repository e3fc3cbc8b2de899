"""Conversion of profile updates: validation per field, stable idempotency keys, and decoding
of inbox batches."""

from __future__ import annotations

from datetime import UTC, datetime

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from service.api import convert, inbox_codec
from service.domain import MembershipStatus, Outcome, OutcomeKind, ProfileUpdate
from service.store.base import OutcomeRecord
from tests.harness import damaged, update

NOW = datetime(2026, 11, 29, tzinfo=UTC)


def test_a_good_update_converts() -> None:
    message = update("p1", "a@example.com", audiences={"a1": pb.MEMBERSHIP_STATUS_EXITED})
    converted = convert.profile_update(message, prefix="updates[0]", now=NOW)
    assert isinstance(converted, ProfileUpdate)
    assert converted.profile["person"]["email"] == "a@example.com"
    assert converted.memberships[0].status is MembershipStatus.EXITED
    assert converted.event_time == datetime.fromtimestamp(1_780_000_000, UTC)


def test_the_derived_update_id_ignores_key_order_and_follows_content() -> None:
    first = pb.ProfileUpdate(profile_id="p1")
    first.event_time.FromSeconds(1_780_000_000)
    first.profile.update({"a": 1, "b": {"c": "x", "d": [1, 2]}})
    second = pb.ProfileUpdate(profile_id="p1")
    second.event_time.FromSeconds(1_780_000_000)
    second.profile.update({"b": {"d": [1, 2], "c": "x"}, "a": 1})
    assert inbox_codec.derive_update_id(first) == inbox_codec.derive_update_id(second)
    second.profile["a"] = 2
    assert inbox_codec.derive_update_id(first) != inbox_codec.derive_update_id(second)


def test_an_empty_profile_and_no_profile_derive_the_same_update_id() -> None:
    """Found by the quick-look fuzz: the same update, stored as sent or re-encoded, had two keys
    when its empty profile was written out in one and left out in the other."""
    absent = pb.ProfileUpdate(profile_id="p1")
    absent.event_time.FromSeconds(1_780_000_000)
    empty = pb.ProfileUpdate()
    empty.CopyFrom(absent)
    empty.profile.SetInParent()
    assert empty.HasField("profile") and not absent.HasField("profile")

    assert inbox_codec.derive_update_id(empty) == inbox_codec.derive_update_id(absent)
    assert empty.HasField("profile")  # the caller's message is left as it was
    filled = pb.ProfileUpdate()
    filled.CopyFrom(empty)
    filled.profile.update({"a": 1})
    assert inbox_codec.derive_update_id(filled) != inbox_codec.derive_update_id(absent)


def violations_of(message: pb.ProfileUpdate) -> dict[str, str]:
    converted = convert.profile_update(message, prefix="u", now=NOW)
    assert isinstance(converted, list)
    return {v.field: v.description for v in converted}


def test_extreme_and_future_timestamps_are_refused() -> None:
    message = update("p1", "a@example.com")
    message.event_time.seconds = 10**12
    assert "not a valid timestamp" in violations_of(message)["u.event_time"]
    message.event_time.seconds = -(10**12)
    assert "not a valid timestamp" in violations_of(message)["u.event_time"]
    message.event_time.FromSeconds(int(NOW.timestamp()) + 2 * 86_400)
    assert "future" in violations_of(message)["u.event_time"]


def test_an_event_time_ten_minutes_ahead_is_refused_by_default() -> None:
    message = update("p1", "a@example.com")
    message.event_time.FromSeconds(int(NOW.timestamp()) + 600)
    assert "future" in violations_of(message)["u.event_time"]
    message.event_time.FromSeconds(int(NOW.timestamp()) + 300)
    assert isinstance(convert.profile_update(message, prefix="u", now=NOW), ProfileUpdate)


def test_too_deep_profiles_and_bad_memberships_are_refused_with_every_reason() -> None:
    message = pb.ProfileUpdate(profile_id="")
    node = message.profile
    for _ in range(34):
        node = node.fields["x"].struct_value
    message.audiences.add(audience_id="a1", status=pb.MEMBERSHIP_STATUS_REALIZED)
    message.audiences.add(audience_id="a1", status=7)  # type: ignore[arg-type]
    found = violations_of(message)
    assert set(found) == {
        "u.profile_id",
        "u.event_time",
        "u.profile",
        "u.audiences[1].audience_id",
        "u.audiences[1].status",
    }
    assert "deeper than 32" in found["u.profile"]


# -- decoding inbox batches for delivery ---------------------------------------------------------


def batch(*messages: pb.ProfileUpdate) -> bytes:
    return pb.SyncRequest(updates=messages).SerializeToString()


def test_a_batch_that_decodes_is_decoded_whole() -> None:
    body = batch(update("p1", "a@example.com"), update("p2", "b@example.com"))

    decoded = inbox_codec.decode_batch(body)

    assert decoded.updates == tuple(inbox_codec.decode_updates(body))
    assert [u.profile_id for u in decoded.updates] == ["p1", "p2"]
    assert decoded.undecodable == () and decoded.problem == ""


def test_an_update_that_does_not_decode_is_told_apart_from_the_others() -> None:
    """A damaged profile, and an event time no datetime can hold (ingest refuses both)."""
    late = update("p3", "c@example.com")
    late.update_id = "u3"
    late.event_time.seconds = 10**12
    body = batch(update("p1", "a@example.com"), update("p2", "b@example.com"), late)

    decoded = inbox_codec.decode_batch(damaged(body, broken=0))

    assert [u.profile_id for u in decoded.updates] == ["p2"]
    assert [(u.profile_id, u.update_id) for u in decoded.undecodable] == [("p1", ""), ("p3", "u3")]
    assert decoded.undecodable[0].event_time == datetime.fromtimestamp(1_780_000_000, UTC)
    assert decoded.undecodable[1].event_time is None  # out of range
    assert all("could not be decoded" in u.reason for u in decoded.undecodable)
    assert decoded.problem == ""


def test_bytes_that_are_no_batch_say_so() -> None:
    decoded = inbox_codec.decode_batch(b"\xff\xff not a batch")

    assert decoded.updates == () and decoded.undecodable == ()
    assert "not a SyncRequest" in decoded.problem


def test_every_outcome_kind_is_answered_but_pending_which_is_deprecated() -> None:
    """An outcome is recorded once its update is final: no stored kind converts to PENDING,
    and the proto says so by deprecating the value."""
    answered = {
        convert.outcome_pb(OutcomeRecord("d", Outcome("u", "p", None, kind), NOW, NOW)).kind
        for kind in OutcomeKind
    }
    values = pb.OutcomeKind.DESCRIPTOR.values_by_number
    assert answered == set(values) - {pb.OUTCOME_KIND_UNSPECIFIED, pb.OUTCOME_KIND_PENDING}
    assert values[pb.OUTCOME_KIND_PENDING].GetOptions().deprecated
