"""Command line: `python -m sandbox --host H --port P [--client-id ID ...]` runs uvicorn.

With `--instances N` (N > 1) one process hosts N independent instances, each on a port of its
own (the first at `--port`, the others picked by the system; `--port 0` picks them all), with
Munchkin ids `DDD-LLL-<i>` (the last part of `--munchkin-id` replaced by 000, 001, ...): a fleet
of instances without a process each."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys

import uvicorn
from starlette.types import ASGIApp

from sandbox.app import create_app, port_router
from sandbox.settings import SandboxSettings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = SandboxSettings()
    parser = argparse.ArgumentParser(
        prog="marketo-sandbox", description="Run the Marketo Engage REST sandbox."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to bind; 0 picks one (8080)")
    parser.add_argument("--client-id", default=defaults.client_id, help="accepted client id")
    parser.add_argument(
        "--client-secret", default=defaults.client_secret, help="accepted client secret"
    )
    parser.add_argument("--munchkin-id", default=defaults.munchkin_id, help="account id")
    parser.add_argument(
        "--instances", type=int, default=1, help="instances hosted, one port each (1)"
    )
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    if args.instances < 1:
        raise SystemExit("--instances must be 1 or more")
    apps: dict[int, ASGIApp] = {}
    # "123-ABC-456" hosting several: 123-ABC-000, 123-ABC-001, ...
    prefix = (
        args.munchkin_id.rsplit("-", 1)[0] if args.munchkin_id.count("-") == 2 else args.munchkin_id
    )
    sockets = []
    for index in range(args.instances):
        munchkin_id = args.munchkin_id if args.instances == 1 else f"{prefix}-{index:03d}"
        settings = SandboxSettings(
            client_id=args.client_id, client_secret=args.client_secret, munchkin_id=munchkin_id
        )
        # Bind first so the printed URLs carry the real port even when --port 0 picks one.
        sock = socket.create_server((args.host, args.port if index == 0 else 0))
        port = sock.getsockname()[1]
        base = f"http://{args.host}:{port}"
        print(f"Marketo sandbox {settings.munchkin_id}", flush=True)
        print(f"REST endpoint: {base}/rest", flush=True)
        print(f"Identity URL: {base}/identity", flush=True)
        apps[port] = create_app(settings)
        sockets.append(sock)
    app = next(iter(apps.values())) if len(apps) == 1 else port_router(apps)
    # No access log: look-up paths carry e-mails in their query strings.
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    await uvicorn.Server(config).serve(sockets=sockets)


def main() -> None:
    """Entry point of `python -m sandbox` and the `marketo-sandbox` script."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(parse_args(sys.argv[1:])))


if __name__ == "__main__":
    main()
