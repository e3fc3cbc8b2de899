"""The whole service in process: the Marketo sandbox over ASGI, the real store, a real gRPC
server on a free loopback port and a client stub."""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from starlette.applications import Starlette

from sandbox import SandboxSettings, asgi_transport, create_app
from service._proto.marketo_destination.v1 import destination_pb2 as pb
from service._proto.marketo_destination.v1 import destination_pb2_grpc as pb_grpc
from service.api.access import Principals
from service.api.server import application_server
from service.app import Application, open_application
from service.settings import Settings
from service.telemetry.core import Telemetry
from service.telemetry.logs import QUIET_LOGGERS, configure_logging

MUNCHKIN = "123-ABC-456"
ENDPOINT = f"https://{MUNCHKIN}.mktorest.com"
CLIENT_ID = "sandbox-client-id"
CLIENT_SECRET = "sandbox-client-secret"
LOOPBACK_WEBHOOKS = "http://127.0.0.1:*,http://[::1]:*"


@dataclass
class Service:
    app: Application
    channel: grpc.aio.Channel
    stub: pb_grpc.MarketoDestinationServiceStub
    http: httpx.AsyncClient
    settings: Settings
    port: int
    metadata: tuple[tuple[str, str], ...] = field(default=())

    async def control(self, method: str, path: str, body: Any = None) -> Any:
        response = await self.http.request(method, f"{ENDPOINT}/_sandbox/{path}", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    async def leads(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (await self.control("GET", "leads"))["leads"]
        return result

    async def lists(self) -> dict[int, set[int]]:
        dump = await self.control("GET", "lists")
        return {item["id"]: set(item["members"]) for item in dump["lists"]}


async def sandbox_token(service: Service) -> str:
    """The access token the sandbox hands these credentials: the same one the service holds
    while it is valid."""
    response = await service.http.post(
        f"{ENDPOINT}/identity/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        },
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    assert len(token) >= 16
    return token


def connection(**changes: str) -> pb.MarketoConnection:
    values = {
        "munchkin_id": MUNCHKIN,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "endpoint": ENDPOINT,
    }
    values.update(changes)
    return pb.MarketoConnection(**values)


def spec(**changes: Any) -> pb.DestinationSpec:
    values: dict[str, Any] = {
        "name": "Marketing",
        "connection": connection(),
        "sync_type": pb.SYNC_TYPE_AUDIENCE_AND_PROFILE,
        "person_action": pb.PERSON_ACTION_UPDATE_EXISTING_AND_CREATE_NEW,
        "dedupe_field": "email",
    }
    values.update(changes)
    return pb.DestinationSpec(**values)


STANDARD_MAPPINGS = (
    pb.FieldMapping(source="person.email", target="DedupeField", transform="lowercase"),
    pb.FieldMapping(source="person.firstName", target="firstName"),
    pb.FieldMapping(source="person.lastName", target="lastName"),
)


MEMBER_OF = "a1"
"""The audience the tests' destinations activate and `update()`'s profile is a member of."""


def at(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.fromtimestamp(seconds, UTC))
    return stamp


def update(
    profile_id: str,
    email: str | None,
    *,
    first: str = "Ada",
    last: str = "Lovelace",
    time: float = 1_780_000_000.0,
    audiences: dict[str, int] | None = None,
    **extra: Any,
) -> pb.ProfileUpdate:
    """A profile update; with `audiences` None, a member (realized) of `MEMBER_OF`, the audience
    the tests' destinations activate: a destination exports the members of its activated
    audiences only (`audiences={}`: an update with no membership)."""
    person: dict[str, Any] = {"firstName": first, "lastName": last, **extra}
    if email is not None:
        person["email"] = email
    message = pb.ProfileUpdate(profile_id=profile_id, event_time=at(time))
    message.profile.update({"person": person})
    if audiences is None:
        audiences = {MEMBER_OF: pb.MEMBERSHIP_STATUS_REALIZED}
    for audience_id, status in audiences.items():
        message.audiences.add(audience_id=audience_id, status=status)  # type: ignore[arg-type]
    return message


def varint(value: int, width: int = 0) -> bytes:
    """`value` as a protobuf varint (a negative one in ten bytes) of at least `width` bytes (an
    overlong encoding when that is more than it needs)."""
    value &= 2**64 - 1
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    if width > len(out):
        out[-1] |= 0x80
        out += b"\x80" * (width - len(out) - 1) + b"\x00"
    return bytes(out)


def encoded_field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (field numbers below 16), encoded by hand as any
    client may: e.g. a SyncRequest whose updates a protobuf library would refuse to parse."""
    return bytes([number << 3 | 2]) + varint(len(payload)) + payload


def damaged(batch: bytes, broken: int) -> bytes:
    """An encoded SyncRequest (an inbox batch) with the profile of update `broken` damaged (a
    map entry running past its end), as a damaged row would be: its other fields still read."""
    updates = [u.SerializeToString() for u in pb.SyncRequest.FromString(batch).updates]
    updates[broken] += encoded_field(3, b"\x0a\x05short")  # merged into the profile
    return b"".join(encoded_field(2, update) for update in updates)


@contextlib.asynccontextmanager
async def running_service(
    tmp_path: Path,
    *,
    principals: Principals | None = None,
    sandbox_settings: SandboxSettings | None = None,
    telemetry: Telemetry | None = None,
    marketo: Starlette | None = None,
    marketo_http: httpx.AsyncClient | None = None,
    **overrides: Any,
) -> AsyncIterator[Service]:
    """Start everything; `overrides` change the service's Settings. `marketo`: a sandbox app
    to use instead of a new one (it outlives the service: a restart over the same Marketo).

    With `telemetry`, the service is traced as `serve` traces it: the server interceptor, the
    Marketo client's calls and the dispatcher's batch spans. With
    `marketo_http`, the service calls Marketo through it instead of the sandbox."""
    sandbox = marketo or create_app(sandbox_settings or SandboxSettings())
    settings = replace(
        Settings(
            address="127.0.0.1:0",
            data_dir=tmp_path / "data",
            linger_seconds=0.05,
            # Webhook receivers of tests listen on loopback.
            allowed_webhook_origins=LOOPBACK_WEBHOOKS,
        ),
        **overrides,
    )
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            httpx.AsyncClient(transport=asgi_transport(sandbox), timeout=30.0)
        )
        if marketo_http is None:
            marketo_http = http
        app = await stack.enter_async_context(
            open_application(settings, http=marketo_http, telemetry=telemetry)
        )
        if principals is not None:
            app = replace(app, principals=principals)
        server, port = await application_server(app, settings, telemetry=telemetry)
        await server.start()
        stack.push_async_callback(server.stop, None)
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        yield Service(
            app=app,
            channel=channel,
            stub=pb_grpc.MarketoDestinationServiceStub(channel),
            http=http,
            settings=settings,
            port=port,
        )


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The BadRequest field violations of an INVALID_ARGUMENT answer."""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    found: dict[str, str] = {}
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            found.update({v.field: v.description for v in bad.field_violations})
    return found


@dataclass
class CapturedLogs:
    """What the service's logging set-up wrote, and every record that reached the root."""

    out: io.StringIO
    records: list[logging.LogRecord]

    def texts(self) -> list[str]:
        """Each record's message, then the whole formatted output."""
        return [r.getMessage() for r in self.records] + [self.out.getvalue()]


class _Keep(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self._records = records

    def emit(self, record: logging.LogRecord) -> None:
        self._records.append(record)


@contextlib.contextmanager
def service_logging(level: int = logging.DEBUG) -> Iterator[CapturedLogs]:
    """The service's logging set-up (`configure_logging`) at `level`, into a buffer, every
    record also kept; the root logger and the quieted loggers are restored after."""
    root = logging.getLogger()
    handlers, root_level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    captured = CapturedLogs(io.StringIO(), [])
    configure_logging(level, json=True, stream=captured.out)
    root.addHandler(_Keep(captured.records))
    try:
        yield captured
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(root_level)
        for name, old in quiet.items():
            logging.getLogger(name).setLevel(old)


@dataclass
class Retained:
    """What `retained_memory` measured: bytes still allocated after the block."""

    bytes: int = 0

    @property
    def mib(self) -> float:
        return self.bytes / 2**20


@contextlib.contextmanager
def retained_memory() -> Iterator[Retained]:
    """Measure the bytes Python allocated in the block and still holds after it (tracemalloc,
    after a garbage collection). The block deletes its own references to what it made."""
    found = Retained()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        yield found
        gc.collect()
        found.bytes = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
