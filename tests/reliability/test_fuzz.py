"""Fuzzing: hypothesis-generated requests for every RPC, through a real gRPC client, against
the service as a subprocess (over a sandbox subprocess).

Requests are generated from the message descriptors: every field may be set, strings are odd
Unicode or huge, numbers extreme, enums include unknown values, `Struct` profiles are random and
deeply nested JSON, timestamps lie anywhere in int64, repeated fields may be long, ids come from a
small pool (so they repeat, and some of them exist). Every answer must be OK or a documented
error code with a message; afterwards the service is alive, its health SERVING, and its memory
within bounds.
"""

from __future__ import annotations

import contextlib
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
from tests.harness import STANDARD_MAPPINGS, spec
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


@dataclass
class Target:
    service: ServiceProcess
    channel: grpc.Channel
    client: pb_grpc.MarketoDestinationServiceStub
    endpoint: str
    destination_id: str
    baseline_rss_kib: int
    answers: dict[str, int]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    tmp_path = tmp_path_factory.mktemp("fuzz")
    with contextlib.ExitStack() as stack:
        endpoint = stack.enter_context(sandbox_process())
        httpx.post(f"{endpoint}/_sandbox/reset", json={"window_seconds": 2}).raise_for_status()
        service = ServiceProcess(tmp_path / "data", endpoint)
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
        destination_id = client.Configure(
            pb.ConfigureRequest(spec=spec(connection=connection))
        ).destination.id
        client.Activate(
            pb.ActivateRequest(
                destination_id=destination_id,
                audiences=[pb.Audience(id="a1", name="Fuzz")],
                mappings=STANDARD_MAPPINGS,
            )
        )
        yield Target(service, channel, client, endpoint, destination_id, rss_kib(service.pid), {})


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
        "fuzz",
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
