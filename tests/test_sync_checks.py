"""Sync's checks: each update rejected alone, naming the field, whatever else the request holds.

`sync_checks.sync_request` checks a request as it came, encoded, and decides which updates to
keep; `convert.profile_update` converts a full `ProfileUpdate` and names every problem. These
tests hold the first to the second, and the stored encoding to what delivery decodes.

Sync's quick look runs in C (`service/api/_wirecheck.c`) when it is built, else `check_update`
checks every update: the tests run with each, fuzz the C with malformed and unusual encodings (it
may only ever err towards "unsure") and hold its limits to those of `sync_checks.check_update`.
`make fuzz` runs the C tests here with the extension built under AddressSanitizer and
UndefinedBehaviorSanitizer (`scripts/fuzz_wirecheck.py`).
"""

from __future__ import annotations

import contextlib
import copy
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest
from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from service.api import convert, inbox_codec, sync_checks
from service.domain import ProfileUpdate, Rejected
from service.errors import InvalidArgument
from service.usecases.ingest import IndexedAudiences, WireUpdates
from tests.harness import encoded_field, retained_memory, varint

NOW = datetime(2026, 11, 29, tzinfo=UTC)
NOW_SECONDS = int(NOW.timestamp())
LATEST = sync_checks.event_time_limit(NOW)[0]
"""The quick look's `latest_seconds` at NOW: an event time must be before it to be plain."""

NOT_BUILT = (
    "service.api._wirecheck is not built: reinstall with `pip install -e .` (needs a C compiler)"
)
FUZZ_EXAMPLES = int(os.environ.get("WIRECHECK_FUZZ_EXAMPLES", "150"))
"""Examples of each kind of change the C fuzz tries (`make fuzz` sets more)."""

# -- with and without the C quick look -----------------------------------------------------------

needs_c = pytest.mark.skipif(sync_checks._plain_updates_in_c is None, reason=NOT_BUILT)
both_implementations = pytest.mark.parametrize(
    "implementation", [pytest.param("c", marks=needs_c), "python"]
)
"""Run a test with Sync's quick look in C, and without it (`check_update` on every update)."""


@contextlib.contextmanager
def quick_look_in(implementation: str) -> Iterator[None]:
    """Sync's checks with the C quick look ("c") or without it ("python")."""
    in_c = sync_checks._plain_updates_in_c if implementation == "c" else None
    with mock.patch.object(sync_checks, "_plain_updates_in_c", in_c):
        yield


def c_plain_updates(
    wire: bytes, latest: int
) -> tuple[int, list[int], list[IndexedAudiences]] | None:
    """`service.api._wirecheck.plain_updates`, called directly (a test using it `needs_c`): its
    count, unsure indexes and memberships (`test_the_c_reads_the_request_ids` covers the rest)."""
    plain_updates = sync_checks._plain_updates_in_c
    assert plain_updates is not None, NOT_BUILT
    found = plain_updates(wire, latest)
    return None if found is None else found[2:]


def test_the_c_extension_is_built() -> None:
    """CI has a C compiler: a build that silently fell back to Python fails here."""
    assert sync_checks._plain_updates_in_c is not None, NOT_BUILT


# -- requests ------------------------------------------------------------------------------------


def request_wire(updates: list[bytes]) -> bytes:
    """A SyncRequest encoded field by field (as any client may) around encoded updates: building
    it as a message would re-parse each update and refuse profiles nested past protobuf's
    parsing limit, or any malformed update."""
    wire = pb.SyncRequest(destination_id="d1", request_id="r1").SerializeToString()
    return wire + b"".join(encoded_field(2, update) for update in updates)


def wire_of(updates: list[pb.ProfileUpdate]) -> bytes:
    """The request of these updates as a caller encodes it."""
    return request_wire([update.SerializeToString() for update in updates])


def sync(
    wire: bytes, implementation: str, max_skew: timedelta | None = None
) -> tuple[WireUpdates, list[Rejected]]:
    """`sync_checks.sync_request` at NOW on the encoded request, with the quick look of
    `implementation`, with `max_skew` or else the default clock skew."""
    with quick_look_in(implementation):
        if max_skew is None:
            checked = sync_checks.sync_request(wire, NOW)
        else:
            checked = sync_checks.sync_request(wire, NOW, max_skew)
    return checked.updates, checked.rejected


def quick_look(update: pb.ProfileUpdate) -> tuple[list[int], list[IndexedAudiences]]:
    """The C quick look's unsure indexes and memberships for a request of this one update."""
    found = c_plain_updates(wire_of([update]), LATEST)
    assert found is not None
    count, unsure, memberships = found
    assert count == 1
    return unsure, memberships


def nested(depth: int, leaf: Any = "x", *, lists: bool = False) -> dict[str, Any]:
    """A profile whose containers nest `depth` levels (the profile itself is the first)."""
    node: Any = leaf
    for level in range(depth - 1):
        node = [node] if lists and level % 2 else {"k": node}
    return {"top": node}


# -- hypothesis: any mix of good and bad updates ------------------------------------------------

texts = st.text(alphabet="abcxyz-_.@0123456789\x00", max_size=6)
"""Strings of ids, profiles and audience ids: a NUL character, which Sync refuses, among them."""
profile_ids = st.one_of(texts, st.just(""), st.just("p" * 513), st.just("p" * 512))
update_ids = st.one_of(st.just(""), texts, st.just("u" * 129), st.just("u" * 128))
event_times = st.one_of(
    st.none(),
    st.integers(min_value=-(10**11), max_value=10**12),  # far outside the valid range too
    st.integers(min_value=NOW_SECONDS - 10, max_value=NOW_SECONDS + 2 * 86_400),
    st.just(0),
    st.just(NOW_SECONDS + 300),  # exactly the default clock skew: accepted
    st.just(NOW_SECONDS + 301),
)
nanos = st.one_of(st.just(0), st.integers(min_value=-5, max_value=1_000_000_005))
leaves = st.one_of(texts, st.integers(-5, 5), st.booleans(), st.none())
depths = st.integers(min_value=1, max_value=36)
memberships = st.lists(
    st.tuples(st.sampled_from(["", "a1", "a2", "a3"]), st.sampled_from([0, 1, 2, 3, 7])),
    max_size=3,
)
# Only what the quick look finds plainly good:
plain_profile_ids = st.one_of(texts.filter(bool), st.just("p" * 512))
plain_update_ids = st.one_of(st.just(""), texts, st.just("u" * 128))
plain_event_times = st.one_of(
    st.integers(min_value=NOW_SECONDS - 10, max_value=LATEST - 1), st.integers(1, LATEST - 1)
)
plain_nanos = st.one_of(st.just(0), st.integers(min_value=0, max_value=999_999_999))
plain_depths = st.integers(min_value=1, max_value=sync_checks.MAX_PROFILE_DEPTH)
plain_memberships = st.lists(
    st.tuples(st.sampled_from(["a1", "a2", "a3", "é", "😀"]), st.sampled_from([1, 2, 3])),
    max_size=3,
    unique_by=lambda membership: membership[0],
)


@st.composite
def profile_updates(draw: st.DrawFn, plain: bool = False) -> pb.ProfileUpdate:
    """Any update, good or bad; or (`plain`) one the quick look finds plainly good."""
    message = pb.ProfileUpdate(
        profile_id=draw(plain_profile_ids if plain else profile_ids),
        update_id=draw(plain_update_ids if plain else update_ids),
    )
    seconds = draw(plain_event_times if plain else event_times)
    if seconds is not None:
        message.event_time.seconds = seconds
        message.event_time.nanos = draw(plain_nanos if plain else nanos)
    shape = draw(st.sampled_from(["flat", "nested", "lists", "wide"]))
    levels = plain_depths if plain else depths
    if shape == "flat":
        message.profile.update({"person": {"email": draw(texts), "age": draw(leaves)}})
    elif shape == "wide":
        message.profile.update({f"f{i}": {"v": draw(texts) * 10} for i in range(draw(levels))})
    else:
        message.profile.update(nested(draw(levels), draw(leaves), lists=shape == "lists"))
    for audience_id, status in draw(plain_memberships if plain else memberships):
        message.audiences.add(audience_id=audience_id, status=status)  # type: ignore[arg-type]
    return message


@both_implementations
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(profile_updates(), min_size=1, max_size=8))
def test_the_checks_agree_with_full_conversion(
    implementation: str, updates: list[pb.ProfileUpdate]
) -> None:
    checked, rejected = sync(wire_of(updates), implementation)

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
    assert inbox_codec.decode_updates(checked.encode()) == expected_kept


@both_implementations
@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=1, max_value=40),
    st.booleans(),
    leaves.filter(lambda v: "\0" not in str(v)),
)
def test_the_depth_walk_agrees_with_conversion(
    implementation: str, depth: int, lists: bool, leaf: Any
) -> None:
    struct = struct_pb2.Struct()
    struct.update(nested(depth, leaf, lists=lists))
    try:
        inbox_codec.struct_to_dict(struct)
        too_deep = False
    except ValueError:
        too_deep = True
    assert sync_checks.too_deep(struct, sync_checks.MAX_PROFILE_DEPTH) is too_deep
    # Sync counts levels the same way: only a profile too deep is rejected (in C: unsure).
    update = good("p1")
    update.profile.CopyFrom(struct)
    _, rejected = sync(wire_of([update]), implementation)
    assert [r.violations[0].field for r in rejected] == (["updates[0].profile"] if too_deep else [])
    if implementation == "c":
        assert quick_look(update)[0] == ([0] if too_deep else [])


# -- requests protobuf does not parse whole -------------------------------------------------------


def good(profile_id: str, **audiences: int) -> pb.ProfileUpdate:
    message = pb.ProfileUpdate(profile_id=profile_id)
    message.event_time.seconds = NOW_SECONDS - 60
    message.profile.update({"person": {"email": f"{profile_id}@example.com"}})
    for audience_id, status in audiences.items():
        message.audiences.add(audience_id=audience_id, status=status)  # type: ignore[arg-type]
    return message


def with_raw(
    update: pb.ProfileUpdate, *, profile: bytes | None = None, **audiences: bytes
) -> bytes:
    """The update encoded, with `profile` (raw bytes) for its profile, and each membership named
    `a<position>` in `audiences` (raw bytes) in place of the one at that position."""
    message = pb.ProfileUpdate()
    message.CopyFrom(update)
    message.ClearField("audiences")
    if profile is not None:
        message.ClearField("profile")
    fields = [message.SerializeToString()]
    if profile is not None:
        fields.append(encoded_field(3, profile))
    for position, membership in enumerate(update.audiences):
        raw = audiences.get(f"a{position}", membership.SerializeToString())
        fields.append(encoded_field(4, raw))
    return b"".join(fields)


@both_implementations
@pytest.mark.parametrize(
    ("first", "kept"),
    [
        pytest.param(bytes.fromhex("8a8080808000 00"), False, id="undecodable"),
        pytest.param(
            struct_pb2.Struct(fields={"deep": struct_pb2.Value()}).SerializeToString(),
            True,
            id="decodable",
        ),
    ],
)
def test_a_profile_given_twice_is_stored_as_it_was_checked(
    implementation: str, first: bytes, kept: bool
) -> None:
    """Protobuf merges a profile given twice, and the update is checked as merged: rejected
    when the merged profile does not decode, else stored so that delivery decodes exactly the
    update that was checked."""
    update = good("p0").SerializeToString()
    twice = encoded_field(3, first) + update  # the later profile is good("p0")'s
    wire = request_wire([twice])

    checked, rejected = sync(wire, implementation)

    if kept:
        merged = pb.ProfileUpdate.FromString(twice)
        assert set(merged.profile.fields) == {"deep", "person"}
        assert rejected == [] and checked.count == 1
        assert inbox_codec.decode_updates(checked.encode()) == [inbox_codec.decode_update(merged)]
    else:
        assert [(r.index, r.violations[0].field) for r in rejected] == [(0, "updates[0].profile")]
        assert checked.count == 0


@both_implementations
def test_an_undecodable_profile_or_membership_is_rejected_alone(implementation: str) -> None:
    wire = request_wire(
        [
            good("p0").SerializeToString(),
            with_raw(good("p1"), profile=b"\xff\xff\xff"),
            with_raw(good("p2", a1=1), a0=b"\x0a\x09short"),
            good("p3").SerializeToString(),
        ]
    )

    checked, rejected = sync(wire, implementation)

    assert {r.index: r.violations[0].field for r in rejected} == {
        1: "updates[1].profile",
        2: "updates[2].audiences[0]",
    }
    assert "not a valid google.protobuf.Struct" in rejected[0].violations[0].description
    assert [u.profile_id for u in inbox_codec.decode_updates(checked.encode())] == ["p0", "p3"]


@both_implementations
def test_an_undecodable_update_is_checked_for_every_other_problem(implementation: str) -> None:
    """What still decodes of it is checked as any update: every problem named, in field order."""
    update = good("", a1=1, a2=1)
    update.audiences[1].audience_id = "a1"
    wire = request_wire([with_raw(update, profile=b"\xff", a0=b"\xff")])

    _, rejected = sync(wire, implementation)

    assert [v.field for r in rejected for v in r.violations] == [
        "updates[0].profile_id",
        "updates[0].profile",
        "updates[0].audiences[0]",
    ]


@both_implementations
def test_a_profile_too_deep_for_the_parser_is_rejected_alone(implementation: str) -> None:
    """Deeper than protobuf's own parsing limit: a full SyncRequest would not even parse."""
    deep = good("p1")
    deep.profile.Clear()
    node = deep.profile
    for _ in range(60):
        node = node.fields["x"].struct_value

    checked, rejected = sync(wire_of([good("p0"), deep]), implementation)

    assert [(r.index, r.violations[0].field) for r in rejected] == [(1, "updates[1].profile")]
    assert "nested deeper than 32 levels" in rejected[0].violations[0].description
    assert checked.count == 1
    assert [u.profile_id for u in inbox_codec.decode_updates(checked.encode())] == ["p0"]


@both_implementations
def test_encode_leaves_out_dropped_updates_and_keeps_the_rest_in_order(implementation: str) -> None:
    checked, rejected = sync(wire_of([good(f"p{i}", a1=1) for i in range(5)]), implementation)
    assert not rejected

    kept = inbox_codec.decode_updates(checked.encode(dropped={1, 3}))

    assert [u.profile_id for u in kept] == ["p0", "p2", "p4"]
    assert all(u.memberships[0].audience_id == "a1" for u in kept)


@both_implementations
def test_a_request_with_every_update_kept_is_stored_as_sent(implementation: str) -> None:
    wire = wire_of([good("p0", a1=1), good("p1")])

    checked, rejected = sync(wire, implementation)

    assert not rejected and checked.encode() == wire


@both_implementations
def test_memberships_of_good_updates_come_in_request_order(implementation: str) -> None:
    for _ in range(2):  # the same combinations again
        wire = wire_of([good("p0", a1=1, a2=3), good("p1", a1=1, a2=9), good("p2", a3=1)])
        checked, rejected = sync(wire, implementation)
        assert list(checked.memberships) == [(0, ("a1", "a2")), (2, ("a3",))]
        assert [(r.index, r.violations[0].field) for r in rejected] == [
            (1, "updates[1].audiences[1].status")
        ]


@both_implementations
@pytest.mark.parametrize("skew", [None, 0, 60, 86_400], ids=["default", "0", "60", "86400"])
def test_an_event_time_just_past_the_clock_skew_is_refused(
    implementation: str, skew: int | None
) -> None:
    """By default five minutes ahead is the most; else the skew Sync is given."""
    max_skew = None if skew is None else timedelta(seconds=skew)
    limit = NOW + (timedelta(minutes=5) if max_skew is None else max_skew)
    late = good("p1")
    late.event_time.FromDatetime(limit + timedelta(microseconds=1))
    edge = good("p2")
    edge.event_time.FromDatetime(limit)
    later = good("p3")
    later.event_time.FromDatetime(limit + timedelta(seconds=1))

    checked, rejected = sync(wire_of([late, edge, later]), implementation, max_skew)

    assert [(r.index, r.violations[0].field) for r in rejected] == [
        (0, "updates[0].event_time"),
        (2, "updates[2].event_time"),
    ]
    assert "future" in rejected[0].violations[0].description
    assert checked.count == 1


# -- the C quick look on malformed and unusual encodings -----------------------------------------

VARINT, I64, LEN, I32 = 0, 1, 2, 5

MESSAGES: dict[str, dict[int, str]] = {
    "ProfileUpdate": {
        1: "profile_id",
        2: "Timestamp",
        3: "Struct",
        4: "Membership",
        5: "update_id",
    },
    "Timestamp": {1: "seconds", 2: "nanos"},
    "Struct": {1: "Entry"},
    "Entry": {1: "key", 2: "Value"},
    "Value": {1: "null", 2: "double", 3: "text", 4: "bool", 5: "Struct", 6: "ListValue"},
    "ListValue": {1: "Value"},
    "Membership": {1: "audience_id", 2: "status"},
}
"""The messages of an update, by name: each field number's kind (a message or a scalar)."""
STRINGS = ("profile_id", "update_id", "key", "text", "audience_id")


@dataclass
class Field:
    """One field of an encoded message, kept apart so that a test can change it."""

    number: int
    wire_type: int
    kind: str  # a message of MESSAGES, a string of STRINGS, a varint of EDGES, "double", "raw"
    value: int | bytes | list[Field]  # a varint, the raw payload, or a message's fields
    width: int = 0  # the least bytes of the varint of the value (or length): overlong if more
    tag_width: int = 0  # the least bytes of the tag


def encode(fields: list[Field]) -> bytes:
    """The fields encoded, each as its tag says, with its value as it is (right or wrong)."""
    out = bytearray()
    for field in fields:
        out += varint(field.number << 3 | field.wire_type, field.tag_width)
        if isinstance(field.value, int):
            out += varint(field.value, field.width)
            continue
        payload = field.value if isinstance(field.value, bytes) else encode(field.value)
        if field.wire_type == LEN or isinstance(field.value, list):
            out += varint(len(payload), field.width)
        out += payload
    return bytes(out)


def parse(data: bytes, kind: str) -> list[Field]:
    """A well-formed encoding of a `kind` message, field by field."""
    fields: list[Field] = []
    at = 0

    def read_varint() -> int:
        nonlocal at
        value = shift = 0
        while True:
            byte = data[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while at < len(data):
        tag = read_varint()
        number, wire_type = tag >> 3, tag & 7
        field_kind = MESSAGES[kind][number]
        value: int | bytes | list[Field]
        if wire_type == VARINT:
            value = read_varint()
        else:
            size = 8 if wire_type == I64 else read_varint()
            value = data[at : at + size]
            at += size
            if field_kind in MESSAGES:
                value = parse(value, field_kind)
        fields.append(Field(number, wire_type, field_kind, value))
    return fields


def messages(field: Field) -> Iterator[Field]:
    """Each field holding a message within `field` (itself first), as fields yet."""
    if isinstance(field.value, list):
        yield field
        for inner in field.value:
            yield from messages(inner)


GOOD_UTF8 = ["a", "é", "€", "😀", "\x01", "\ud7ff", "\ue000", "\ufffe", "\U0010ffff"]
BAD_UTF8 = [
    b"\xed\xa0\x80",  # a UTF-16 surrogate (U+D800)
    b"\xed\xbf\xbf",  # another (U+DFFF)
    b"\xc0\xaf",  # overlong "/"
    b"\xc1\xbf",
    b"\xe0\x80\xaf",
    b"\xe0\x9f\xbf",
    b"\xf0\x80\x80\xaf",
    b"\xf0\x8f\xbf\xbf",
    b"\xf4\x90\x80\x80",  # past U+10FFFF
    b"\xf5\x80\x80\x80",
    b"\xff",
    b"\x80",  # a lone continuation byte
    b"\xc3",  # cut short
    b"\xe2\x82",
    b"\xf0\x9f\x98",
    b"\xc3\x28",  # not continued
    b"\xe2\x28\xa1",
    b"\xf0\x9f\x98\x28",
]
utf8_pieces = st.sampled_from([text.encode() for text in GOOD_UTF8] + BAD_UTF8)
EDGES: dict[str, list[int]] = {
    "seconds": [0, -1, 1, LATEST - 1, LATEST, LATEST + 1, -62_135_596_801, 253_402_300_800],
    "nanos": [-1, 999_999_999, 10**9, -(10**9), 2**32 + 5, 2**31],
    "status": [0, 1, 3, 4, 7, -1, 2**32 + 1],
    "null": [0, 1, 2, -1, 2**32],
    "bool": [0, 1, 2, -1, 2**32 + 1],
}
"""Edge values of each varint, negatives and overflows of int32 too (as a varint, -1 is
2**64 - 1): a status, bool or null out of range, negative nanos, seconds <= 0..."""
INTS = sorted({value for values in EDGES.values() for value in values} | {2**63, 2**64 - 1})
SECOND_KINDS = [
    Field(1, VARINT, "null", 0),
    Field(2, I64, "double", struct.pack("<d", 1.5)),
    Field(3, LEN, "text", b"s"),
    Field(4, VARINT, "bool", 1),
    Field(5, LEN, "Struct", []),
    Field(6, LEN, "ListValue", []),
]
FIELD_NUMBERS = (*range(1, 8), 16, 2**29 - 1)
"""Field numbers for an unknown field: each message knows some of the small ones."""
MAX_TAG_OR_LENGTH_WIDTH = 10
"""Widest varint the fuzz writes for a tag or a length: upb refuses more than five bytes
(`test_a_tag_or_length_of_more_than_five_bytes_is_unsure`)."""
MUTATIONS = {
    "duplicate": "a field given twice",
    "swap": "two fields in the other order (a map entry's value before its key)",
    "drop": "a field left out",
    "unknown": "an unknown field",
    "wire type": "a field of the wrong wire type (or none)",
    "overlong": "a varint longer than need be (a value of eleven bytes: no varint)",
    "string": "a string with invalid, overlong or surrogate UTF-8, or unusual valid characters",
    "int": "an edge value: a status, bool or null out of range, negative nanos, seconds <= 0",
    "value": "a Value of no kind, or of two",
    "flip": "a byte changed",
    "truncate": "the encoding cut short",
    "insert": "random bytes inserted",
}
"""The changes the fuzzing makes to an update's encoding."""


def mutate(draw: st.DrawFn, update: Field, how: str) -> None:
    """One change (`how`, of MUTATIONS) somewhere within an encoded update."""
    containers = list(messages(update))
    if not containers:
        return  # all bytes already
    container = draw(st.sampled_from(containers))
    message = container.value
    assert isinstance(message, list)
    fields = [field for each in containers if isinstance(each.value, list) for field in each.value]
    if how == "duplicate" and message:
        field = draw(st.sampled_from(message))
        message.insert(draw(st.integers(0, len(message))), copy.deepcopy(field))
    elif how == "swap" and len(message) > 1:
        i, j = draw(st.permutations(range(len(message))))[:2]
        message[i], message[j] = message[j], message[i]
    elif how == "drop" and message:
        del message[draw(st.integers(0, len(message) - 1))]
    elif how == "unknown":
        known = MESSAGES[container.kind]
        number = draw(st.sampled_from([n for n in FIELD_NUMBERS if n not in known]))
        wire_type = draw(st.sampled_from([VARINT, I64, LEN, I32]))
        value: int | bytes
        if wire_type == VARINT:
            value = draw(st.sampled_from(INTS))
        else:
            least, most = {I64: (8, 8), I32: (4, 4), LEN: (0, 4)}[wire_type]
            value = draw(st.binary(min_size=least, max_size=most))
        message.insert(draw(st.integers(0, len(message))), Field(number, wire_type, "raw", value))
    elif how == "wire type" and fields:
        field = draw(st.sampled_from(fields))
        field.wire_type = draw(st.sampled_from([w for w in range(8) if w != field.wire_type]))
    elif how == "overlong" and fields:
        varints = [f for f in fields if isinstance(f.value, int)]
        among_varints = bool(varints) and draw(st.booleans())
        field = draw(st.sampled_from(varints if among_varints else fields))
        if isinstance(field.value, int):
            field.width = draw(st.sampled_from([2, 5, 10, 11]))
        else:
            field.width = draw(st.integers(2, MAX_TAG_OR_LENGTH_WIDTH))
        field.tag_width = draw(st.integers(0, MAX_TAG_OR_LENGTH_WIDTH))
    elif how == "string" and (strings := [f for f in fields if f.kind in STRINGS]):
        role = draw(st.sampled_from(sorted({f.kind for f in strings})))  # each kind as often
        field = draw(st.sampled_from([f for f in strings if f.kind == role]))
        assert isinstance(field.value, bytes)
        piece = draw(st.one_of(utf8_pieces, st.just(b"")))
        if draw(st.booleans()):  # in place of the string: maybe none at all
            field.value = piece
        else:
            at = draw(st.integers(0, len(field.value)))
            field.value = field.value[:at] + piece + field.value[at:]
    elif how == "int" and (ints := [f for f in fields if f.kind in EDGES]):
        role = draw(st.sampled_from(sorted({f.kind for f in ints})))
        draw(st.sampled_from([f for f in ints if f.kind == role])).value = draw(
            st.sampled_from(EDGES[role])
        )
    elif how == "value" and (values := [f for f in containers if f.kind == "Value"]):
        kinds = draw(st.sampled_from(values)).value
        assert isinstance(kinds, list)
        if draw(st.booleans()):
            kinds.clear()
        else:
            kinds.append(copy.deepcopy(draw(st.sampled_from(SECOND_KINDS))))
    elif how in ("flip", "truncate", "insert"):  # within the update, its profile, a membership...
        data = bytearray(encode(message))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if how == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif how == "truncate":
            del data[at:]
        elif how == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        container.value = bytes(data)


@st.composite
def encoded_updates(draw: st.DrawFn, how: str) -> bytes:
    """An update (mostly a plainly good one) encoded field by field, then changed: `how` once or
    twice, maybe with a change of another kind too."""
    message = draw(profile_updates(plain=draw(st.sampled_from([True, True, True, False]))))
    update = Field(2, LEN, "ProfileUpdate", parse(message.SerializeToString(), "ProfileUpdate"))
    hows = [how] * draw(st.sampled_from([1, 1, 2]))
    if draw(st.integers(0, 3)) == 0:
        hows.append(draw(st.sampled_from(list(MUTATIONS))))
    for each in hows:
        mutate(draw, update, each)
    if isinstance(update.value, list):
        return encode(update.value)
    assert isinstance(update.value, bytes)  # changed byte by byte
    return update.value


def sync_outcome(wire: bytes, implementation: str) -> tuple[Any, ...]:
    """What Sync makes of an encoded request: its rejections, count, memberships and the
    updates delivery decodes from what it stores; ("refused",) when it is not a SyncRequest."""
    try:
        checked, rejected = sync(wire, implementation)
    except DecodeError:
        return ("refused",)
    return (
        [(r.index, [(v.field, v.description) for v in r.violations]) for r in rejected],
        checked.count,
        list(checked.memberships),
        inbox_codec.decode_updates(checked.encode()),
    )


@needs_c
@pytest.mark.parametrize("how", list(MUTATIONS))
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(st.data())
def test_the_c_quick_look_errs_only_towards_unsure(how: str, data: st.DataObject) -> None:
    """An update the C calls plainly good decodes and passes `check_update`, whatever its
    encoding; and Sync's verdicts do not depend on which quick look it takes."""
    updates = data.draw(st.lists(encoded_updates(how), min_size=1, max_size=4), label="updates")
    wire = request_wire(updates)
    found = c_plain_updates(wire, LATEST)

    assert found is not None
    count, unsure, memberships = found
    assert count == len(updates)
    assert unsure == sorted(set(unsure)) and all(0 <= index < count for index in unsure)
    audiences = dict(memberships)
    assert len(audiences) == len(memberships) and not audiences.keys() & set(unsure)
    for index, update in enumerate(updates):
        if index in unsure:
            continue
        message = pb.ProfileUpdate.FromString(update)
        limit = (LATEST, 0)  # the latest the C's `latest` allows: any event time before it
        assert sync_checks.check_update(message, prefix="u", event_time_limit=limit) == []
        assert audiences.get(index) == (tuple(a.audience_id for a in message.audiences) or None)

    outcome = sync_outcome(wire, "c")
    assert outcome == sync_outcome(wire, "python")
    if outcome != ("refused",):
        # What is stored, delivery decodes (above), as each update was checked.
        assert len(outcome[3]) == outcome[1]


def with_string(role: str, raw: bytes) -> bytes:
    """A plainly good update, encoded with `raw` (any bytes) for its string `role` (of STRINGS)."""
    strings = {name: b"x" for name in STRINGS} | {role: raw}
    entry = encoded_field(1, strings["key"]) + encoded_field(2, encoded_field(3, strings["text"]))
    membership = encoded_field(1, strings["audience_id"]) + b"\x10\x01"
    return (
        encoded_field(1, strings["profile_id"])
        + encoded_field(2, b"\x08" + varint(NOW_SECONDS))
        + encoded_field(3, encoded_field(1, entry))
        + encoded_field(4, membership)
        + encoded_field(5, strings["update_id"])
    )


@needs_c
@pytest.mark.parametrize("role", STRINGS)
def test_the_c_reads_utf8_as_protobuf_does(role: str) -> None:
    """Each string, anywhere: the valid plain (unusual characters too), the invalid unsure."""
    for text in GOOD_UTF8:
        update = with_string(role, text.encode() + b"z")
        pb.ProfileUpdate.FromString(update)  # decodes
        audience_id = text + "z" if role == "audience_id" else "x"
        assert c_plain_updates(request_wire([update]), LATEST) == (1, [], [(0, (audience_id,))])
    for piece in BAD_UTF8:
        for raw in (piece, b"a" + piece + b"z"):
            update = with_string(role, raw)
            with pytest.raises(DecodeError):
                pb.ProfileUpdate.FromString(update)
            assert c_plain_updates(request_wire([update]), LATEST) == (1, [0], [])


@needs_c
@pytest.mark.parametrize("role", STRINGS)
def test_the_c_reads_long_strings_as_protobuf_does(role: str) -> None:
    """ASCII is read eight bytes at a time: a character after, within or across those runs is
    read as protobuf reads it, and counted as one."""
    for position in range(20):
        for text in GOOD_UTF8[1:]:
            raw = b"a" * position + text.encode() + b"z" * (19 - position)
            update = with_string(role, raw)
            pb.ProfileUpdate.FromString(update)  # decodes
            audience_id = raw.decode() if role == "audience_id" else "x"
            assert c_plain_updates(request_wire([update]), LATEST) == (1, [], [(0, (audience_id,))])
        for piece in BAD_UTF8:
            update = with_string(role, b"a" * position + piece + b"z" * (19 - position))
            with pytest.raises(DecodeError):
                pb.ProfileUpdate.FromString(update)
            assert c_plain_updates(request_wire([update]), LATEST) == (1, [0], [])


@needs_c
@pytest.mark.parametrize("role", STRINGS)
def test_the_c_finds_a_nul_in_any_string(role: str) -> None:
    """Protobuf decodes a NUL character, PostgreSQL's text refuses it: an update with one in
    any string is unsure, wherever the NUL falls in (or across) an eight-byte ASCII run."""
    for position in range(20):
        raw = b"a" * position + b"\x00" + b"z" * (19 - position)
        update = with_string(role, raw)
        pb.ProfileUpdate.FromString(update)  # decodes
        assert c_plain_updates(request_wire([update]), LATEST) == (1, [0], [])


def with_nul(role: str) -> pb.ProfileUpdate:
    """A good update but for a NUL character in its string `role` (of STRINGS)."""
    update = good("p1", a1=1)
    if role == "profile_id":
        update.profile_id = "p\x001"
    elif role == "update_id":
        update.update_id = "u\x001"
    elif role == "audience_id":
        update.audiences[0].audience_id = "a\x001"
    elif role == "key":
        update.profile.update({"last\x00Name": "Smith"})
    else:
        update.profile.update({"person": {"name": {"firstName": ["Ann", "A\x00n"]}}})
    return update


NUL_FIELDS = {
    "profile_id": ("updates[1].profile_id", "contains a NUL character"),
    "update_id": ("updates[1].update_id", "contains a NUL character"),
    "audience_id": ("updates[1].audiences[0].audience_id", "contains a NUL character"),
    "key": ("updates[1].profile.last\\0Name", "key contains a NUL character"),
    "text": ("updates[1].profile.person.name.firstName[1]", "contains a NUL character"),
}


@both_implementations
@pytest.mark.parametrize("role", STRINGS)
def test_a_nul_character_rejects_its_update_alone_naming_the_field(
    implementation: str, role: str
) -> None:
    checked, rejected = sync(wire_of([good("p0"), with_nul(role), good("p2")]), implementation)

    assert [(r.index, [(v.field, v.description) for v in r.violations]) for r in rejected] == [
        (1, [NUL_FIELDS[role]])
    ]
    assert convert.rejection(rejected[0].violations, 1).field == NUL_FIELDS[role][0]
    assert [u.profile_id for u in inbox_codec.decode_updates(checked.encode())] == ["p0", "p2"]


@needs_c
def test_the_c_counts_characters_of_long_strings() -> None:
    """The profile id limit counts code points: 512 of them pass in any mix of widths, 513
    do not, with ASCII runs long enough to be read eight bytes at a time."""
    for wide in ("é", "€", "😀"):
        for ascii_run in (7, 8, 9, 17):
            pattern = ("a" * ascii_run + wide) * 600
            for length, verdict in ((512, []), (513, [0])):
                update = (
                    good("p")
                    .SerializeToString()
                    .replace(encoded_field(1, b"p"), encoded_field(1, pattern[:length].encode()), 1)
                )
                assert c_plain_updates(request_wire([update]), LATEST) == (1, verdict, [])


@needs_c
@pytest.mark.parametrize(
    "update",
    [
        pytest.param(bytes.fromhex("8a8080808000 0170 12020801"), id="profile_id's tag"),
        pytest.param(bytes.fromhex("0a818080808000 70 12020801"), id="profile_id's length"),
        pytest.param(
            good("p1").SerializeToString()
            + encoded_field(4, bytes.fromhex("0a0161 908080808000 01")),
            id="a membership's status tag",
        ),
        pytest.param(
            bytes.fromhex("0a0170 12020801")
            + encoded_field(3, bytes.fromhex("0a0d 0a818080808000 6b 1203 1a0176")),
            id="a profile's key length",
        ),
    ],
)
def test_a_tag_or_length_of_more_than_five_bytes_is_unsure(update: bytes) -> None:
    """Valid varints, but not to upb: what Sync stored from it, delivery could not decode."""
    with pytest.raises(DecodeError):
        pb.ProfileUpdate.FromString(update)
    wire = request_wire([update])

    assert c_plain_updates(wire, LATEST) == (1, [0], [])
    # Refused whole when not even its ids and event time decode, else this update alone.
    outcome = sync_outcome(wire, "c")
    assert outcome == sync_outcome(wire, "python")
    assert outcome == ("refused",) or (outcome[1], outcome[0][0][0]) == (0, 0)


def test_a_request_protobuf_cannot_decode_never_gets_past_the_quick_look() -> None:
    """Whatever the C says, delivery decodes with protobuf: one parse of the whole request by
    protobuf vouches for the C's verdicts, and when it fails each update is looked at alone."""
    short = b"\x0a\x05short"  # a map entry running past its end
    wire = request_wire(
        [
            good("p0").SerializeToString(),
            with_raw(good("p1"), profile=short),
            good("p2", a1=1).SerializeToString(),
        ]
    )

    def everything_plain(wire: bytes, latest: int) -> sync_checks.PlainUpdates:
        return "d1", "r1", 3, [], [(2, ("a1",))]

    with mock.patch.object(sync_checks, "_plain_updates_in_c", everything_plain):
        found = sync_checks.sync_request(wire, NOW)
    checked, rejected = found.updates, found.rejected

    assert [(r.index, r.violations[0].field) for r in rejected] == [(1, "updates[1].profile")]
    assert [u.profile_id for u in inbox_codec.decode_updates(checked.encode())] == ["p0", "p2"]


@both_implementations
def test_sync_reads_the_request_ids_as_protobuf_does(implementation: str) -> None:
    """destination_id and request_id come from the bytes: the last of each when given twice,
    "" when absent, with any valid UTF-8 in them."""
    update = good("p0").SerializeToString()
    wire = (
        encoded_field(1, b"first")
        + encoded_field(2, update)
        + encoded_field(3, "r\u00e9q-1".encode())
        + encoded_field(1, "d\u2603st".encode())
    )
    expected = pb.SyncRequest.FromString(wire)
    with quick_look_in(implementation):
        checked = sync_checks.sync_request(wire, NOW)
        bare = sync_checks.sync_request(encoded_field(2, update), NOW)

    assert (checked.destination_id, checked.request_id) == (
        expected.destination_id,
        expected.request_id,
    )
    assert checked.destination_id == "d\u2603st" and checked.request_id == "r\u00e9q-1"
    assert (bare.destination_id, bare.request_id, bare.updates.count) == ("", "", 1)


@both_implementations
@pytest.mark.parametrize("field", [1, 3], ids=["destination_id", "request_id"])
def test_a_request_id_that_is_not_utf8_refuses_the_request(implementation: str, field: int) -> None:
    """The whole request is not a SyncRequest (INVALID_ARGUMENT)."""
    wire = encoded_field(field, b"bad\xff") + encoded_field(2, good("p0").SerializeToString())
    if implementation == "c":
        assert c_plain_updates(wire, LATEST) is None
    with quick_look_in(implementation), pytest.raises(DecodeError):
        sync_checks.sync_request(wire, NOW)
    bad_update = encoded_field(2, good("p0").SerializeToString() + encoded_field(3, b"\xff"))
    with quick_look_in(implementation), pytest.raises(DecodeError):  # read update by update
        sync_checks.sync_request(wire + bad_update, NOW)


# -- the limits of the quick look are those of check_update --------------------------------------


def violations(update: pb.ProfileUpdate) -> list[str]:
    """What `check_update` finds wrong with the update at NOW."""
    limit = sync_checks.event_time_limit(NOW)
    found = sync_checks.check_update(update, prefix="u", event_time_limit=limit)
    return [v.description for v in found]


def look(update: pb.ProfileUpdate, implementation: str) -> tuple[list[int], list[IndexedAudiences]]:
    """For a request of this one update, the C quick look's unsure indexes and memberships;
    without the C, the indexes Sync rejects and the memberships it keeps."""
    if implementation == "c":
        return quick_look(update)
    checked, rejected = sync(wire_of([update]), implementation)
    return [r.index for r in rejected], list(checked.memberships)


def assert_limit(at_limit: pb.ProfileUpdate, past: pb.ProfileUpdate, implementation: str) -> None:
    """The quick look finds `at_limit` plainly good and is unsure of `past`, which
    `check_update` refuses: the limit is the same."""
    assert look(at_limit, implementation)[0] == [] and violations(at_limit) == []
    assert look(past, implementation)[0] == [0] and violations(past) != []
    _, rejected = sync(wire_of([at_limit, past]), implementation)
    assert [r.index for r in rejected] == [1]


@both_implementations
@pytest.mark.parametrize("character", ["p", "é", "😀"], ids=["1 byte", "2 bytes", "4 bytes"])
def test_the_profile_id_limit_counts_characters(implementation: str, character: str) -> None:
    limit = sync_checks.MAX_PROFILE_ID_LENGTH
    assert_limit(good(character * limit), good(character * (limit + 1)), implementation)
    mixed = good("é" * (limit - 2) + "😀a")
    assert look(mixed, implementation)[0] == []
    assert_limit(good("😀"), good(""), implementation)  # the least: one character


@both_implementations
@pytest.mark.parametrize("character", ["u", "é", "😀"], ids=["1 byte", "2 bytes", "4 bytes"])
def test_the_update_id_limit_counts_characters(implementation: str, character: str) -> None:
    at_limit, past, empty = good("p1"), good("p1"), good("p1")
    at_limit.update_id = character * sync_checks.MAX_UPDATE_ID_LENGTH
    past.update_id = character * (sync_checks.MAX_UPDATE_ID_LENGTH + 1)
    assert_limit(at_limit, past, implementation)
    assert look(empty, implementation)[0] == []  # none: one is derived


@both_implementations
def test_the_updates_per_request_limit(implementation: str) -> None:
    """A request of at most `MAX_UPDATES` updates is checked update by update; a larger one is
    refused whole, naming `updates`, whether protobuf parses it whole or not."""
    limit = sync_checks.MAX_UPDATES
    at_limit = [pb.ProfileUpdate(profile_id="p", event_time=good("p").event_time)] * limit
    checked, rejected = sync(wire_of(at_limit), implementation)
    assert (checked.count, rejected) == (limit, [])
    for wire in (
        wire_of([*at_limit, good("p")]),
        wire_of(at_limit) + encoded_field(2, with_raw(good("p"), profile=b"\xff")),
    ):
        with pytest.raises(InvalidArgument) as caught:
            sync(wire, implementation)
        assert [v.field for v in caught.value.violations] == ["updates"]


@both_implementations
def test_the_memberships_limit(implementation: str) -> None:
    ids = [f"a{i}" for i in range(sync_checks.MAX_MEMBERSHIPS + 1)]
    at_limit = good("p1", **dict.fromkeys(ids[:-1], 1))
    past = good("p1", **dict.fromkeys(ids, 1))

    assert_limit(at_limit, past, implementation)
    assert look(at_limit, implementation)[1] == [(0, tuple(ids[:-1]))]


@both_implementations
@pytest.mark.parametrize("lists", [False, True], ids=["structs", "structs and lists"])
@pytest.mark.parametrize(
    "innermost", ["struct", "list"], ids=["deepest a struct", "deepest a list"]
)
def test_the_depth_limit(implementation: str, lists: bool, innermost: str) -> None:
    def nesting(depth: int) -> pb.ProfileUpdate:
        update = good("p1")
        update.profile.Clear()
        if innermost == "list":  # an empty list for the deepest level
            update.profile.update(nested(depth - 1, [], lists=lists))
        else:
            update.profile.update(nested(depth, lists=lists))
        return update

    at_limit, past = (
        nesting(sync_checks.MAX_PROFILE_DEPTH),
        nesting(sync_checks.MAX_PROFILE_DEPTH + 1),
    )

    assert not sync_checks.too_deep(at_limit.profile, sync_checks.MAX_PROFILE_DEPTH)
    assert sync_checks.too_deep(past.profile, sync_checks.MAX_PROFILE_DEPTH)
    assert_limit(at_limit, past, implementation)


def profile_of(size: int) -> pb.ProfileUpdate:
    """An update whose profile is exactly `size` bytes."""
    update = good("p1")
    update.profile.Clear()
    update.profile.update({"k": "x" * (size - 15)})  # a key, a string: 15 bytes around it
    assert update.profile.ByteSize() == size
    return update


@both_implementations
def test_the_profile_size_limit(implementation: str) -> None:
    limit = sync_checks.MAX_PROFILE_BYTES
    assert_limit(profile_of(limit), profile_of(limit + 1), implementation)


def with_event_time(seconds: int, nanos: int = 0) -> pb.ProfileUpdate:
    update = good("p1")
    update.event_time.seconds, update.event_time.nanos = seconds, nanos
    return update


def with_memberships(*memberships: tuple[str, int]) -> pb.ProfileUpdate:
    update = good("p1")
    for audience_id, status in memberships:
        update.audiences.add(audience_id=audience_id, status=status)  # type: ignore[arg-type]
    return update


@both_implementations
def test_the_event_time_limit(implementation: str) -> None:
    """Before `latest` plain; at it unsure, though `check_update` still accepts it at nanos 0."""
    before, at = with_event_time(LATEST - 1, 999_999_999), with_event_time(LATEST)
    first, epoch = with_event_time(1), with_event_time(0)

    assert look(before, implementation)[0] == [] and violations(before) == []
    assert look(first, implementation)[0] == []
    assert violations(at) == [] and violations(epoch) == []
    if implementation == "c":
        assert quick_look(at)[0] == [0] and quick_look(epoch)[0] == [0]
    checked, rejected = sync(wire_of([before, at, first, epoch]), implementation)
    assert not rejected and checked.count == 4


@both_implementations
@pytest.mark.parametrize(
    "update",
    [
        pytest.param(with_event_time(LATEST, 1), id="past the event time limit"),
        pytest.param(with_event_time(NOW_SECONDS, 1_000_000_000), id="nanos of a second"),
        pytest.param(with_event_time(NOW_SECONDS, -1), id="negative nanos"),
        pytest.param(with_event_time(-62_135_596_801), id="before 0001-01-01"),
        pytest.param(with_memberships(("a1", 1), ("a1", 2)), id="an audience twice"),
        pytest.param(with_memberships(("", 1)), id="no audience id"),
        pytest.param(with_memberships(("a1", 0)), id="no status"),
        pytest.param(with_memberships(("a1", 4)), id="an unknown status"),
    ],
)
def test_what_check_update_refuses_is_never_plain(
    implementation: str, update: pb.ProfileUpdate
) -> None:
    """Near the limits too: each of these has one problem, which the quick look sees."""
    assert violations(update) != []
    assert look(update, implementation)[0] == [0]


# -- memory --------------------------------------------------------------------------------------


def test_requests_with_an_unknown_field_and_many_memberships_stay_within_a_bound() -> None:
    """A request with an unknown field is checked update by update in Python: hostile callers
    sending many distinct large memberships lists must not make the service hold more than a few
    MiB for it (a cache of them once held gigabytes)."""
    unknown = encoded_field(9, b"from a newer client")

    def request(number: int) -> bytes:
        message = pb.SyncRequest(destination_id="d1", request_id=f"r{number}")
        for index in range(10):
            update = message.updates.add(profile_id=f"p{index}", update_id=f"u{number}-{index}")
            update.event_time.FromSeconds(NOW_SECONDS)
            for audience in range(sync_checks.MAX_MEMBERSHIPS):
                update.audiences.add(
                    audience_id=f"audience-{number:04}-{index:02}-{audience:04}-{'x' * 48}",
                    status=pb.MEMBERSHIP_STATUS_REALIZED,
                )
        return message.SerializeToString() + unknown

    requests = [request(number) for number in range(20)]
    with retained_memory() as retained:
        for wire in requests:
            checked = sync_checks.sync_request(wire, NOW)
            assert not checked.rejected and len(checked.updates.memberships) == 10
        del checked
    # 200 distinct lists of 1,000 memberships: about 45 MiB when every one is remembered.
    assert retained.bytes < 16 * 1024 * 1024, f"{retained.mib:.0f} MiB retained"
