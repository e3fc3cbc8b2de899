"""Shared fixtures: the whole service in process (see tests/harness.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from service.settings import Settings
from tests.harness import Service, running_service
from tests.processes import kill_leftovers
from tests.scrape import Scrape, scrape_after_traffic

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(address="127.0.0.1:0", data_dir=tmp_path / "data")


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    """The service with its real dependencies over the in-process Marketo sandbox."""
    async with running_service(tmp_path) as running:
        yield running


@pytest.fixture
async def channel(service: Service) -> grpc.aio.Channel:
    return service.channel


@pytest.fixture(autouse=True, scope="session")
def no_leftover_processes() -> Iterator[None]:
    """Service subprocesses left running by a failed test (or shared by a module's tests) are
    killed when the session ends."""
    yield
    kill_leftovers()


@pytest.fixture(scope="session")
def scraped_metrics(tmp_path_factory: pytest.TempPathFactory) -> Scrape:
    """``/metrics`` of a running service after some Sync traffic (tests/scrape.py), scraped
    once per session."""
    return scrape_after_traffic(tmp_path_factory.mktemp("metrics") / "data")
