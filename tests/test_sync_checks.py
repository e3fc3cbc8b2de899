"""Sync's checks on the wire view: the same verdicts as a full conversion, without one.

`convert.sync_updates` reads a request as `SyncRequestView` (profiles and memberships stay
bytes) and decides which updates to keep; `convert.profile_update` converts a full
`ProfileUpdate` and names every problem. These tests hold the first to the second, and the
stored encoding to what delivery decodes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import convert
from service._proto.marketo_destination.internal.v1 import ingest_pb2
from service._proto.marketo_destination.v1 import destination_pb2 as pb
from service.domain import ProfileUpdate
from tests.harness import encoded_field

NOW = datetime(2026, 11, 29, tzinfo=UTC)
NOW_SECONDS = int(NOW.timestamp())


def view_of(updates: list[pb.ProfileUpdate]) -> ingest_pb2.SyncRequestView:
    """The request as the service receives it: the caller's SyncRequest, read as a view.

    The SyncRequest is encoded field by field (as any client may): building it as a message
    would re-parse each update and refuse profiles nested past protobuf's parsing limit."""
    wire = pb.SyncRequest(destination_id="d1", request_id="r1").SerializeToString()
    for update in updates:
        wire += encoded_field(2, update.SerializeToString())
    return ingest_pb2.SyncRequestView.FromString(wire)


def nested(depth: int, leaf: Any = "x", *, lists: bool = False) -> dict[str, Any]:
    """A profile whose containers nest `depth` levels (the profile itself is the first)."""
    node: Any = leaf
    for level in range(depth - 1):
        node = [node] if lists and level % 2 else {"k": node}
    return {"top": node}


# -- hypothesis: any mix of good and bad updates ------------------------------------------------

texts = st.text(alphabet="abcxyz-_.@0123456789", max_size=6)
profile_ids = st.one_of(texts, st.just(""), st.just("p" * 513), st.just("p" * 512))
update_ids = st.one_of(st.just(""), texts, st.just("u" * 129), st.just("u" * 128))
event_times = st.one_of(
    st.none(),
    st.integers(min_value=-(10**11), max_value=10**12),  # far outside the valid range too
    st.integers(min_value=NOW_SECONDS - 10, max_value=NOW_SECONDS + 2 * 86_400),
    st.just(0),
    st.just(NOW_SECONDS + 86_400),  # exactly the tolerance: accepted
)
nanos = st.one_of(st.just(0), st.integers(min_value=-5, max_value=1_000_000_005))
leaves = st.one_of(texts, st.integers(-5, 5), st.booleans(), st.none())
depths = st.integers(min_value=1, max_value=36)
memberships = st.lists(
    st.tuples(st.sampled_from(["", "a1", "a2", "a3"]), st.sampled_from([0, 1, 2, 3, 7])),
    max_size=3,
)


@st.composite
def profile_updates(draw: st.DrawFn) -> pb.ProfileUpdate:
    message = pb.ProfileUpdate(profile_id=draw(profile_ids), update_id=draw(update_ids))
    seconds = draw(event_times)
    if seconds is not None:
        message.event_time.seconds = seconds
        message.event_time.nanos = draw(nanos)
    shape = draw(st.sampled_from(["flat", "nested", "lists", "wide"]))
    if shape == "flat":
        message.profile.update({"person": {"email": draw(texts), "age": draw(leaves)}})
    elif shape == "wide":
        message.profile.update({f"f{i}": {"v": draw(texts) * 10} for i in range(draw(depths))})
    else:
        message.profile.update(nested(draw(depths), draw(leaves), lists=shape == "lists"))
    for audience_id, status in draw(memberships):
        message.audiences.add(audience_id=audience_id, status=status)  # type: ignore[arg-type]
    return message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(profile_updates(), min_size=1, max_size=8))
def test_the_view_checks_agree_with_full_conversion(updates: list[pb.ProfileUpdate]) -> None:
    checked, rejected = convert.sync_updates(view_of(updates), NOW)

    expected_rejected: dict[int, list[tuple[str, str]]] = {}
    expected_kept: list[ProfileUpdate] = []
    expected_memberships = []
    for index, message in enumerate(updates):
        converted = convert.profile_update(message, prefix=f"updates[{index}]", now=NOW)
        if isinstance(converted, ProfileUpdate):
            expected_kept.append(converted)
            if converted.memberships:
                ids = tuple(m.audience_id for m in converted.memberships)
                expected_memberships.append((index, ids))
        else:
            expected_rejected[index] = [(v.field, v.description) for v in converted]

    assert {r.index: [(v.field, v.description) for v in r.violations] for r in rejected} == (
        expected_rejected
    )
    assert checked.count == len(expected_kept)
    assert list(checked.memberships) == expected_memberships
    # What is stored decodes to exactly what a full conversion gives.
    assert convert.decode_updates(checked.encode()) == expected_kept


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=40), st.booleans(), leaves)
def test_the_depth_walk_agrees_with_conversion(depth: int, lists: bool, leaf: Any) -> None:
    struct = struct_pb2.Struct()
    struct.update(nested(depth, leaf, lists=lists))
    try:
        convert.struct_to_dict(struct)
        too_deep = False
    except ValueError:
        too_deep = True
    assert convert._too_deep(struct, convert.MAX_PROFILE_DEPTH) is too_deep


# -- what only the view can see ------------------------------------------------------------------


def good(profile_id: str, **audiences: int) -> pb.ProfileUpdate:
    message = pb.ProfileUpdate(profile_id=profile_id)
    message.event_time.seconds = NOW_SECONDS - 60
    message.profile.update({"person": {"email": f"{profile_id}@example.com"}})
    for audience_id, status in audiences.items():
        message.audiences.add(audience_id=audience_id, status=status)  # type: ignore[arg-type]
    return message


def test_an_undecodable_profile_or_membership_is_rejected_alone() -> None:
    request = view_of([good("p0"), good("p1"), good("p2", a1=1), good("p3")])
    request.updates[1].profile = b"\xff\xff\xff"
    request.updates[2].audiences[0] = b"\x0a\x09short"

    checked, rejected = convert.sync_updates(request, NOW)

    assert {r.index: r.violations[0].field for r in rejected} == {
        1: "updates[1].profile",
        2: "updates[2].audiences[0]",
    }
    assert "not a valid google.protobuf.Struct" in rejected[0].violations[0].description
    assert [u.profile_id for u in convert.decode_updates(checked.encode())] == ["p0", "p3"]


def test_a_profile_too_deep_for_the_parser_is_rejected_alone() -> None:
    """Deeper than protobuf's own parsing limit: a full SyncRequest would not even parse."""
    deep = good("p1")
    deep.profile.Clear()
    node = deep.profile
    for _ in range(60):
        node = node.fields["x"].struct_value
    request = view_of([good("p0"), deep])

    checked, rejected = convert.sync_updates(request, NOW)

    assert [(r.index, r.violations[0].field) for r in rejected] == [(1, "updates[1].profile")]
    assert checked.count == 1


def test_encode_leaves_out_dropped_updates_and_keeps_the_rest_in_order() -> None:
    request = view_of([good(f"p{i}", a1=1) for i in range(5)])
    checked, rejected = convert.sync_updates(request, NOW)
    assert not rejected

    kept = convert.decode_updates(checked.encode(dropped={1, 3}))

    assert [u.profile_id for u in kept] == ["p0", "p2", "p4"]
    assert all(u.memberships[0].audience_id == "a1" for u in kept)


def test_remembered_memberships_still_name_the_problems_of_bad_ones() -> None:
    for _ in range(2):  # the second time, both combinations come from the cache
        request = view_of([good("p0", a1=1, a2=3), good("p1", a1=1, a2=9)])
        checked, rejected = convert.sync_updates(request, NOW)
        assert list(checked.memberships) == [(0, ("a1", "a2"))]
        assert [(r.index, r.violations[0].field) for r in rejected] == [
            (1, "updates[1].audiences[1].status")
        ]


def test_an_event_time_just_past_the_tolerance_is_refused() -> None:
    late = good("p1")
    limit = NOW + timedelta(days=1)
    late.event_time.FromDatetime(limit + timedelta(microseconds=1))
    edge = good("p2")
    edge.event_time.FromDatetime(limit)

    checked, rejected = convert.sync_updates(view_of([late, edge]), NOW)

    assert [(r.index, r.violations[0].field) for r in rejected] == [(0, "updates[0].event_time")]
    assert checked.count == 1
