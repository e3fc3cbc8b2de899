"""Marketo's per-instance limits and the call counters the control API reports."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sandbox.settings import SandboxSettings

# Marketo's daily quota resets at midnight US Central time, DST included.
QUOTA_ZONE = ZoneInfo("America/Chicago")

# Codes the error-code page marks as not counted against the rate limit or daily quota.
UNCOUNTED_CODES = frozenset({"601", "602", "604", "605", "608", "611"})


@dataclass
class CallStats:
    """What `/_sandbox/calls` reports."""

    requests: int = 0
    counted: int = 0
    identity: int = 0
    in_flight: int = 0
    peak_concurrency: int = 0
    by_endpoint: dict[str, Counter[str]] = field(default_factory=dict)
    by_code: Counter[str] = field(default_factory=Counter)
    log: list[dict[str, Any]] = field(default_factory=list)
    """Every Marketo call, when `log_calls` is set (`/_sandbox/call-log`)."""

    def record(self, endpoint: str, code: str) -> None:
        self.by_endpoint.setdefault(endpoint, Counter())[code] += 1
        self.by_code[code] += 1

    def as_json(self, limiter: Limiter) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "counted": self.counted,
            "identity": self.identity,
            "in_flight": self.in_flight,
            "peak_concurrency": self.peak_concurrency,
            "window_calls": len(limiter.window),
            "quota_used": limiter.quota_used,
            "by_endpoint": {
                endpoint: {"calls": sum(codes.values()), "codes": dict(codes)}
                for endpoint, codes in sorted(self.by_endpoint.items())
            },
            "by_code": dict(self.by_code),
        }


class Limiter:
    """Sliding-window rate limit, concurrency limit and daily quota."""

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self.window: deque[float] = deque()
        self.quota_used = 0
        self._quota_day = ""

    def _roll(self, now: float) -> None:
        horizon = now - self.settings.window_seconds
        while self.window and self.window[0] <= horizon:
            self.window.popleft()
        day = quota_day(now)
        if day != self._quota_day:
            self._quota_day = day
            self.quota_used = 0

    def admit(self, now: float, in_flight: int) -> tuple[str, str] | None:
        """Take one call's share of the limits, or return the (code, message) refusing it."""
        self._roll(now)
        settings = self.settings
        refusal: tuple[str, str] | None = None
        if in_flight > settings.concurrency:
            refusal = ("615", concurrency_message(settings))
        elif self.quota_used >= settings.daily_quota:
            refusal = ("607", "Daily quota reached")
        elif len(self.window) >= settings.calls_per_window:
            refusal = ("606", rate_message(settings))
        if refusal is None or settings.count_rejected_calls:
            self.take(now)
        return refusal

    def take(self, now: float) -> None:
        """Count one call against the window and the quota."""
        self._roll(now)
        self.window.append(now)
        self.quota_used += 1

    def spend(self, now: float, calls: int) -> None:
        """Count calls another integration made today against the shared daily quota."""
        self._roll(now)
        self.quota_used += calls

    def give_back(self, now: float) -> None:
        """Undo `take` for a call whose response code is not counted."""
        if now in self.window:
            self.window.remove(now)
        self.quota_used = max(0, self.quota_used - 1)


def quota_day(now: float) -> str:
    """The Marketo day (America/Chicago) `now` falls in, as `YYYY-MM-DD`."""
    return datetime.fromtimestamp(now, QUOTA_ZONE).date().isoformat()


@dataclass
class DayUsage:
    """One day of the Usage API: counted calls per API user and endpoint, errors per code."""

    calls: dict[str, Counter[str]] = field(default_factory=dict)
    """API user -> endpoint ("METHOD /path/template") -> counted calls."""
    errors: Counter[str] = field(default_factory=Counter)

    def users(self) -> dict[str, int]:
        return {user: sum(endpoints.values()) for user, endpoints in self.calls.items()}


class Usage:
    """What `/rest/v1/stats/*` reports, kept per Marketo day."""

    def __init__(self) -> None:
        self.days: dict[str, DayUsage] = {}

    def day(self, date: str) -> DayUsage:
        return self.days.setdefault(date, DayUsage())

    def count(self, date: str, user: str, endpoint: str, calls: int = 1) -> None:
        self.day(date).calls.setdefault(user, Counter())[endpoint] += calls

    def error(self, date: str, code: str) -> None:
        self.day(date).errors[code] += 1


def rate_message(settings: SandboxSettings) -> str:
    """Marketo's 606 text (its typo "with in" included)."""
    return (
        f"Max rate limit '{settings.calls_per_window}' exceeded with in "
        f"'{settings.window_seconds:g}' secs"
    )


def concurrency_message(settings: SandboxSettings) -> str:
    """Marketo's 615 text."""
    return f"Concurrent access limit '{settings.concurrency}' reached"
