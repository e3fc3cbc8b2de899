"""Shared fixtures: a real grpc.aio server on a free loopback port and a channel to it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from service.server import build_server
from service.settings import Settings

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(address="127.0.0.1:0", data_dir=tmp_path / "data")


@pytest.fixture
async def channel(settings: Settings) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to a freshly built server with its default dependencies."""
    server, port = await build_server(settings)
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(None)
