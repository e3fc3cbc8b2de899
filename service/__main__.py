"""Command line: ``marketo-destination serve`` runs the service, ``marketo-destination health``
probes one, ``demo`` runs the whole path in one process; the operator commands
(``destinations``, ``dataflow``, ``outcomes``, ``alerts``, ``reconcile``, ``resync``, ``forget``)
ask a running one (:mod:`marketo_destination_client.cli`).

Settings come from the environment (:meth:`service.settings.Settings.from_env`, called here and
nowhere else); the ``serve`` flags override it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import uvicorn
from grpc_health.v1 import health_pb2, health_pb2_grpc

from marketo_destination_client import cli as operator_cli
from service.api import sync_checks
from service.api.demo import demo_settings, run_demo
from service.api.server import StartupError, application_server, new_health_servicer, shutdown
from service.api.tls import TLSConfigError, own_listener_credentials
from service.app import open_application
from service.settings import InvalidSetting, Settings, env_var, parse_address
from service.telemetry.logs import configure_logging
from service.telemetry.setup import setup_telemetry

__all__ = ["build_parser", "check_health", "embedded_sandbox", "main", "serve", "settings_for"]

_log = logging.getLogger("service")

PROG = "marketo-destination"


def _address(value: str) -> str:
    try:
        return parse_address(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_address(command: argparse.ArgumentParser, help: str) -> None:
    command.add_argument("--address", type=_address, metavar="HOST:PORT", help=help)


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (its ``serve`` flags are contract)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Keeps Adobe Marketo Engage in sync with a customer-data platform (gRPC).",
        epilog="Settings are read from MARKETO_DEST_* environment variables; flags override them.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    defaults = Settings()

    serve_cmd = commands.add_parser("serve", help="run the gRPC service until SIGTERM/SIGINT")
    _add_address(serve_cmd, f"listen address (default {defaults.address})")
    serve_cmd.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help=f"data directory (default {os.path.join('.', defaults.data_dir)})",
    )
    serve_cmd.add_argument(
        "--sandbox",
        action="store_true",
        default=None,
        help="start the embedded Marketo sandbox; destinations without an endpoint use it",
    )

    demo_cmd = commands.add_parser(
        "demo", help="stream synthetic profiles through the service into the embedded sandbox"
    )
    demo_cmd.add_argument(
        "--profiles", type=int, default=10_000, help="profiles to stream (default 10000)"
    )
    demo_cmd.add_argument(
        "--data-dir", type=Path, metavar="DIR", help="data directory (default: a temporary one)"
    )

    health_cmd = commands.add_parser(
        "health", help="exit 0 when the service at ADDRESS reports SERVING (container healthcheck)"
    )
    _add_address(
        health_cmd,
        "address to probe (default MARKETO_DEST_ADDRESS; 0.0.0.0 and [::] mean loopback)",
    )
    health_cmd.add_argument(
        "--service", default="", help="service name to check (default: overall)"
    )
    health_cmd.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    health_cmd.add_argument(
        "--client-cert",
        type=Path,
        metavar="PEM",
        help="client certificate, when the listener requires one (mutual TLS)",
    )
    health_cmd.add_argument(
        "--client-key", type=Path, metavar="PEM", help="private key of --client-cert"
    )
    # destinations list|get, dataflow, outcomes, alerts, reconcile, resync, forget: calls to a
    # running service.
    operator_cli.add_commands(commands)
    return parser


def settings_for(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """The settings of ``environ`` with the command-line flags in ``args`` applied over them."""
    settings = Settings.from_env(environ)
    overrides: dict[str, Any] = {}
    if getattr(args, "address", None) is not None:
        overrides["address"] = args.address
    if getattr(args, "data_dir", None) is not None:
        overrides["data_dir"] = args.data_dir
    if getattr(args, "sandbox", None):
        overrides["sandbox"] = True
    return settings.replace(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``marketo-destination`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "operator_command", None) is not None:
        return operator_cli.run(args, prog=PROG)
    try:
        settings = settings_for(args, os.environ)
    except InvalidSetting as error:
        parser.exit(2, f"{PROG}: error: {error}\n")
    if args.command == "demo":
        configure_logging(logging.WARNING, json=False, stream=sys.stderr)
        demo, holder = demo_settings(settings, args.data_dir)
        try:
            asyncio.run(run_demo(demo, profiles=args.profiles))
        finally:
            if holder is not None:
                holder.cleanup()
        return 0
    if args.command == "health":
        if (args.client_cert is None) != (args.client_key is None):
            parser.exit(2, f"{PROG}: error: give both --client-cert and --client-key\n")
        return check_health(
            args.address or settings.address,
            args.service,
            args.timeout,
            tls_cert_file=settings.tls_cert_file,
            client_cert_file=args.client_cert,
            client_key_file=args.client_key,
        )
    configure_logging(settings.log_level_number, json=settings.log_json, stream=sys.stderr)
    try:
        asyncio.run(serve(settings))
    except StartupError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    return 0


async def serve(
    settings: Settings, *, extra_handlers: Sequence[Any] = (), open_services: Sequence[str] = ()
) -> None:
    """Runs the service until SIGTERM or SIGINT, then shuts down gracefully.

    ``extra_handlers`` are passed to :func:`service.api.server.build_server` (tests use it).
    """
    async with contextlib.AsyncExitStack() as stack:
        if settings.sandbox:
            url = await stack.enter_async_context(embedded_sandbox())
            _log.info("embedded Marketo sandbox at %s", url)
            settings = settings.replace(default_marketo_endpoint=url)
        try:
            telemetry = setup_telemetry(
                os.environ, set_global=True, metrics_address=settings.metrics_address
            )
        except OSError as error:
            raise StartupError(
                f"cannot serve metrics at {settings.metrics_address} "
                f"({env_var('metrics_address')}): {error.strerror or error}"
            ) from None
        stack.callback(telemetry.shutdown)
        app = await stack.enter_async_context(open_application(settings, telemetry=telemetry))

        health_servicer = new_health_servicer()
        server, port = await application_server(
            app,
            settings,
            telemetry=telemetry,
            health_servicer=health_servicer,
            extra_handlers=extra_handlers,
            open_services=open_services,
        )
        await server.start()
        host = settings.address.rpartition(":")[0]
        _log.info("listening on %s:%d", host, port)
        if not sync_checks.NATIVE_CHECKS:
            _log.warning(
                "service.api._wirecheck is not built (no C compiler at install): Sync checks each "
                "update in Python, several times slower; reinstall with a C compiler present"
            )

        stop = asyncio.Event()
        with _signals_set(stop, (signal.SIGTERM, signal.SIGINT)):
            await stop.wait()
            _log.info("signal received")
            await shutdown(server, health_servicer, settings.grace_seconds)


@contextlib.contextmanager
def _signals_set(event: asyncio.Event, signals: Sequence[signal.Signals]) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    for sig in signals:
        loop.add_signal_handler(sig, event.set)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


class _EmbeddedUvicorn(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.startup_done = asyncio.Event()

    # The service owns SIGTERM/SIGINT; uvicorn must not capture them.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self.startup_done.set()


@contextlib.asynccontextmanager
async def embedded_sandbox(start_timeout: float = 10.0) -> AsyncIterator[str]:
    """Runs the Marketo sandbox on a free loopback port in this event loop; yields its base URL.

    Raises :class:`~service.api.server.StartupError` when it does not start.
    """
    from sandbox import SandboxSettings, create_app

    app = create_app(SandboxSettings())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _EmbeddedUvicorn(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    started = asyncio.create_task(server.startup_done.wait())
    try:
        await asyncio.wait({task, started}, timeout=start_timeout, return_when="FIRST_COMPLETED")
        if not server.started:
            raise StartupError("the embedded Marketo sandbox did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        started.cancel()
        server.should_exit = True
        if not server.started:
            task.cancel()
        await asyncio.wait([task])
        sock.close()
        if not task.cancelled() and (error := task.exception()) is not None:
            _log.error("the embedded Marketo sandbox failed", exc_info=error)


def check_health(
    address: str,
    service: str = "",
    timeout: float = 3.0,
    *,
    tls_cert_file: Path | None = None,
    client_cert_file: Path | None = None,
    client_key_file: Path | None = None,
) -> int:
    """Asks ``grpc.health.v1.Health/Check`` at ``address``; 0 when SERVING, else 1.

    With ``tls_cert_file`` (the listener's certificate) the probe speaks TLS and trusts that
    certificate; ``client_cert_file`` and ``client_key_file`` answer a mutual TLS listener.
    """
    host, _, port = address.rpartition(":")
    if host in ("0.0.0.0", "[::]", ""):
        host = "127.0.0.1"
    target = f"{host}:{port}"
    if tls_cert_file is None:
        channel = grpc.insecure_channel(target)
    else:
        try:
            credentials, name = own_listener_credentials(
                tls_cert_file, client_cert_file, client_key_file
            )
        except TLSConfigError as error:
            print(f"{PROG}: health: {error}", file=sys.stderr)
            return 1
        options = [("grpc.ssl_target_name_override", name)]
        channel = grpc.secure_channel(target, credentials, options=options)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            print(f"{PROG}: health: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(status)
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
