"""PostgreSQL for tests: a fresh database per test run, dropped at the end.

The server is found at `TEST_POSTGRES_URL` (default: the local trust-auth server,
`postgresql://postgres@127.0.0.1:5432/postgres`). When it is unreachable the tests that need it
skip, saying so, unless `TEST_REQUIRE_POSTGRES=1` (set by `.ci/run`): then they fail.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def database_url(name: str, admin_url: str = ADMIN_URL) -> str:
    """`admin_url` pointing at database `name` instead."""
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path="/" + name))


def _unreachable(error: Exception) -> None:
    message = (
        f"PostgreSQL is unreachable at {ADMIN_URL} ({error}); start it or set TEST_POSTGRES_URL"
    )
    if os.environ.get("TEST_REQUIRE_POSTGRES") == "1":
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def fresh_database(prefix: str = "md_test") -> Iterator[str]:
    """Create `<prefix>_<random>`, yield its URL, drop it (closing leftover connections)."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        _unreachable(error)
        raise
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield database_url(name)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def truncate_all(url: str) -> None:
    """Empty every table but `schema_migrations` (a clean slate between tests)."""
    with psycopg.connect(url, autocommit=True) as connection:
        tables = [
            row[0]
            for row in connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename <> 'schema_migrations'"
            )
        ]
        if tables:
            connection.execute(
                sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(
                    sql.SQL(", ").join(sql.Identifier(t) for t in tables)
                )
            )
