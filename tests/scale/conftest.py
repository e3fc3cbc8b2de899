"""Fixtures of the multi-replica tests: a PostgreSQL database created for the run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pg import fresh_database


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database per test: replicas migrate it themselves when they start."""
    with fresh_database("md_scale") as url:
        yield url
