"""Test harness for access control: a real grpc.aio server on port 0 behind the
:class:`~service.api.access.AccessInterceptor`, a recording servicer, and a throw-away PKI generated
at test time (no private key is committed)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2_grpc

from service._proto.marketo_destination.v1 import destination_pb2, destination_pb2_grpc
from service.api.access import AccessInterceptor, Principal, current_principal

SERVICE = destination_pb2.DESCRIPTOR.services_by_name["MarketoDestinationService"]
METHODS = {m.name: m for m in SERVICE.methods}


def method_path(name: str) -> str:
    return f"/{SERVICE.full_name}/{name}"


# ---------------------------------------------------------------------------------------------
# The servicer: every RPC answers with a fixed response and records the principal it sees.


@dataclass
class Recorder:
    seen: list[tuple[str, Principal]] = field(default_factory=list)

    def record(self, rpc: str) -> None:
        self.seen.append((rpc, current_principal()))


def _response_class(method: Any) -> Any:
    return getattr(destination_pb2, method.output_type.name)


def make_servicer(recorder: Recorder) -> destination_pb2_grpc.MarketoDestinationServiceServicer:
    class Servicer(destination_pb2_grpc.MarketoDestinationServiceServicer):  # type: ignore[misc]
        async def GetDestination(self, request: Any, context: Any) -> Any:
            await asyncio.sleep(0)
            recorder.record("GetDestination")
            return destination_pb2.GetDestinationResponse()

        async def Configure(self, request: Any, context: Any) -> Any:
            recorder.record("Configure")
            return destination_pb2.ConfigureResponse()

        async def Sync(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
            recorder.record("Sync")
            async for request in request_iterator:
                # After awaiting the next request the principal must still be there.
                recorder.record("Sync")
                yield destination_pb2.SyncResponse(
                    request_id=request.request_id, accepted=len(request.updates)
                )

    for name, method in METHODS.items():
        if name in Servicer.__dict__:
            continue
        response = _response_class(method)
        if method.server_streaming:

            def streaming(name: str = name, response: Any = response) -> Any:
                async def handler(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
                    recorder.record(name)
                    yield response()

                return handler

            setattr(Servicer, name, streaming())
        else:

            def unary(name: str = name, response: Any = response) -> Any:
                async def handler(self: Any, request: Any, context: Any) -> Any:
                    recorder.record(name)
                    return response()

                return handler

            setattr(Servicer, name, unary())
    return Servicer()


# ---------------------------------------------------------------------------------------------
# Principals: one per permission set, its token derived from its name.


def principal_name(permissions: Iterable[str]) -> str:
    return "p:" + "+".join(sorted(permissions))


def token_for(permissions: Iterable[str], tenant: str = "acme") -> str:
    return f"secret-token-{tenant}-{principal_name(permissions)}"


def principals_json(
    permission_sets: Iterable[Iterable[str]], tenant: str = "acme"
) -> list[dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    for permissions in permission_sets:
        name = principal_name(permissions)
        entries[name] = {
            "name": name,
            "tenant": tenant,
            "permissions": sorted(permissions),
            "token": token_for(permissions, tenant),
        }
    return list(entries.values())


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


# ---------------------------------------------------------------------------------------------
# Server and calls


@dataclass
class Running:
    port: int
    recorder: Recorder

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@asynccontextmanager
async def serve(
    interceptor: AccessInterceptor,
    credentials: grpc.ServerCredentials | None = None,
    servicer_factory: Callable[[Recorder], Any] = make_servicer,
) -> AsyncIterator[Running]:
    recorder = Recorder()
    server = grpc.aio.server(interceptors=[interceptor])
    destination_pb2_grpc.add_MarketoDestinationServiceServicer_to_server(
        servicer_factory(recorder), server
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)  # type: ignore[attr-defined]
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield Running(port, recorder)
    finally:
        await server.stop(None)


async def call(
    channel: grpc.aio.Channel, name: str, metadata: Any = None, *, refused: bool = False
) -> tuple[grpc.StatusCode, str]:
    """Call RPC ``name`` with an empty request; return its status code and details.

    ``refused``: the call is expected to be refused, so a bidi call half-closes without sending
    requests: grpc.aio's client reports INTERNAL instead of the server's status when a write
    races the server's early status (grpc/grpc#36066).
    """
    method = METHODS[name]
    request_class = getattr(destination_pb2, method.input_type.name)
    response_class = _response_class(method)
    path = method_path(name)
    serialize, deserialize = request_class.SerializeToString, response_class.FromString
    try:
        if method.client_streaming and method.server_streaming:
            stream = channel.stream_stream(path, serialize, deserialize)
            requests = [] if refused else [request_class(request_id=r) for r in ("r1", "r2")]
            responses = [r async for r in stream(iter(requests), metadata=metadata, timeout=30)]
            assert [r.request_id for r in responses] == [r.request_id for r in requests]
        elif method.server_streaming:
            stream_out = channel.unary_stream(path, serialize, deserialize)
            responses = [
                r async for r in stream_out(request_class(), metadata=metadata, timeout=30)
            ]
            assert len(responses) == 1
        else:
            unary = channel.unary_unary(path, serialize, deserialize)
            await unary(request_class(), metadata=metadata, timeout=30)
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


# ---------------------------------------------------------------------------------------------
# PKI generated at test time


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_ca_cert: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path
    other_client_cert: Path
    other_client_key: Path
    stranger_cert: Path
    stranger_key: Path

    @staticmethod
    def read(path: Path) -> bytes:
        return path.read_bytes()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    san: list[x509.GeneralName] | None = None,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name = _name(subject) if issuer is None else issuer[0].subject
    signing_key = key if issuer is None else issuer[1]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else (ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def make_pki(directory: Path) -> Pki:
    def write(name: str, data: bytes) -> Path:
        path = directory / name
        path.write_bytes(data)
        return path

    ca_key, client_ca_key, other_ca_key = _key(), _key(), _key()
    ca = _certificate("Test Server CA", ca_key, None, ca=True)
    client_ca = _certificate("Test Client CA", client_ca_key, None, ca=True)
    other_ca = _certificate("Other CA", other_ca_key, None, ca=True)

    server_key = _key()
    server = _certificate(
        "localhost",
        server_key,
        (ca, ca_key),
        server=True,
        san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_key = _key()
    client = _certificate(
        "batch.acme.internal",
        client_key,
        (client_ca, client_ca_key),
        san=[x509.DNSName("batch.acme.internal")],
    )
    other_key = _key()
    # Same subject as the good client, signed by a CA the server does not trust.
    other = _certificate(
        "batch.acme.internal",
        other_key,
        (other_ca, other_ca_key),
        san=[x509.DNSName("batch.acme.internal")],
    )
    stranger_key = _key()
    # Signed by the trusted client CA, but its subject is not in any principals file.
    stranger = _certificate(
        "stranger.example",
        stranger_key,
        (client_ca, client_ca_key),
        san=[x509.DNSName("stranger.example")],
    )
    return Pki(
        ca_cert=write("ca.pem", _pem_cert(ca)),
        server_cert=write("server.pem", _pem_cert(server)),
        server_key=write("server.key", _pem_key(server_key)),
        client_ca_cert=write("client-ca.pem", _pem_cert(client_ca)),
        client_cert=write("client.pem", _pem_cert(client)),
        client_key=write("client.key", _pem_key(client_key)),
        other_ca_cert=write("other-ca.pem", _pem_cert(other_ca)),
        other_client_cert=write("other-client.pem", _pem_cert(other)),
        other_client_key=write("other-client.key", _pem_key(other_key)),
        stranger_cert=write("stranger.pem", _pem_cert(stranger)),
        stranger_key=write("stranger.key", _pem_key(stranger_key)),
    )


__all__ = [
    "METHODS",
    "SERVICE",
    "Pki",
    "Recorder",
    "Running",
    "bearer",
    "call",
    "make_servicer",
    "method_path",
    "principal_name",
    "principals_json",
    "serve",
    "token_for",
]
