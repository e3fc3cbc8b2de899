"""The engines' default clock (`service.store.sql.utc_now`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from service.store.sql import utc_now


def test_the_default_clock_reads_the_current_time_in_utc() -> None:
    before = datetime.now(UTC)
    now = utc_now()
    after = datetime.now(UTC)
    assert now.tzinfo is UTC
    assert before <= now <= after
    assert now.utcoffset() == timedelta(0)
