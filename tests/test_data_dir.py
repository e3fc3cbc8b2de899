"""The data directory and what the service creates in it are owner-only, whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.app import open_application
from service.settings import Settings
from service.store.secrets import KEY_FILE_NAME
from service.store.sqlite import DATABASE_FILE_NAME
from tests.store.conftest import new_destination


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("permissive_umask")
async def test_store_files_key_and_directory_are_owner_only(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings = Settings(address="127.0.0.1:0", data_dir=data_dir)
    async with open_application(settings, run_background=False) as app:
        await app.store.create_destination(new_destination())
        database = data_dir / DATABASE_FILE_NAME
        files = [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
        files.append(data_dir / KEY_FILE_NAME)
        assert {path.name: mode(path) for path in files} == {path.name: 0o600 for path in files}
    assert mode(data_dir) == 0o700


@pytest.mark.usefixtures("permissive_umask")
async def test_store_files_left_readable_by_others_are_made_owner_only(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    database = data_dir / DATABASE_FILE_NAME
    database.touch(mode=0o644)
    settings = Settings(address="127.0.0.1:0", data_dir=data_dir)
    async with open_application(settings, run_background=False) as app:
        await app.store.create_destination(new_destination())
        assert mode(database) == 0o600
        assert mode(Path(f"{database}-wal")) == 0o600
