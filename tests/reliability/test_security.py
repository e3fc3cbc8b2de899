"""Security: callers without valid credentials, with another tenant's token or with forged
metadata are refused with the right code and learn nothing; the Marketo client secret never
appears (as bytes) in logs, spans, responses or the database files; TLS and mTLS listeners built
by the real `build_server` from Settings accept good clients and refuse bad ones.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.message import Message
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sandbox import SandboxSettings, asgi_transport, create_app
from service._proto.marketo_destination.v1 import destination_pb2 as pb
from service._proto.marketo_destination.v1 import destination_pb2_grpc as pb_grpc
from service.api.access import ALL_PERMISSIONS
from service.api.server import application_server
from service.app import open_application
from service.settings import Settings
from service.telemetry.core import Telemetry
from tests.access.harness import Pki, make_pki
from tests.harness import LOOPBACK_WEBHOOKS, STANDARD_MAPPINGS, connection, spec, update

SECRET = "mkto-Cl1ent-S3cret-7f9a2c41d8e6b053"
WEBHOOK_SECRET = "whsec-R3liab1lity-91c0ffee"
TOKENS = {
    "acme": "tok-acme-admin-0c5e8f1d2b3a4967",
    "globex": "tok-globex-admin-6a1b2c3d4e5f6071",
    "viewer": "tok-acme-viewer-5d4c3b2a19087f6e",
}
OPTIONS = (("grpc.ssl_target_name_override", "localhost"),)
SERVICE = pb.DESCRIPTOR.services_by_name["MarketoDestinationService"]


def principals_file(directory: Path) -> Path:
    entries = [
        {
            "name": "acme-admin",
            "tenant": "acme",
            "permissions": sorted(ALL_PERMISSIONS),
            "token": TOKENS["acme"],
        },
        {
            "name": "globex-admin",
            "tenant": "globex",
            "permissions": sorted(ALL_PERMISSIONS),
            "token": TOKENS["globex"],
        },
        {
            "name": "acme-viewer",
            "tenant": "acme",
            "permissions": ["destinations.view"],
            "token": TOKENS["viewer"],
        },
        {
            "name": "batch",
            "tenant": "acme",
            "permissions": ["destinations.view"],
            "mtls_subject": "batch.acme.internal",
        },
    ]
    path = directory / "principals.json"
    path.write_text(json.dumps(entries))
    return path


def bearer(who: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[who]}"),)


@dataclass
class Running:
    port: int
    spans: InMemorySpanExporter
    settings: Settings


@contextlib.asynccontextmanager
async def serve(tmp_path: Path, **overrides: Any) -> AsyncIterator[Running]:
    """The service in process with a principals file, a sandbox whose client secret is SECRET
    and telemetry exporting spans to memory."""
    sandbox = create_app(SandboxSettings(client_secret=SECRET))
    settings = replace(
        Settings(address="127.0.0.1:0", data_dir=tmp_path / "data", linger_seconds=0.05),
        principals_file=principals_file(tmp_path),
        log_level="DEBUG",
        allowed_webhook_origins=LOOPBACK_WEBHOOKS,
        **overrides,
    )
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    telemetry = Telemetry(
        tracer_provider=tracer_provider, meter_provider=MeterProvider(), enabled=True
    )
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            httpx.AsyncClient(transport=asgi_transport(sandbox), timeout=30.0)
        )
        app = await stack.enter_async_context(
            open_application(settings, http=http, telemetry=telemetry)
        )
        server, port = await application_server(app, settings, telemetry=telemetry)
        await server.start()
        stack.push_async_callback(server.stop, None)
        yield Running(port, spans, settings)
        tracer_provider.force_flush()


async def invoke(
    channel: grpc.aio.Channel, name: str, request: Message, metadata: Sequence[tuple[str, str]]
) -> tuple[grpc.StatusCode, str, list[Message]]:
    """Call any RPC; returns its code, details and the responses received."""
    client = pb_grpc.MarketoDestinationServiceStub(channel)
    method = SERVICE.methods_by_name[name]
    responses: list[Message] = []
    try:
        if method.client_streaming:
            call = getattr(client, name)(metadata=metadata)
            await call.write(request)
            await call.done_writing()  # see docs/access-control.md, "Known client quirk"
            async for response in call:
                responses.append(response)
        elif method.server_streaming:
            async for response in getattr(client, name)(request, metadata=metadata, timeout=1):
                responses.append(response)
        else:
            responses.append(await getattr(client, name)(request, metadata=metadata, timeout=30))
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or "", responses
    return grpc.StatusCode.OK, "", responses


def request_for(name: str, destination_id: str) -> Message:
    """A well-formed request of RPC `name` aimed at `destination_id`."""
    if name == "Configure":
        return pb.ConfigureRequest(destination_id=destination_id, spec=spec(name="Hijacked"))
    if name == "ListDestinations":
        return pb.ListDestinationsRequest()
    if name == "Activate":
        return pb.ActivateRequest(
            destination_id=destination_id,
            audiences=[pb.Audience(id="a9", name="Intruder")],
            mappings=STANDARD_MAPPINGS,
        )
    if name == "Deactivate":
        return pb.DeactivateRequest(destination_id=destination_id, audience_ids=["a1"])
    if name in {"Sync", "PreviewSync"}:
        cls = pb.SyncRequest if name == "Sync" else pb.PreviewSyncRequest
        return cls(destination_id=destination_id, updates=[update("p1", "ada@example.com")])
    if name == "ListProfileOutcomes":
        return pb.ListProfileOutcomesRequest(destination_id=destination_id, profile_id="p1")
    if name == "ForgetProfile":
        return pb.ForgetProfileRequest(destination_id=destination_id, profile_id="p1")
    if name == "WatchAlerts":
        return pb.WatchAlertsRequest(destination_id=destination_id, include_open=True)
    cls = getattr(pb, f"{name}Request")
    return cls(destination_id=destination_id)  # type: ignore[no-any-return]


def secret_free(what: str, data: bytes) -> None:
    for secret in (SECRET, WEBHOOK_SECRET, *TOKENS.values()):
        assert secret.encode() not in data, f"{secret!r} found in {what}"


async def test_intruders_are_refused_and_learn_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with (
        serve(tmp_path) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        client = pb_grpc.MarketoDestinationServiceStub(channel)
        responses: list[Message] = []
        # Globex's destination, with the secret, an activation, synced and delivered profiles.
        alerts = pb.AlertSubscription(
            webhook_url="http://127.0.0.1:9/hook", webhook_secret=WEBHOOK_SECRET
        )
        configured = await client.Configure(
            pb.ConfigureRequest(
                spec=spec(
                    name="Globex private",
                    connection=connection(client_secret=SECRET),
                    alerts=alerts,
                )
            ),
            metadata=bearer("globex"),
        )
        responses.append(configured)
        theirs = configured.destination.id
        activated = await client.Activate(
            pb.ActivateRequest(
                destination_id=theirs,
                audiences=[pb.Audience(id="a1", name="Globex list")],
                mappings=STANDARD_MAPPINGS,
            ),
            metadata=bearer("globex"),
        )
        responses.append(activated)
        for name in SERVICE.methods_by_name:
            if name not in {"Configure", "DeleteDestination", "Activate", "Deactivate"}:
                code, details, answers = await invoke(
                    channel, name, request_for(name, theirs), bearer("globex")
                )
                assert code in {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}, (
                    name,
                    code,
                    details,
                )
                responses += answers
        # Globex sees its own destination; it is a real one.
        listed = await client.ListDestinations(
            pb.ListDestinationsRequest(), metadata=bearer("globex")
        )
        assert [d.id for d in listed.destinations] == [theirs]
        responses.append(listed)

        refusals: dict[str, set[grpc.StatusCode]] = {}
        for name in SERVICE.methods_by_name:
            request = request_for(name, theirs)
            cases: dict[str, tuple[Sequence[tuple[str, str]], set[grpc.StatusCode]]] = {
                "no token": ((), {grpc.StatusCode.UNAUTHENTICATED}),
                "wrong token": (
                    (("authorization", "Bearer tok-not-a-real-token"),),
                    {grpc.StatusCode.UNAUTHENTICATED},
                ),
                "other scheme": (
                    (("authorization", f"Basic {TOKENS['globex']}"),),
                    {grpc.StatusCode.UNAUTHENTICATED},
                ),
                "two tokens": (
                    (*bearer("acme"), *bearer("globex")),
                    {grpc.StatusCode.UNAUTHENTICATED},
                ),
                "forged identity, no token": (
                    (("x-tenant", "globex"), ("x-principal", "globex-admin")),
                    {grpc.StatusCode.UNAUTHENTICATED},
                ),
                # Another tenant's destination does not exist for acme (NOT_FOUND), whatever the
                # forged headers say; ListDestinations answers OK with nothing of globex's.
                "other tenant": (bearer("acme"), {grpc.StatusCode.NOT_FOUND}),
                "other tenant, forged tenant": (
                    (*bearer("acme"), ("x-tenant", "globex"), ("x-principal", "globex-admin")),
                    {grpc.StatusCode.NOT_FOUND},
                ),
                "missing permission": (
                    bearer("viewer"),
                    {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND},
                ),
            }
            for case, (metadata, expected) in cases.items():
                if name == "ListDestinations" and case.startswith(("other tenant", "missing")):
                    expected = {grpc.StatusCode.OK}
                if name == "Configure" and case == "missing permission":
                    expected = {grpc.StatusCode.PERMISSION_DENIED}
                code, details, answers = await invoke(channel, name, request, metadata)
                refusals.setdefault(case, set()).add(code)
                assert code in expected, (name, case, code, details)
                assert code == grpc.StatusCode.OK or details, (name, case, "no message")
                for leak in ("Globex private", "globex-admin", SECRET, WEBHOOK_SECRET):
                    assert leak not in details, (name, case, details)
                for answer in answers:
                    if isinstance(answer, pb.ListDestinationsResponse):
                        assert not answer.destinations, (name, case, answer)
                    else:
                        pytest.fail(f"{name} answered {case}: {answer}")
        # Nothing changed: globex's destination is intact, not renamed, nothing activated by acme.
        after = await client.GetDestination(
            pb.GetDestinationRequest(destination_id=theirs), metadata=bearer("globex")
        )
        assert after.destination.spec.name == "Globex private"
        assert {a.audience_id for a in after.destination.audiences} == {"a1"}
        responses.append(after)
        described = await client.DescribeMarketo(
            pb.DescribeMarketoRequest(destination_id=theirs), metadata=bearer("globex")
        )
        responses.append(described)
        # A wrong secret in a Configure is not echoed either.
        code, details, _ = await invoke(
            channel,
            "Configure",
            pb.ConfigureRequest(
                spec=spec(name="Bad", connection=connection(client_secret=SECRET + "x"))
            ),
            bearer("globex"),
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION, (code, details)
        assert SECRET not in details
    for response in responses:
        secret_free(f"a {type(response).__name__}", response.SerializeToString())
    secret_free("the log", "\n".join(r.getMessage() for r in caplog.records).encode())
    secret_free("the log", caplog.text.encode())
    spans = running.spans.get_finished_spans()
    assert spans, "no span recorded"
    for span in spans:
        secret_free(f"span {span.name}", span.to_json().encode())
    files = [p for p in running.settings.data_dir.rglob("*") if p.is_file()]
    assert any(p.suffix in {".db", ".sqlite", ".sqlite3"} or "wal" in p.name for p in files), files
    for path in files:
        secret_free(f"the database file {path.name}", path.read_bytes())


# -- TLS and mutual TLS, through build_server and Settings ---------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def credentials(
    pki: Pki, root: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(root or pki.ca_cert).read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )


async def list_over(
    port: int, creds: grpc.ChannelCredentials | None, metadata: Sequence[tuple[str, str]] = ()
) -> grpc.StatusCode:
    target = f"127.0.0.1:{port}"
    channel = (
        grpc.aio.secure_channel(target, creds, options=OPTIONS)
        if creds is not None
        else grpc.aio.insecure_channel(target)
    )
    async with channel:
        code, _, _ = await invoke(
            channel, "ListDestinations", pb.ListDestinationsRequest(), metadata
        )
    return code


async def test_tls_listener_accepts_good_clients_and_refuses_bad_ones(
    tmp_path: Path, pki: Pki
) -> None:
    async with serve(tmp_path, tls_cert_file=pki.server_cert, tls_key_file=pki.server_key) as s:
        assert await list_over(s.port, credentials(pki), bearer("acme")) == grpc.StatusCode.OK
        assert await list_over(s.port, credentials(pki)) == grpc.StatusCode.UNAUTHENTICATED
        assert await list_over(s.port, None, bearer("acme")) == grpc.StatusCode.UNAVAILABLE
        distrusting = credentials(pki, root=pki.other_ca_cert)
        assert await list_over(s.port, distrusting, bearer("acme")) == grpc.StatusCode.UNAVAILABLE


async def test_mtls_listener_accepts_good_clients_and_refuses_bad_ones(
    tmp_path: Path, pki: Pki
) -> None:
    async with serve(
        tmp_path,
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        tls_client_ca_file=pki.client_ca_cert,
    ) as s:
        good = credentials(pki, cert=pki.client_cert, key=pki.client_key)
        assert await list_over(s.port, good) == grpc.StatusCode.OK
        assert await list_over(s.port, good, bearer("acme")) == grpc.StatusCode.OK
        assert (
            await list_over(s.port, credentials(pki), bearer("acme")) == grpc.StatusCode.UNAVAILABLE
        )
        foreign = credentials(pki, cert=pki.other_client_cert, key=pki.other_client_key)
        assert await list_over(s.port, foreign) == grpc.StatusCode.UNAVAILABLE
        stranger = credentials(pki, cert=pki.stranger_cert, key=pki.stranger_key)
        assert await list_over(s.port, stranger) == grpc.StatusCode.UNAUTHENTICATED
        assert await list_over(s.port, None, bearer("acme")) == grpc.StatusCode.UNAVAILABLE
