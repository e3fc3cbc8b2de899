"""Fuzzing: hypothesis-generated requests for every RPC, through a real gRPC client, against
the service as a subprocess (over a sandbox subprocess), once on each store (SQLite, and
PostgreSQL: `TEST_REQUIRE_POSTGRES=1` makes those fail rather than skip when it is not there).

Requests are generated from the message descriptors: every field may be set, strings are odd
Unicode or huge, numbers extreme, enums include unknown values, `Struct` profiles are random and
deeply nested JSON, timestamps lie anywhere in int64, repeated fields may be long, ids come from a
small pool (so they repeat, and some of them exist). Every answer must be OK or a documented
error code with a message; afterwards the service is alive, its health SERVING, and its memory
within bounds.

Sync gets hostile requests of its own, encoded by hand and aimed at a destination of their own
that nothing else touches: unknown fields in the request and its updates, NaN and infinite
numbers, NUL characters in every string, update ids sent again with other content. Each answer
must account for every update, an update with a NUL must be rejected naming the field, and every
accepted update must reach a final outcome: nothing stays pending.

Each test takes the `target` fixture (one service per store); a new case is one more test.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from service._proto.marketo_destination.v1 import destination_pb2_grpc as pb_grpc
from tests.harness import STANDARD_MAPPINGS, encoded_field, spec, varint
from tests.pg import fresh_database
from tests.processes import ServiceProcess, rss_kib, sandbox_process
from tests.reliability.profile import PROFILE, SEED, record

DOCUMENTED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAVAILABLE,
    }
)
SERVICE = pb.DESCRIPTOR.services_by_name["MarketoDestinationService"]
# DeleteDestination last: it may delete the destination the other RPCs aim at.
METHODS = sorted(SERVICE.methods_by_name, key=lambda name: (name == "DeleteDestination", name))
RSS_GROWTH_LIMIT_KIB = 256 * 1024
MAX_MESSAGE = 8 * 1024 * 1024
STORES = ["sqlite", "postgresql"]
SETTLE_SECONDS = 180
"""How long every accepted update of the Sync fuzzing gets to reach a final outcome."""


@dataclass
class Target:
    store: str
    service: ServiceProcess
    channel: grpc.Channel
    client: pb_grpc.MarketoDestinationServiceStub
    endpoint: str
    destination_id: str
    """The destination the descriptor-driven fuzzing aims at (and may reconfigure or delete)."""
    sync_destination_id: str
    """The destination of the hand-encoded Sync fuzzing: its connection stays good, so every
    update it accepts can be delivered."""
    baseline_rss_kib: int
    answers: dict[str, int]


@contextlib.contextmanager
def store_settings(store: str) -> Iterator[dict[str, str]]:
    """The service's environment for `store`: PostgreSQL in a database made for the run."""
    if store == "sqlite":
        yield {}
        return
    with fresh_database("md_fuzz") as url:
        yield {"MARKETO_DEST_DATABASE_URL": url}


@pytest.fixture(scope="module", params=STORES)
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    store: str = request.param
    tmp_path = tmp_path_factory.mktemp(f"fuzz-{store}")
    with contextlib.ExitStack() as stack:
        environment = stack.enter_context(store_settings(store))
        endpoint = stack.enter_context(sandbox_process())
        httpx.post(f"{endpoint}/_sandbox/reset", json={"window_seconds": 2}).raise_for_status()
        service = ServiceProcess(tmp_path / "data", endpoint, environment)
        stack.callback(lambda: service.kill() if service.alive() else None)
        channel = grpc.insecure_channel(
            f"127.0.0.1:{service.port}",
            options=[("grpc.max_send_message_length", MAX_MESSAGE)],
        )
        stack.callback(channel.close)
        client = pb_grpc.MarketoDestinationServiceStub(channel)
        connection = pb.MarketoConnection(
            munchkin_id="123-ABC-456",
            client_id="sandbox-client-id",
            client_secret="sandbox-client-secret",
            endpoint=endpoint,
        )
        destinations = []
        for name in ("Fuzz", "Fuzz Sync"):
            destination_id = client.Configure(
                pb.ConfigureRequest(spec=spec(name=name, connection=connection))
            ).destination.id
            client.Activate(
                pb.ActivateRequest(
                    destination_id=destination_id,
                    audiences=[pb.Audience(id="a1", name=name)],
                    mappings=STANDARD_MAPPINGS,
                )
            )
            destinations.append(destination_id)
        yield Target(
            store,
            service,
            channel,
            client,
            endpoint,
            destinations[0],
            destinations[1],
            rss_kib(service.pid),
            {},
        )


# -- strategies -----------------------------------------------------------------------------

ODD_TEXT = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "\u202e\u200b\ufeff",
        "😀" * 3,
        "a\udc80b".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
        "'; DROP TABLE outbox; --",
        "../../etc/passwd",
        "%s%n{0}",
        "person.email",
        "DedupeField",
        "email",
        "identityMap.ECID",
        "\n" * 50,
    ]
)
HUGE_TEXT = st.integers(10_000, 300_000).map(lambda n: "Ω" * n)
PLAIN_TEXT = st.one_of(st.text(max_size=40), ODD_TEXT)


def rarely(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`rare` one time in twenty."""
    return st.integers(0, 19).flatmap(lambda n: rare if n == 0 else common)


def text() -> st.SearchStrategy[str]:
    return rarely(PLAIN_TEXT, HUGE_TEXT)


JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**53), 2**53).map(float),
    st.text(max_size=30),
    ODD_TEXT,
)


def json_values(max_leaves: int = 30) -> st.SearchStrategy[Any]:
    return st.recursive(
        JSON_LEAF,
        lambda children: st.one_of(
            st.lists(children, max_size=5),
            st.dictionaries(st.one_of(st.text(max_size=15), ODD_TEXT), children, max_size=5),
        ),
        max_leaves=max_leaves,
    )


def deep(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": "bottom"}
    for level in range(depth):
        value = {f"n{level}": value}
    return value


def profiles() -> st.SearchStrategy[dict[str, Any]]:
    """Hostile `Struct` profiles: random JSON, plausible people with odd values, deep nesting,
    long lists."""
    person = st.fixed_dictionaries(
        {"email": st.one_of(st.emails(), text()), "firstName": json_values(5)},
        optional={"lastName": json_values(5), "consents": json_values(5)},
    )
    return st.one_of(
        st.dictionaries(st.text(max_size=10), json_values(), max_size=5),
        st.builds(lambda p: {"person": p}, person),
        st.integers(1, 200).map(lambda d: {"person": deep(d)}),
        st.integers(40, 200).map(lambda d: {"person": {"email": "deep@example.com", **deep(d)}}),
        st.integers(1_000, 20_000).map(lambda n: {"person": {"tags": ["t"] * n}}),
        st.integers(1_000, 5_000).map(lambda n: {"person": {f"f{i}": i for i in range(n)}}),
    )


ALWAYS_SET = frozenset({"updates", "profile"})
ID_POOL = ["", "p1", "p2", "a1", "a2", "dst_doesnotexist", "😀", "x" * 5_000]


def scalar(field: FieldDescriptor, target: Target) -> st.SearchStrategy[Any]:
    name = field.name
    if name == "destination_id":
        # Half the time the destination that exists, so requests reach the use cases.
        return st.one_of(st.just(target.destination_id), st.sampled_from(ID_POOL))
    if name in {"profile_id", "audience_id", "update_id", "request_id", "id", "audience_ids"}:
        return st.one_of(st.sampled_from(ID_POOL), text())
    if name == "endpoint":
        # Only addresses that answer at once: no fuzz example may wait on the network.
        return st.sampled_from(
            [
                target.endpoint,
                "",
                "http://127.0.0.1:9",
                "file:///etc/passwd",
                "not a url",
                "http://",
            ]
        )
    if name == "webhook_url":
        return st.sampled_from(["", "http://127.0.0.1:9/hook", "ftp://x", "not a url"])
    if name == "client_id":
        return st.one_of(st.just("sandbox-client-id"), text())
    if name == "client_secret":
        return st.one_of(st.just("sandbox-client-secret"), text())
    if name == "munchkin_id":
        return st.one_of(st.just("123-ABC-456"), text())
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return text()
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=100)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=64 if kind == FieldDescriptor.TYPE_DOUBLE else 32)
    if kind == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1))
    if kind in (
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SFIXED32,
    ):
        return st.one_of(
            st.sampled_from([0, -1, 1, 2**31 - 1, -(2**31)]), st.integers(-(2**31), 2**31 - 1)
        )
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    return st.one_of(
        st.sampled_from([0, -1, 2**63 - 1, -(2**63)]), st.integers(-(2**63), 2**63 - 1)
    )


def long_lists(values: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.integers(100, 3_000).flatmap(lambda n: st.lists(values, min_size=n, max_size=n))


@st.composite
def messages(draw: st.DrawFn, descriptor: Descriptor, target: Target, depth: int = 0) -> Message:
    from google.protobuf import message_factory

    message = message_factory.GetMessageClass(descriptor)()
    if descriptor.full_name == "google.protobuf.Struct":
        message.update(draw(profiles()))  # type: ignore[attr-defined]
        return message
    if descriptor.full_name in {"google.protobuf.Timestamp", "google.protobuf.Duration"}:
        message.seconds = draw(  # type: ignore[attr-defined]
            st.one_of(
                st.sampled_from([0, -1, -62_135_596_801, 253_402_300_800, 2**63 - 1, -(2**63)]),
                st.integers(-(2**63), 2**63 - 1),
                st.integers(0, 2_000_000_000),
            )
        )
        message.nanos = draw(st.integers(-(2**31), 2**31 - 1))  # type: ignore[attr-defined]
        return message
    for field in descriptor.fields:
        # Profiles and their updates are where hostile data lives: always send some.
        always = field.name in ALWAYS_SET
        if not always and not draw(st.booleans()):
            continue
        repeated = field.is_repeated
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            entries = draw(
                st.dictionaries(scalar(key_field, target), scalar(value_field, target), max_size=4)
            )
            getattr(message, field.name).update(entries)
            continue
        if field.message_type is not None:
            if depth > 3:
                continue
            child = messages(field.message_type, target, depth + 1)
            if repeated:
                for item in draw(st.lists(child, min_size=int(always), max_size=4)):
                    getattr(message, field.name).add().CopyFrom(item)
            else:
                getattr(message, field.name).CopyFrom(draw(child))
            continue
        values = scalar(field, target)
        if repeated:
            many = rarely(st.lists(values, max_size=4), long_lists(values))
            getattr(message, field.name).extend(draw(many))
        else:
            setattr(message, field.name, draw(values))
    return message


# -- calls --------------------------------------------------------------------------------


def call(target: Target, name: str, requests: list[Message]) -> grpc.StatusCode:
    method = SERVICE.methods_by_name[name]
    rpc = getattr(target.client, name)
    try:
        if method.client_streaming:
            for _ in rpc(iter(requests), timeout=60):
                pass
        elif method.server_streaming:
            try:
                for _ in rpc(requests[0], timeout=1.0):
                    pass
            except grpc.RpcError as error:
                # A watch that is still open after a second is a good watch.
                if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
        else:
            rpc(requests[0], timeout=60)
    except grpc.RpcError as error:
        code = error.code()
        assert code in DOCUMENTED, f"{name} answered {code}: {error.details()}"
        assert error.details(), f"{name} answered {code} without a message"
        return code
    return grpc.StatusCode.OK


@pytest.mark.parametrize("name", METHODS)
def test_every_answer_is_ok_or_a_documented_error(target: Target, name: str) -> None:
    method = SERVICE.methods_by_name[name]

    @settings(
        max_examples=PROFILE.fuzz_examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @seed(SEED)
    @given(requests=st.lists(messages(method.input_type, target), min_size=1, max_size=3))
    def fuzz(requests: list[Message]) -> None:
        code = call(target, name, requests)
        key = f"{name}:{code.name}"
        target.answers[key] = target.answers.get(key, 0) + 1
        assert target.service.alive(), f"the service died on {name}"

    fuzz()


# -- Sync, encoded by hand ------------------------------------------------------------------

NUL_TEXT = st.sampled_from(["\x00", "a\x00", "\x00b", "in\x00side", "\x00" * 3])
SYNC_TEXT = st.one_of(st.text(max_size=20), ODD_TEXT, NUL_TEXT)
NUMBERS = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324]), st.floats()
)
SYNC_LEAF = st.one_of(st.none(), st.booleans(), NUMBERS, SYNC_TEXT, st.emails())
SYNC_VALUES = st.recursive(
    SYNC_LEAF,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(SYNC_TEXT, children, max_size=4)
    ),
    max_leaves=12,
)
SYNC_PROFILES = st.builds(
    lambda email, first_name, last_name, rest: {
        **rest,
        "person": {"email": email, "firstName": first_name, "lastName": last_name},
    },
    rarely(st.emails(), SYNC_TEXT),
    st.one_of(st.text(min_size=1, max_size=10), NUMBERS),
    rarely(st.text(min_size=1, max_size=10), SYNC_LEAF),
    st.dictionaries(SYNC_TEXT, SYNC_VALUES, max_size=3),
)
"""Mostly a person with a valid e-mail (delivered, so NaN and infinities reach the mapping and
the Marketo client), amid any other values."""


@st.composite
def unknown_fields(draw: st.DrawFn, first: int) -> bytes:
    """Fields numbered from `first` to 15 that the message does not know, of every wire type."""
    encoded = b""
    for _ in range(draw(st.integers(0, 2))):
        number = draw(st.integers(first, 15))
        wire_type = draw(st.sampled_from([0, 1, 2, 5]))
        if wire_type == 2:
            encoded += encoded_field(number, draw(st.binary(max_size=12)))
            continue
        tag = bytes([number << 3 | wire_type])
        if wire_type == 0:
            encoded += tag + varint(draw(st.integers(0, 2**64 - 1)))
        else:
            size = 8 if wire_type == 1 else 4
            encoded += tag + draw(st.binary(min_size=size, max_size=size))
    return encoded


@dataclass(frozen=True)
class SyncUpdate:
    """One generated update: its encoding and whether a string of it holds a NUL."""

    encoded: bytes
    has_nul: bool


def holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(holds_nul(k) or holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(holds_nul(item) for item in value)
    return False


@st.composite
def sync_updates(draw: st.DrawFn) -> SyncUpdate:
    """An update that is mostly valid (so that it is delivered), with NaN, infinities, NULs,
    unknown fields, and update ids from a small pool (sent again, often with other content)."""
    message = pb.ProfileUpdate(
        profile_id=draw(rarely(st.text(min_size=1, max_size=8), SYNC_TEXT)),
        update_id=draw(rarely(st.sampled_from(["", "", "u1", "u2"]), SYNC_TEXT)),
    )
    message.event_time.seconds = int(time.time()) - draw(st.integers(0, 86_400))
    profile = draw(SYNC_PROFILES)
    message.profile.update(profile)
    audiences = draw(st.lists(st.sampled_from(["a1", "a\x001"]), max_size=2, unique=True))
    for audience_id in audiences:
        message.audiences.add(audience_id=audience_id, status=pb.MEMBERSHIP_STATUS_REALIZED)
    strings = [message.profile_id, message.update_id, profile, audiences]
    return SyncUpdate(
        message.SerializeToString() + draw(unknown_fields(6)),
        any(holds_nul(value) for value in strings),
    )


def sync_raw(target: Target, requests: list[bytes]) -> list[pb.SyncResponse]:
    """Sync with requests sent as they are encoded."""
    method = target.channel.stream_stream(
        f"/{SERVICE.full_name}/Sync",
        request_serializer=lambda raw: raw,
        response_deserializer=pb.SyncResponse.FromString,
    )
    return list(method(iter(requests), timeout=60))


def test_sync_accounts_for_every_hostile_update(target: Target) -> None:
    """Unknown fields, NaN and infinities, NULs anywhere: each update is accepted or rejected
    on its own, and every update with a NUL is rejected, naming the field."""

    @settings(
        max_examples=PROFILE.fuzz_examples * 2,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @seed(SEED)
    @given(
        batches=st.lists(st.lists(sync_updates(), min_size=1, max_size=6), min_size=1, max_size=3),
        request_unknown=unknown_fields(4),
    )
    def fuzz(batches: list[list[SyncUpdate]], request_unknown: bytes) -> None:
        requests = [
            encoded_field(1, target.sync_destination_id.encode())
            + b"".join(encoded_field(2, update.encoded) for update in batch)
            + encoded_field(3, f"r{index}".encode())
            + request_unknown
            for index, batch in enumerate(batches)
        ]
        answers = sync_raw(target, requests)
        assert len(answers) == len(batches)
        for batch, answer in zip(batches, answers, strict=True):
            assert answer.accepted + len(answer.rejected) == len(batch), answer
            rejected = {r.index: r for r in answer.rejected}
            for index, update in enumerate(batch):
                if update.has_nul:
                    assert index in rejected, f"an update with a NUL was accepted: {answer}"
                    assert "NUL character" in rejected[index].reason, rejected[index]
                    assert rejected[index].field.startswith(f"updates[{index}]."), answer
            key = f"Sync (hand-encoded):accepted={min(answer.accepted, 1)}"
            target.answers[key] = target.answers.get(key, 0) + 1
        assert target.service.alive(), "the service died on Sync"

    fuzz()


def test_every_accepted_update_reaches_a_final_outcome(target: Target) -> None:
    """Nothing the Sync fuzzing got accepted stays pending: each update was delivered,
    excluded, failed, superseded or dropped as a duplicate."""
    request = pb.GetDataflowRequest(destination_id=target.sync_destination_id)
    deadline = time.monotonic() + SETTLE_SECONDS
    flow = target.client.GetDataflow(request, timeout=10).dataflow
    while flow.pending and time.monotonic() < deadline:
        time.sleep(0.5)
        flow = target.client.GetDataflow(request, timeout=10).dataflow
    assert flow.received > 0
    assert flow.pending == 0, f"still pending after {SETTLE_SECONDS} s on {target.store}: {flow}"
    record(
        f"fuzz_sync_{target.store}",
        {
            "received": flow.received,
            "activated": flow.activated.created + flow.activated.updated,
            "excluded": dict(flow.excluded),
            "failed": dict(flow.failed),
            "superseded": flow.superseded,
            "duplicates": flow.duplicates,
        },
    )


def test_the_service_is_healthy_and_bounded_afterwards(target: Target) -> None:
    assert target.service.alive()
    health = health_pb2_grpc.HealthStub(target.channel)
    answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    answer = health.Check(health_pb2.HealthCheckRequest(service=SERVICE.full_name), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    # The destination the fuzzing aimed at still answers normally.
    target.client.ListDestinations(pb.ListDestinationsRequest(), timeout=10)
    rss = rss_kib(target.service.pid)
    log = target.service.log.read_text()
    record(
        f"fuzz_{target.store}",
        {
            "examples_per_rpc": PROFILE.fuzz_examples,
            "answers": dict(sorted(target.answers.items())),
            "rss_baseline_mib": round(target.baseline_rss_kib / 1024, 1),
            "rss_after_mib": round(rss / 1024, 1),
            "peak_rss_mib": round(rss_kib(target.service.pid, "VmHWM") / 1024, 1),
        },
    )
    assert rss - target.baseline_rss_kib < RSS_GROWTH_LIMIT_KIB, (target.baseline_rss_kib, rss)
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]


# -- forged page tokens -------------------------------------------------------------------


def forged_page_tokens() -> st.SearchStrategy[str]:
    """Page tokens that decode (base64 of JSON shaped like a real token, with positions of any
    type and size, or of any bytes), and real-looking tokens written differently."""
    import base64
    import json

    position = st.lists(
        st.one_of(
            st.integers(-(2**70), 2**70),
            st.sampled_from([-1, 0, 2**63 - 1, 2**63, 2**64, -(2**63) - 1]),
            st.floats(),
            st.booleans(),
            st.none(),
            st.text(max_size=20),
            ODD_TEXT,
            st.just("\ud800"),
            json_values(5),
        ),
        max_size=4,
    )
    shaped = st.builds(
        lambda listing, scope, p: {"l": listing, "s": scope, "p": p},
        st.sampled_from(["destinations", "outcomes", "", "x"]),
        st.one_of(st.none(), st.text(max_size=16)),
        position,
    ).map(lambda data: json.dumps(data).encode("utf-8", "surrogatepass"))
    raw = st.one_of(
        shaped, st.binary(max_size=200), json_values(10).map(lambda v: json.dumps(v).encode())
    )
    encoded = raw.map(lambda data: base64.urlsafe_b64encode(data).decode())
    padded = st.tuples(encoded, st.sampled_from(["", "=", "==", "\n", " ", "!", "+/"])).map(
        lambda pair: pair[0].rstrip("=") + pair[1]
    )
    return st.one_of(padded, text())


def test_forged_page_tokens_are_invalid_arguments(target: Target) -> None:
    """A page token the service did not issue answers INVALID_ARGUMENT naming `page_token`
    (or, for an empty one, the first page): never INTERNAL or any other code."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    def forged(rpc: Any, request: Message) -> None:
        try:
            rpc(request, timeout=60)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (
                error.code(),
                error.details(),
            )
            status = rpc_status.from_call(error)  # type: ignore[arg-type]
            assert status is not None
            fields = set()
            for detail in status.details:
                bad = error_details_pb2.BadRequest()
                if detail.Unpack(bad):
                    fields.update(v.field for v in bad.field_violations)
            assert "page_token" in fields, fields
        else:
            assert not request.page_token  # type: ignore[attr-defined]

    # A destination of its own: the fuzzing of DeleteDestination may have deleted the target's.
    connection = pb.MarketoConnection(
        munchkin_id="123-ABC-456",
        client_id="sandbox-client-id",
        client_secret="sandbox-client-secret",
        endpoint=target.endpoint,
    )
    destination_id = target.client.Configure(
        pb.ConfigureRequest(spec=spec(name="Forged tokens", connection=connection)), timeout=60
    ).destination.id

    @settings(
        max_examples=PROFILE.fuzz_examples * 4,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @seed(SEED)
    @given(token=forged_page_tokens())
    def fuzz(token: str) -> None:
        forged(target.client.ListDestinations, pb.ListDestinationsRequest(page_token=token))
        forged(
            target.client.ListProfileOutcomes,
            pb.ListProfileOutcomesRequest(destination_id=destination_id, page_token=token),
        )
        assert target.service.alive()

    fuzz()
