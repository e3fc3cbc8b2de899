"""TLS and mutual TLS for the gRPC listener.

:func:`server_credentials` builds the listener's credentials from PEM files: the server's
certificate chain and private key, and optionally the CA that signs client certificates, which
turns on mutual TLS (a client without a certificate signed by that CA cannot connect).

With mutual TLS a client's identity is its certificate's subject common name and subject
alternative names, as :func:`client_identities` reads them from the call's auth context; the
principals file maps one of them to a principal (``mtls_subject``, see :mod:`service.api.access`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = ["TLSConfigError", "client_identities", "own_listener_credentials", "server_credentials"]

_IDENTITY_KEYS = ("x509_common_name", "x509_subject_alternative_name")


class TLSConfigError(ValueError):
    """A TLS file is missing, unreadable or inconsistent; the message names the file."""


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise TLSConfigError(f"{what} {os.fspath(path)!r}: cannot read: {error.strerror}") from None


def _certificates(pem: bytes, what: str, path: str | os.PathLike[str]) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise TLSConfigError(
            f"{what} {os.fspath(path)!r}: no PEM certificate could be read"
        ) from None
    return certificates


def server_credentials(
    cert_file: str | os.PathLike[str],
    key_file: str | os.PathLike[str],
    client_ca_file: str | os.PathLike[str] | None = None,
) -> grpc.ServerCredentials:
    """Credentials for ``server.add_secure_port``.

    ``cert_file``: PEM certificate chain, leaf first. ``key_file``: its unencrypted PEM private
    key. ``client_ca_file``: PEM CA certificate(s) for client certificates; when given, clients
    must present a certificate signed by one of them (mutual TLS).

    Raises :class:`TLSConfigError` when a file cannot be read or parsed, or the key does not
    belong to the certificate, so a misconfiguration fails at start-up rather than at the first
    handshake. Key material never appears in a message.
    """
    chain = _read(cert_file, "certificate file")
    key = _read(key_file, "private key file")
    leaf = _certificates(chain, "certificate file", cert_file)[0]
    try:
        private_key = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        raise TLSConfigError(
            f"private key file {os.fspath(key_file)!r}: not an unencrypted PEM private key"
        ) from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if private_key.public_key().public_bytes(encoding, public) != leaf.public_key().public_bytes(
        encoding, public
    ):
        raise TLSConfigError(
            f"private key file {os.fspath(key_file)!r} does not match the certificate in "
            f"{os.fspath(cert_file)!r}"
        )
    client_ca: bytes | None = None
    if client_ca_file is not None:
        client_ca = _read(client_ca_file, "client CA file")
        _certificates(client_ca, "client CA file", client_ca_file)
    return grpc.ssl_server_credentials(
        [(key, chain)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def own_listener_credentials(
    cert_file: str | os.PathLike[str],
    client_cert_file: str | os.PathLike[str] | None = None,
    client_key_file: str | os.PathLike[str] | None = None,
) -> tuple[grpc.ChannelCredentials, str]:
    """Credentials to call this service's own TLS listener (its health check) over loopback, and
    the server name to expect.

    The listener's certificate (``cert_file``, as served) is the trusted root, so no other CA is
    needed; the name is its first DNS or IP subject alternative name, else its common name,
    because the probe dials 127.0.0.1 whatever names the certificate holds. With mutual TLS,
    ``client_cert_file`` and ``client_key_file`` are the probe's own client certificate.
    """
    chain = _read(cert_file, "certificate file")
    leaf = _certificates(chain, "certificate file", cert_file)[0]
    names: list[str] = []
    try:
        alternative = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        pass
    else:
        names += alternative.get_values_for_type(x509.DNSName)
        names += [str(ip) for ip in alternative.get_values_for_type(x509.IPAddress)]
    for attribute in leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME):
        names.append(str(attribute.value))
    if not names:
        raise TLSConfigError(
            f"certificate file {os.fspath(cert_file)!r}: the certificate names no host"
        )
    client_chain = client_key = None
    if client_cert_file is not None and client_key_file is not None:
        client_chain = _read(client_cert_file, "client certificate file")
        client_key = _read(client_key_file, "client private key file")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=chain, private_key=client_key, certificate_chain=client_chain
    )
    return credentials, names[0]


def client_identities(auth_context: Mapping[str, Iterable[bytes]]) -> frozenset[str]:
    """The verified client certificate's subject CN and SANs; empty without one.

    ``auth_context`` is ``context.auth_context()`` of a call. gRPC fills these properties only
    from a certificate that passed verification against the client CA.
    """
    if b"ssl" not in auth_context.get("transport_security_type", ()):
        return frozenset()
    identities: set[str] = set()
    for key in _IDENTITY_KEYS:
        for value in auth_context.get(key, ()):
            text = value.decode("utf-8", errors="replace").strip()
            if text:
                identities.add(text)
    return frozenset(identities)
