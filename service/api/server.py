"""The composition root: builds the gRPC server from settings and injected dependencies.

Everything the server needs is created here or passed in as a keyword argument, so tests (and
later the store, the Marketo client factory and the plugin registry) plug in without globals.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service._proto.marketo_destination.v1 import destination_pb2, destination_pb2_grpc
from service.api.access import (
    PUBLIC_SERVICES,
    AccessInterceptor,
    InsecureBindError,
    Principals,
    check_bind_address,
)
from service.api.interceptors import ErrorInterceptor
from service.api.servicer import MarketoDestinationServicer
from service.api.tls import TLSConfigError, server_credentials
from service.settings import Settings
from service.telemetry.core import Telemetry
from service.telemetry.rpc import server_interceptor

if TYPE_CHECKING:
    from service.app import Application

__all__ = [
    "SERVICE_NAME",
    "HealthServicer",
    "ServerLimits",
    "StartupError",
    "build_server",
    "new_health_servicer",
    "shutdown",
]

_log = logging.getLogger(__name__)

SERVICE_NAME: str = destination_pb2.DESCRIPTOR.services_by_name[
    "MarketoDestinationService"
].full_name
"""Fully qualified name of the v1 service: ``marketo_destination.v1.MarketoDestinationService``."""


class _Handlers:
    """Collects the handlers the generated registration function would add to a server."""

    def __init__(self) -> None:
        self.service = ""
        self.methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def add_generic_rpc_handlers(
        self, handlers: Sequence[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        pass  # the same methods come again through add_registered_method_handlers

    def add_registered_method_handlers(
        self, service: str, methods: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.service, self.methods = service, dict(methods)


def _add_servicer(servicer: MarketoDestinationServicer, server: grpc.aio.Server) -> None:
    """Register the v1 service as generated, except that Sync takes its requests encoded:
    `sync_checks.sync_request` parses each (the generated deserializer would fail the whole
    stream for one update that does not decode, where only that update is rejected) and stores
    the request's bytes as sent when every update is kept."""
    handlers = _Handlers()
    destination_pb2_grpc.add_MarketoDestinationServiceServicer_to_server(servicer, handlers)
    assert handlers.service == SERVICE_NAME and "Sync" in handlers.methods
    handlers.methods["Sync"] = grpc.stream_stream_rpc_method_handler(
        servicer.Sync,
        request_deserializer=None,  # the bytes as they came
        response_serializer=destination_pb2.SyncResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers.methods),)
    )
    # Registered methods skip the generic lookup per call (what the generated function does too).
    server.add_registered_method_handlers(SERVICE_NAME, handlers.methods)  # type: ignore[attr-defined]


_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What one client connection may take of the server (docs/reliability.md lists what a
    client gets past each limit). Times in seconds."""

    max_concurrent_streams: int = 100
    """Calls in progress on one connection; a further call waits (HTTP/2 flow) until one ends.
    Sync pipelines within one stream, so a client needs few streams per connection."""
    max_receive_message_bytes: int = 4 * _MIB
    """The largest request message: RESOURCE_EXHAUSTED past it. Room for ten updates at every
    limit at once (`sync_checks.MAX_PROFILE_BYTES` profile, longest ids,
    `sync_checks.MAX_MEMBERSHIPS` memberships); a client splits larger batches over several
    requests."""
    max_send_message_bytes: int = 16 * _MIB
    """The largest answer: a call whose answer would be larger fails with RESOURCE_EXHAUSTED
    instead of holding it in memory."""
    min_ping_interval_seconds: float = 30.0
    """The shortest interval between a client's keepalive pings while nothing is sent; pings
    more often, or any ping while the connection has no call, are strikes."""
    max_ping_strikes: int = 2
    """Strikes tolerated before the connection is closed (GOAWAY ``too_many_pings``)."""
    max_connection_idle_seconds: float = 600.0
    """A connection without a call for this long is closed (GOAWAY); the client's channel
    reconnects on its next call."""
    max_connection_age_seconds: float = 3_600.0
    """A connection is asked to close after this long (GOAWAY, with 10 % jitter), so that
    clients spread over replicas again; calls in progress go on for the grace period."""
    max_connection_age_grace_seconds: float = 300.0
    """How long calls in progress may still run on a connection past its age; then they end
    with UNAVAILABLE and the client retries on a new connection."""

    def options(self) -> list[tuple[str, int]]:
        """The limits as grpc core channel arguments."""

        def ms(seconds: float) -> int:
            return max(1, round(seconds * 1000))

        return [
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            ("grpc.max_receive_message_length", self.max_receive_message_bytes),
            ("grpc.max_send_message_length", self.max_send_message_bytes),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.min_ping_interval_without_data_ms", ms(self.min_ping_interval_seconds)),
            ("grpc.http2.max_ping_strikes", self.max_ping_strikes),
            ("grpc.max_connection_idle_ms", ms(self.max_connection_idle_seconds)),
            ("grpc.max_connection_age_ms", ms(self.max_connection_age_seconds)),
            ("grpc.max_connection_age_grace_ms", ms(self.max_connection_age_grace_seconds)),
        ]


class StartupError(RuntimeError):
    """The service cannot start: the address is taken, the embedded sandbox failed ..."""


class HealthServicer(Protocol):
    """What the server uses of grpcio-health-checking's asyncio ``HealthServicer``."""

    async def set(self, service: str, status: Any) -> None: ...

    async def enter_graceful_shutdown(self) -> None: ...


def new_health_servicer() -> HealthServicer:
    """A fresh ``grpc.health.v1`` servicer for asyncio servers."""
    servicer: HealthServicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    return servicer


async def build_server(
    settings: Settings,
    *,
    servicer: MarketoDestinationServicer,
    principals: Principals | None = None,
    health_servicer: HealthServicer | None = None,
    tracing_interceptor: grpc.aio.ServerInterceptor[Any, Any] | None = None,
    extra_handlers: Sequence[grpc.GenericRpcHandler[Any, Any]] = (),
    open_services: Collection[str] = (),
    limits: ServerLimits = ServerLimits(),
) -> tuple[grpc.aio.Server, int]:
    """Builds the server and binds ``settings.address``; returns it (not started) and its port.

    - ``servicer``: the v1 servicer (over an :class:`service.app.Application`).
    - ``principals``: the callers allowed in; ``None`` serves everyone as the local principal,
      which is only allowed on a loopback address.
    - ``health_servicer``: pass one to flip it at shutdown (see :func:`shutdown`); the server
      reports SERVING for ``""`` and for :data:`SERVICE_NAME`.
    - ``tracing_interceptor``: the OpenTelemetry server interceptor (issue 9). It runs outermost,
      before the error interceptor, so a failed call is traced with its real status.
    - ``extra_handlers``: further generic handlers, served behind the same interceptors; the
      access interceptor refuses them unless their service is named in ``open_services``.
    - ``limits``: what one client connection may take (:class:`ServerLimits`).

    Raises :class:`StartupError` when the address cannot be bound.
    """
    interceptors: list[grpc.aio.ServerInterceptor[Any, Any]] = []
    if tracing_interceptor is not None:
        interceptors.append(tracing_interceptor)
    interceptors.append(ErrorInterceptor())
    mtls = settings.tls_client_ca_file is not None
    try:
        check_bind_address(settings.address, auth_enabled=bool(principals))
    except InsecureBindError as error:
        raise StartupError(str(error)) from None
    interceptors.append(
        AccessInterceptor(
            principals, mtls=mtls, public_services=PUBLIC_SERVICES | frozenset(open_services)
        )
    )
    # Without SO_REUSEPORT a second instance on the same port fails instead of sharing it.
    server = grpc.aio.server(
        interceptors=interceptors, options=[("grpc.so_reuseport", 0), *limits.options()]
    )

    _add_servicer(servicer, server)
    if health_servicer is None:
        health_servicer = new_health_servicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if extra_handlers:
        server.add_generic_rpc_handlers(tuple(extra_handlers))
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )

    try:
        if settings.tls_cert_file is not None and settings.tls_key_file is not None:
            credentials = server_credentials(
                settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
            )
            port = server.add_secure_port(settings.address, credentials)
        else:
            port = server.add_insecure_port(settings.address)
    except (RuntimeError, TLSConfigError) as error:
        raise StartupError(f"cannot listen on {settings.address}: {error}") from error
    return server, port


async def application_server(
    app: Application,
    settings: Settings,
    *,
    telemetry: Telemetry | None = None,
    health_servicer: HealthServicer | None = None,
    extra_handlers: Sequence[grpc.GenericRpcHandler[Any, Any]] = (),
    open_services: Collection[str] = (),
) -> tuple[grpc.aio.Server, int]:
    """The server over an application from :func:`service.app.open_application`: its servicer,
    its principals and, with ``telemetry``, the tracing interceptor. `serve`, the demo and the
    test harness all start the service this way; returns the server (not started) and its port.
    """
    return await build_server(
        settings,
        servicer=MarketoDestinationServicer(app),
        principals=app.principals,
        health_servicer=health_servicer,
        tracing_interceptor=None if telemetry is None else server_interceptor(telemetry),
        extra_handlers=extra_handlers,
        open_services=open_services,
    )


async def shutdown(
    server: grpc.aio.Server, health_servicer: HealthServicer, grace_seconds: float
) -> None:
    """Stops gracefully: every service turns NOT_SERVING, new calls are refused, in-flight calls
    get ``grace_seconds`` to finish and are then cancelled."""
    _log.info("shutting down; in-flight calls have %.1f s to finish", grace_seconds)
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace_seconds)
    _log.info("stopped")
