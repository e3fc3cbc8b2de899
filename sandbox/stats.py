"""Usage API: `/rest/v1/stats/usage*.json` and `/rest/v1/stats/errors*.json`.

Counted calls per Marketo day (America/Chicago, like the daily quota) and per API user, and the
error codes answered that day. A call shows in the figures of the calls after it, never in its own.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from sandbox.http import Call, Reply, lead_ok
from sandbox.limits import DayUsage, quota_day

WEEK = 7


def _days(call: Call, count: int) -> list[tuple[str, DayUsage]]:
    """The last `count` Marketo days, today first, each with its (possibly empty) usage."""
    today = date.fromisoformat(quota_day(call.now))
    days = [(today - timedelta(days=back)).isoformat() for back in range(count)]
    empty = DayUsage()
    return [(day, call.state.usage.days.get(day, empty)) for day in days]


def _usage(day: str, usage: DayUsage) -> dict[str, Any]:
    users = usage.users()
    return {
        "date": day,
        "total": sum(users.values()),
        "users": [{"userId": user, "count": count} for user, count in sorted(users.items())],
    }


def _errors(day: str, usage: DayUsage) -> dict[str, Any]:
    return {
        "date": day,
        "total": sum(usage.errors.values()),
        "errors": [
            {"errorCode": code, "count": count} for code, count in sorted(usage.errors.items())
        ],
    }


async def daily_usage(call: Call) -> Reply:
    return lead_ok([_usage(day, usage) for day, usage in _days(call, 1)])


async def weekly_usage(call: Call) -> Reply:
    return lead_ok([_usage(day, usage) for day, usage in _days(call, WEEK)])


async def daily_errors(call: Call) -> Reply:
    return lead_ok([_errors(day, usage) for day, usage in _days(call, 1)])


async def weekly_errors(call: Call) -> Reply:
    return lead_ok([_errors(day, usage) for day, usage in _days(call, WEEK)])
