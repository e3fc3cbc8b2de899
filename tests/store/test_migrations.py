"""Versioned schema migrations."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from service.secrets import SecretBox
from service.store import SqliteStore
from service.store.migrations import load_migrations
from service.store.sqlite import apply_migrations, open_in_data_dir
from tests.store.conftest import FakeClock, new_destination


def versions(path: Path) -> list[int]:
    connection = sqlite3.connect(path)
    try:
        return [row[0] for row in connection.execute("SELECT version FROM schema_migrations")]
    finally:
        connection.close()


def test_migrations_are_numbered_in_order() -> None:
    for dialect in ("sqlite", "postgresql"):
        migrations = load_migrations(dialect)
        assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
        assert all("${" not in s for m in migrations for s in m.statements)
    sqlite_sql = " ".join(s for m in load_migrations("sqlite") for s in m.statements)
    postgres_sql = " ".join(s for m in load_migrations("postgresql") for s in m.statements)
    assert "AUTOINCREMENT" in sqlite_sql
    assert "BYTEA" in postgres_sql and "BLOB" not in postgres_sql


def test_unknown_placeholder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "0001_bad.sql").write_text("CREATE TABLE t (x ${NOPE});\n")

    with pytest.raises(ValueError, match="NOPE"):
        load_migrations("sqlite", tmp_path)


async def test_reopening_is_a_no_op(tmp_path: Path, box: SecretBox, clock: FakeClock) -> None:
    path = tmp_path / "store.db"
    async with await SqliteStore.open(path, box, clock=clock) as store:
        created = await store.create_destination(new_destination())
    applied = versions(path)

    async with await SqliteStore.open(path, box, clock=clock) as store:
        assert (await store.get_destination(created.id, tenant="acme")).id == created.id
    connection = sqlite3.connect(path)
    try:
        assert apply_migrations(connection, load_migrations("sqlite")) == []
    finally:
        connection.close()

    assert versions(path) == applied == [m.version for m in load_migrations("sqlite")]


async def test_old_database_is_upgraded_keeping_its_data(
    tmp_path: Path, box: SecretBox, clock: FakeClock
) -> None:
    path = tmp_path / "store.db"
    migrations = load_migrations("sqlite")
    first = migrations[:1]
    async with await SqliteStore.open(path, box, clock=clock, migrations=first) as old:
        created = await old.create_destination(new_destination())
    assert versions(path) == [1]

    async with await SqliteStore.open(path, box, clock=clock) as store:
        assert (await store.get_destination(created.id, tenant="acme")).name == "Marketo prod"
        assert (await store.pending_stats(created.id)).count == 0  # column added by version 2

    assert versions(path) == [m.version for m in migrations]


async def test_failed_migration_leaves_the_previous_version(
    tmp_path: Path, box: SecretBox, clock: FakeClock
) -> None:
    directory = tmp_path / "migrations"
    directory.mkdir()
    (directory / "0001_one.sql").write_text("CREATE TABLE one (x INTEGER);\n")
    (directory / "0002_broken.sql").write_text(
        "CREATE TABLE two (x INTEGER);\nINSERT INTO missing VALUES (1);\n"
    )
    path = tmp_path / "store.db"

    with pytest.raises(sqlite3.OperationalError):
        await SqliteStore.open(
            path, box, clock=clock, migrations=load_migrations("sqlite", directory)
        )

    assert versions(path) == [1]
    connection = sqlite3.connect(path)
    try:
        tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master")}
    finally:
        connection.close()
    assert "one" in tables
    assert "two" not in tables  # DDL rolled back with its version row


async def test_open_in_data_dir_creates_the_directory(
    tmp_path: Path, box: SecretBox, clock: FakeClock
) -> None:
    data_dir = tmp_path / "nested" / "data"

    async with await open_in_data_dir(data_dir, box, clock=clock):
        pass

    assert (data_dir / "store.db").exists()
