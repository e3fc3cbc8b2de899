"""Versioned schema migrations."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from service.domain import HOLDER_RESOLVED, ExclusionCode, WritePolicy
from service.store.migrations import Dialect, Migration, load_migrations
from service.store.postgres import PostgresStore
from service.store.rows import to_micros
from service.store.secrets import SecretBox
from service.store.sql import Store
from service.store.sqlite import SqliteStore, apply_migrations, open_in_data_dir
from tests.pg import fresh_database
from tests.store.conftest import START, FakeClock, new_destination


def versions(path: Path) -> list[int]:
    connection = sqlite3.connect(path)
    try:
        return [row[0] for row in connection.execute("SELECT version FROM schema_migrations")]
    finally:
        connection.close()


def test_migrations_are_numbered_in_order() -> None:
    for dialect in ("sqlite", "postgresql"):
        migrations = load_migrations(dialect)
        versions = [m.version for m in migrations]
        assert versions == sorted(set(versions))
        # 0013 (reconciliation) is numbered ahead and lands on its own
        assert set(range(1, versions[-1] + 1)) - set(versions) <= {13}
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


# Counters and outcomes as stored before exclusions had codes: counted per description, and a
# mapping rejection's description quoted the rejected value.
_OLD_REASONS = [
    ("excluded", "marketing consent refused", 2),
    ("excluded", "value rejected by mapping: field 'email' (email): 'a@x' is not a valid email", 3),
    ("excluded", "value rejected by mapping: field 'email' (email): 'b@x' is not a valid email", 4),
    ("excluded", "missing required attributes: firstName, lastName", 1),
    ("excluded", "no dedupe value", 1),
    ("excluded", "some reason of another version", 5),
    ("failed", "1003", 6),
]
_OLD_OUTCOME = (
    "u-old",
    "p-old",
    "value rejected by mapping: field 'email' (email): 'a@x' is not a valid email",
)


def _before(dialect: Dialect, name: str) -> list[Migration]:
    """The migrations before the one named `name`."""
    migrations = load_migrations(dialect)
    names = [m.name for m in migrations]
    return migrations[: names.index(name)]


def _write_old_rows(execute: Callable[[str, tuple[Any, ...]], object], destination: str) -> None:
    hour = to_micros(START.replace(minute=0))
    for kind, reason, count in _OLD_REASONS:
        execute(
            "INSERT INTO dataflow_reasons (destination_id, hour_start, kind, reason, count) "
            "VALUES ({0}, {0}, {0}, {0}, {0})",
            (destination, hour, kind, reason, count),
        )
    update_id, profile_id, reason = _OLD_OUTCOME
    execute(
        "INSERT INTO outcomes (destination_id, update_id, profile_id, dedupe_value, event_time, "
        "recorded_at, kind, actions, lead_id, reason, marketo_code) "
        "VALUES ({0}, {0}, {0}, NULL, {0}, {0}, 'excluded', '[]', NULL, {0}, '')",
        (destination, update_id, profile_id, hour, hour, reason),
    )


async def _check_upgraded(store: Store, destination: str) -> None:
    flow = await store.dataflow(destination, now=START)
    assert flow.excluded == {
        "consent_refused": 2,
        "value_rejected": 7,
        "missing_required": 1,
        "missing_dedupe_value": 1,
        "unknown": 5,
    }
    assert flow.failed == {"1003": 6}
    (record,) = (await store.list_outcomes(destination, profile_id=_OLD_OUTCOME[1])).items
    assert record.outcome.exclusion_code is ExclusionCode.VALUE_REJECTED
    assert record.outcome.reason == "value rejected by mapping"
    assert "a@x" not in record.outcome.reason


Rows = Callable[[Callable[[str, tuple[Any, ...]], object], str], None]


async def _upgrade(
    dialect: Dialect,
    tmp_path: Path,
    box: SecretBox,
    clock: FakeClock,
    before: list[Migration],
    write_rows: Rows,
    check: Callable[[Store, str], Awaitable[None]],
) -> None:
    """Create a destination under the `before` migrations, write old rows with `write_rows`
    (SQL with `{0}` placeholders), then open with every migration and `check`."""
    if dialect == "sqlite":
        path = tmp_path / "store.db"
        async with await SqliteStore.open(path, box, clock=clock, migrations=before) as old:
            created = await old.create_destination(new_destination())
        connection = sqlite3.connect(path)
        try:
            write_rows(lambda sql, params: connection.execute(sql.format("?"), params), created.id)
            connection.commit()
        finally:
            connection.close()
        async with await SqliteStore.open(path, box, clock=clock) as store:
            await check(store, created.id)
        return
    with fresh_database("md_upgrade") as url:
        async with await PostgresStore.open(url, box, clock=clock, migrations=before) as old_pg:
            created = await old_pg.create_destination(new_destination())
        with psycopg.connect(url) as pg:
            write_rows(
                lambda sql, params: pg.execute(sql.format("%s").encode(), params), created.id
            )
        async with await PostgresStore.open(url, box, clock=clock) as store:
            await check(store, created.id)


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
async def test_counters_by_reason_are_folded_into_exclusion_codes(
    dialect: Dialect, tmp_path: Path, box: SecretBox, clock: FakeClock
) -> None:
    before = _before(dialect, "exclusion_codes")
    await _upgrade(dialect, tmp_path, box, clock, before, _write_old_rows, _check_upgraded)


_OLD_MAPPINGS = (
    '[{"source": "person.email", "target": "DedupeField", "transform": null, "options": {}, '
    '"labels": []}]'
)


def _write_rows_before_kept_fields(
    execute: Callable[[str, tuple[Any, ...]], object], destination: str
) -> None:
    hour = to_micros(START.replace(minute=0))
    execute("UPDATE destinations SET mappings = {0} WHERE id = {0}", (_OLD_MAPPINGS, destination))
    execute(
        "INSERT INTO outcomes (destination_id, update_id, profile_id, dedupe_value, event_time, "
        "recorded_at, kind, actions, lead_id, reason, marketo_code) "
        "VALUES ({0}, {0}, {0}, {0}, {0}, {0}, 'activated', '[]', 7, '', '')",
        (destination, "u-old", "p-old", " Ann@Example.COM", hour, hour),
    )


async def _check_kept_fields_upgrade(store: Store, destination: str) -> None:
    (mapping,) = (await store.get_destination(destination, tenant=None)).mappings
    assert mapping.write is WritePolicy.ALWAYS
    (record,) = (await store.list_outcomes(destination, dedupe_value="ann@example.com")).items
    assert record.outcome.update_id == "u-old"
    assert record.outcome.dedupe_value == " Ann@Example.COM"
    assert record.outcome.kept_fields == ()


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
async def test_rows_from_before_write_policies_read_as_always_and_are_found_by_dedupe_key(
    dialect: Dialect, tmp_path: Path, box: SecretBox, clock: FakeClock
) -> None:
    before = _before(dialect, "kept_fields_dedupe_key")
    await _upgrade(
        dialect,
        tmp_path,
        box,
        clock,
        before,
        _write_rows_before_kept_fields,
        _check_kept_fields_upgrade,
    )


def _write_marks_before_holders(
    execute: Callable[[str, tuple[Any, ...]], object], destination: str
) -> None:
    at = to_micros(START)
    for audience, status in (("a1", "realized"), ("a2", "existing"), ("a3", "exited")):
        execute(
            "INSERT INTO membership_marks (destination_id, profile_id, audience_id, status, "
            "event_time) VALUES ({0}, {0}, {0}, {0}, {0})",
            (destination, "p", audience, status, at),
        )
    execute(
        "INSERT INTO activations (destination_id, audience_id, audience_name, origin, "
        "marketo_list_id, list_name, active, created_by_service) "
        "VALUES ({0}, {0}, {0}, {0}, {0}, {0}, 1, 1)",
        (destination, "a1", "A1", "AEP", 11, "A1 list"),
    )


async def _check_holders_upgrade(store: Store, destination: str) -> None:
    state = await store.desired_state(destination, ["p"])
    assert {pair: mark.status.value for pair, mark in state.marks.items()} == {
        ("p", "a1"): "realized",
        ("p", "a2"): "existing",
        ("p", "a3"): "exited",
    }
    # members applied before holders were recorded are held by the lead the profile resolves to
    assert state.holders == {("p", "a1"): HOLDER_RESOLVED, ("p", "a2"): HOLDER_RESOLVED}
    assert state.profiles == {}
    (activation,) = await store.activations(destination)
    assert activation.created_by_service and not activation.holders_tracked


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
async def test_marks_from_before_holders_are_held_by_the_resolved_lead(
    dialect: Dialect, tmp_path: Path, box: SecretBox, clock: FakeClock
) -> None:
    before = _before(dialect, "desired_state")
    await _upgrade(
        dialect,
        tmp_path,
        box,
        clock,
        before,
        _write_marks_before_holders,
        _check_holders_upgrade,
    )


_LEGACY_VALUES = {
    "u-ascii": " Ann@Example.COM",
    "u-ring": "ÅSA@Example.COM",
    "u-sharp": "\tSTRAẞE@x.io",
}


def _write_rows_with_legacy_keys(
    execute: Callable[[str, tuple[Any, ...]], object], destination: str
) -> None:
    hour = to_micros(START.replace(minute=0))
    for update_id, value in _LEGACY_VALUES.items():
        execute(
            "INSERT INTO outcomes (destination_id, update_id, profile_id, dedupe_value, "
            "event_time, recorded_at, kind, actions, lead_id, reason, marketo_code) "
            "VALUES ({0}, {0}, {0}, {0}, {0}, {0}, 'activated', '[]', 7, '', '')",
            (destination, update_id, f"p-{update_id}", value, hour, hour),
        )


async def _check_rekeyed(store: Store, destination: str) -> None:
    # Searched in another case and spelling than stored, as the mapping would normalise them.
    for update_id, search in (
        ("u-ascii", "ann@example.com"),
        ("u-ring", "åsa@example.com"),
        ("u-sharp", "strasse@X.IO"),
    ):
        (record,) = (await store.list_outcomes(destination, dedupe_value=search)).items
        assert record.outcome.update_id == update_id
        assert record.outcome.dedupe_value == _LEGACY_VALUES[update_id]
    assert isinstance(store, SqliteStore | PostgresStore)
    assert await store.rekey_legacy_dedupe_keys() == 0, "re-keyed once only"


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
async def test_rows_keyed_before_the_planners_key_are_rekeyed_once(
    dialect: Dialect, tmp_path: Path, box: SecretBox, clock: FakeClock
) -> None:
    before = _before(dialect, "kept_fields_dedupe_key")
    await _upgrade(
        dialect, tmp_path, box, clock, before, _write_rows_with_legacy_keys, _check_rekeyed
    )
