"""How the client reaches the service: address, bearer token, TLS or mutual TLS, and the metadata
sent with every call (the token and the caller's OpenTelemetry trace context)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from opentelemetry import propagate

__all__ = ["DEFAULT_ADDRESS", "TLS", "Connection", "call_metadata", "target_of"]

DEFAULT_ADDRESS = "127.0.0.1:50051"


@dataclass(frozen=True)
class TLS:
    """TLS to the service; with ``client_cert`` and ``client_key``, mutual TLS.

    ``ca_file``: the certificate(s) to trust (empty: the system's roots). ``server_name``: the
    name to check the server's certificate against when it differs from the address's host.
    """

    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("TLS: give both client_cert and client_key for mutual TLS, or neither")

    def credentials(self) -> grpc.ChannelCredentials:
        """The channel credentials these files make; a missing file is named in the error."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "ca_file"),
            private_key=_read(self.client_key, "client_key"),
            certificate_chain=_read(self.client_cert, "client_cert"),
        )


def _read(path: Path | None, name: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as error:
        raise ValueError(f"TLS: {name} {str(path)!r} cannot be read: {error.strerror}") from None


def target_of(address: str) -> str:
    """``address`` as a channel target: a listen-all host (0.0.0.0, [::], empty) means loopback,
    so a service's own MARKETO_DEST_ADDRESS can be used as is."""
    host, separator, port = address.rpartition(":")
    if not separator or not port.isdigit():
        raise ValueError(f"address: {address!r} is not HOST:PORT")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "[::]":
        host = "[::1]"
    return f"{host}:{port}"


@dataclass(frozen=True)
class Connection:
    """Where the service is and how to authenticate: a bearer token (``authorization`` metadata),
    a TLS client certificate, or both."""

    address: str = DEFAULT_ADDRESS
    token: str | None = None
    tls: TLS | None = None
    # Extra channel options, e.g. (("grpc.max_receive_message_length", 8 << 20),).
    options: Sequence[tuple[str, int | str]] = ()

    def __post_init__(self) -> None:
        target_of(self.address)  # fails early, naming the field
        if self.token is not None and not self.token.strip():
            raise ValueError("token: empty; leave it out to call without one")

    def open_channel(self) -> grpc.aio.Channel:
        """A new grpc.aio channel to the service (open it in the event loop that uses it)."""
        options = list(self.options)
        target = target_of(self.address)
        if self.tls is None:
            return grpc.aio.insecure_channel(target, options=options)
        if self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return grpc.aio.secure_channel(target, self.tls.credentials(), options=options)


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata of one call: ``authorization: Bearer <token>`` and the current OpenTelemetry
    context as the global propagator writes it (W3C ``traceparent``, ``tracestate``, baggage)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    metadata = [(key.lower(), value) for key, value in sorted(carrier.items())]
    if token is not None:
        metadata.append(("authorization", f"Bearer {token}"))
    return tuple(metadata)
