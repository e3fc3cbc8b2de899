"""TLS and mutual TLS listeners with a PKI generated at test time."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from service.__main__ import main
from service.api.access import ALL_PERMISSIONS, AccessInterceptor, parse_principals
from service.api.tls import TLSConfigError, client_identities, server_credentials
from tests.access.harness import Pki, bearer, call, principals_json, serve, token_for

TOKEN = token_for(ALL_PERMISSIONS)
OPTIONS = (("grpc.ssl_target_name_override", "localhost"),)


def _interceptor(*, mtls: bool) -> AccessInterceptor:
    entries = [
        *principals_json([ALL_PERMISSIONS]),
        {
            "name": "batch",
            "tenant": "acme",
            "permissions": ["destinations.view"],
            "mtls_subject": "batch.acme.internal",
        },
    ]
    return AccessInterceptor(parse_principals(entries), mtls=mtls)


def _client(
    pki: Pki, *, root: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(root or pki.ca_cert).read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )


async def _secure_call(
    target: str, credentials: grpc.ChannelCredentials, metadata: Any = None
) -> grpc.StatusCode:
    async with grpc.aio.secure_channel(target, credentials, options=OPTIONS) as channel:
        code, _ = await call(channel, "GetDestination", metadata)
    return code


async def _plain_call(target: str, metadata: Any = None) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(target) as channel:
        code, _ = await call(channel, "GetDestination", metadata)
    return code


async def test_tls_accepts_a_client_trusting_the_ca_and_refuses_others(pki: Pki) -> None:
    credentials = server_credentials(pki.server_cert, pki.server_key)
    async with serve(_interceptor(mtls=False), credentials) as running:
        assert await _secure_call(running.target, _client(pki), bearer(TOKEN)) == (
            grpc.StatusCode.OK
        )
        assert await _plain_call(running.target, bearer(TOKEN)) == grpc.StatusCode.UNAVAILABLE
        distrusting = _client(pki, root=pki.other_ca_cert)
        assert await _secure_call(running.target, distrusting, bearer(TOKEN)) == (
            grpc.StatusCode.UNAVAILABLE
        )
    assert len(running.recorder.seen) == 1


async def test_tls_without_client_ca_ignores_client_certificates(pki: Pki) -> None:
    credentials = server_credentials(pki.server_cert, pki.server_key)
    async with serve(_interceptor(mtls=True), credentials) as running:
        with_cert = _client(pki, cert=pki.client_cert, key=pki.client_key)
        code = await _secure_call(running.target, with_cert)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert running.recorder.seen == []


async def test_mtls_maps_the_client_certificate_to_its_principal(pki: Pki) -> None:
    credentials = server_credentials(pki.server_cert, pki.server_key, pki.client_ca_cert)
    good = _client(pki, cert=pki.client_cert, key=pki.client_key)
    async with serve(_interceptor(mtls=True), credentials) as running:
        assert await _secure_call(running.target, good) == grpc.StatusCode.OK
        # A bearer token takes precedence over the certificate.
        assert await _secure_call(running.target, good, bearer(TOKEN)) == grpc.StatusCode.OK
        # A wrong token is refused even with a good certificate.
        assert await _secure_call(running.target, good, bearer("wrong")) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
    names = [p.name for _, p in running.recorder.seen]
    assert names == ["batch", "p:" + "+".join(sorted(ALL_PERMISSIONS))]


async def test_mtls_refuses_clients_without_a_good_certificate(pki: Pki) -> None:
    credentials = server_credentials(pki.server_cert, pki.server_key, pki.client_ca_cert)
    async with serve(_interceptor(mtls=True), credentials) as running:
        no_cert = _client(pki)
        assert await _secure_call(running.target, no_cert, bearer(TOKEN)) == (
            grpc.StatusCode.UNAVAILABLE
        )
        other_ca = _client(pki, cert=pki.other_client_cert, key=pki.other_client_key)
        assert await _secure_call(running.target, other_ca, bearer(TOKEN)) == (
            grpc.StatusCode.UNAVAILABLE
        )
        assert await _plain_call(running.target, bearer(TOKEN)) == grpc.StatusCode.UNAVAILABLE
        # Trusted CA but an identity no principal has: connects, then is refused.
        stranger = _client(pki, cert=pki.stranger_cert, key=pki.stranger_key)
        assert await _secure_call(running.target, stranger) == grpc.StatusCode.UNAUTHENTICATED
    assert running.recorder.seen == []


async def test_mtls_identity_is_ignored_unless_enabled(pki: Pki) -> None:
    credentials = server_credentials(pki.server_cert, pki.server_key, pki.client_ca_cert)
    good = _client(pki, cert=pki.client_cert, key=pki.client_key)
    async with serve(_interceptor(mtls=False), credentials) as running:
        assert await _secure_call(running.target, good) == grpc.StatusCode.UNAUTHENTICATED
        assert await _secure_call(running.target, good, bearer(TOKEN)) == grpc.StatusCode.OK


def test_client_identities_reads_cn_and_san() -> None:
    context = {
        "transport_security_type": [b"ssl"],
        "x509_common_name": [b"batch.acme.internal"],
        "x509_subject_alternative_name": [b"batch.acme.internal", b"batch-2.acme.internal"],
        "x509_pem_cert": [b"-----BEGIN CERTIFICATE-----"],
    }
    assert client_identities(context) == {"batch.acme.internal", "batch-2.acme.internal"}
    assert client_identities({}) == frozenset()
    forged = {"transport_security_type": [b"insecure"], "x509_common_name": [b"batch"]}
    assert client_identities(forged) == frozenset()


def test_server_credentials_fail_early_and_clearly(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(TLSConfigError, match=r"missing\.pem"):
        server_credentials(missing, pki.server_key)
    with pytest.raises(TLSConfigError, match="does not match"):
        server_credentials(pki.server_cert, pki.client_key)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a pem file")
    with pytest.raises(TLSConfigError, match="no PEM certificate"):
        server_credentials(garbage, pki.server_key)
    with pytest.raises(TLSConfigError, match="not an unencrypted PEM private key") as error:
        server_credentials(pki.server_cert, garbage)
    assert "not a pem file" not in str(error.value)
    with pytest.raises(TLSConfigError, match="client CA file"):
        server_credentials(pki.server_cert, pki.server_key, garbage)
    with pytest.raises(TLSConfigError, match="client CA file"):
        server_credentials(pki.server_cert, pki.server_key, missing)


def _health(pki: Pki, monkeypatch: pytest.MonkeyPatch, target: str, *flags: str) -> int:
    """`marketo-destination health` as the container runs it, with the listener's TLS
    settings in the environment."""
    monkeypatch.setenv("MARKETO_DEST_TLS_CERT_FILE", str(pki.server_cert))
    monkeypatch.setenv("MARKETO_DEST_TLS_KEY_FILE", str(pki.server_key))
    return main(["health", "--address", target, "--timeout", "5", *flags])


async def test_the_health_command_speaks_tls_to_a_tls_listener(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = server_credentials(pki.server_cert, pki.server_key)
    async with serve(_interceptor(mtls=False), credentials) as running:
        wildcard = f"0.0.0.0:{running.port}"
        assert await asyncio.to_thread(_health, pki, monkeypatch, wildcard) == 0


async def test_the_health_command_presents_a_client_certificate_to_mutual_tls(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = server_credentials(pki.server_cert, pki.server_key, pki.client_ca_cert)
    async with serve(_interceptor(mtls=True), credentials) as running:
        flags = ("--client-cert", str(pki.client_cert), "--client-key", str(pki.client_key))
        assert await asyncio.to_thread(_health, pki, monkeypatch, running.target, *flags) == 0
        assert await asyncio.to_thread(_health, pki, monkeypatch, running.target) == 1
