"""Marketo's per-instance limits, enforced once per instance in the process.

Marketo allows each instance 100 calls per 20 s, 10 concurrent calls and a daily quota, shared
with every other integration. `InstanceLimits` keeps this process inside a share of them:

- a sliding window of `calls_per_window * share` calls per `window_seconds`; a call occupies its
  slot from the moment it is sent until `window_seconds` after its answer arrived, so the
  server's count (taken somewhere in between) can never exceed the allowance;
- at most `concurrency` calls in flight;
- a daily budget of `daily_quota - daily_reserve` calls counted as Marketo counts them (calls
  answered 601, 602, 604, 605, 608 or 611 are refunded; Identity calls are not counted), reset
  at midnight America/Chicago;
- a pause until that midnight after a 607 or when the budget is spent (`paused_until`).

The daily budget counts the instance's other integrations: clients that read Marketo's Usage API
(at an instance's first call and every `USAGE_REFRESH_SECONDS`, see `usage_due`) seed today's
count with it (`seed_usage`): this process's API users' calls when Marketo counted more than
this process did (a restart), and the other API users' calls, which spend the budget too. The
budget is spent when ours + others reach `daily_quota - daily_reserve`, so the reserve is left to
the others whoever spent the rest.

One `InstanceLimits` per Marketo instance is shared by every client built over the same
`httpx.AsyncClient` (one per process): see `InstanceLimits.shared`. Callers choose instances
(DescribeMarketo, Configure), so the limits of instances at rest are forgotten past
`KEPT_LIMITS_BYTES`; limits a client still holds, or whose state still counts, never are.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from service.caches import BytesBoundedCache, deep_size
from service.marketo.clock import Clock, SystemClock
from service.marketo.errors import QuotaExhaustedError
from service.settings import DEFAULT_LIMITS

MARKETO_DAY = ZoneInfo("America/Chicago")
"""Marketo's daily quota resets at midnight US Central (DST-aware)."""
USAGE_REFRESH_SECONDS = 3600.0
"""How often the Usage API is read again for an instance (Marketo updates it continuously; an
hour keeps the cost at 24 calls a day per instance)."""


@dataclass(frozen=True, slots=True)
class DailyUsage:
    """Today's calls of one instance as this process knows them."""

    ours: int
    """Calls of this process's API users: its own count, or the Usage API's when higher."""
    others: int
    """Calls of the instance's other API users, as the Usage API last said."""
    remaining: int
    """Calls this process may still make today: quota - reserve - ours - others, at least 0."""
    usage_read_at: float | None
    """When the Usage API was last read (epoch s), None before the first reading today."""


def next_reset(now: float) -> float:
    """Epoch seconds of the next midnight in America/Chicago after `now`."""
    local = datetime.fromtimestamp(now, MARKETO_DAY)
    midnight = datetime.combine(local.date() + timedelta(days=1), time(0), tzinfo=MARKETO_DAY)
    return midnight.timestamp()


def marketo_day(now: float) -> date:
    """The calendar day in America/Chicago that Marketo counts `now` against."""
    return datetime.fromtimestamp(now, MARKETO_DAY).date()


def instance_key(base_url: str) -> str:
    """A Marketo instance's identity: the REST host, lower-case (it holds the Munchkin id)."""
    parts = urlsplit(base_url if "://" in base_url else f"https://{base_url}")
    return (parts.hostname or base_url).lower() + (f":{parts.port}" if parts.port else "")


class _Slot:
    """A call's place in the sliding window: in flight until `done_at` is set."""

    __slots__ = ("done_at",)

    def __init__(self) -> None:
        self.done_at: float | None = None


class Permit:
    """One admitted call; `release` it with whether Marketo counted it."""

    __slots__ = ("_limits", "_released", "_slot", "counted")

    def __init__(self, limits: InstanceLimits, slot: _Slot) -> None:
        self._limits = limits
        self._slot = slot
        self._released = False
        self.counted = True

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._limits._release(self._slot, counted=self.counted)


KEPT_LIMITS_BYTES = 2 * 1024 * 1024
"""The most the limits of instances at rest (`InstanceLimits.at_rest`) that no client holds
take per owner (about 1,500 instances); limits in use are kept whatever their number."""
_LIMITS_BYTES = 1_280
"""What one `InstanceLimits` holds besides its key (measured, with no call in its window)."""


class _SharedLimits:
    """The limits of one owner's instances: every one a client holds (`live`, weakly), and the
    most recently used (`kept`) so that their state outlives short-lived clients."""

    def __init__(self) -> None:
        self.live: weakref.WeakValueDictionary[str, InstanceLimits] = weakref.WeakValueDictionary()
        self.kept: BytesBoundedCache[str, InstanceLimits] = BytesBoundedCache(
            KEPT_LIMITS_BYTES,
            lambda key, limits: deep_size(key) + _LIMITS_BYTES,
            evictable=lambda limits: limits.at_rest,
        )


_SHARED: weakref.WeakKeyDictionary[Any, _SharedLimits] = weakref.WeakKeyDictionary()


class InstanceLimits:
    """Rate, concurrency and daily limits of one Marketo instance, shared by its clients."""

    def __init__(
        self,
        *,
        calls_per_window: int = 100,
        window_seconds: float = DEFAULT_LIMITS.window_seconds,
        share: float = DEFAULT_LIMITS.share,
        concurrency: int = DEFAULT_LIMITS.concurrency,
        daily_quota: int = DEFAULT_LIMITS.daily_quota,
        daily_reserve: int = 0,
        clock: Clock | None = None,
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError("share must be in (0, 1]")
        if calls_per_window < 1 or window_seconds <= 0 or concurrency < 1:
            raise ValueError("limits must be positive")
        self.calls_per_window = calls_per_window
        self.window_seconds = window_seconds
        self.share = share
        self.allowance = max(1, math.floor(calls_per_window * share))
        """Calls this process may make per window."""
        self.concurrency = concurrency
        self.daily_quota = daily_quota
        self.daily_reserve = daily_reserve
        self.clock: Clock = clock or SystemClock()
        self.paused_until: float | None = None
        """Epoch seconds until which calls are refused (after 607 or a spent budget)."""
        self._slots: list[_Slot] = []
        self._in_flight = 0
        self._cooldown_until = 0.0
        self._day: date | None = None
        self._used_today = 0
        self._others_today = 0
        self._usage_read_at: float | None = None
        self.api_users: set[str] = set()
        """This process's API users on the instance (their calls are ours in the Usage API)."""
        self._waiters: list[asyncio.Future[None]] = []
        self._queue: deque[object] = deque()

    @classmethod
    def shared(
        cls,
        owner: object,
        base_url: str,
        factory: type[InstanceLimits] | None = None,
        **settings: Any,
    ) -> InstanceLimits:
        """The limits of the instance at `base_url` for every client built over `owner`
        (the process's `httpx.AsyncClient`); created with `settings` on first use."""
        per_owner = _SHARED.get(owner)
        if per_owner is None:
            per_owner = _SHARED[owner] = _SharedLimits()
        key = instance_key(base_url)
        limits = per_owner.live.get(key)
        if limits is None:
            limits = per_owner.live[key] = (factory or cls)(**settings)
        known, _ = per_owner.kept.lookup(key)
        if not known:
            per_owner.kept.put(key, limits)
        return limits

    @classmethod
    def known(cls, owner: object) -> dict[str, InstanceLimits]:
        """The limits of every instance `shared` knows over `owner`: those clients hold and
        those kept at rest, by instance key."""
        per_owner = _SHARED.get(owner)
        if per_owner is None:
            return {}
        found = dict(per_owner.kept.items())
        found.update(per_owner.live.items())
        return found

    @property
    def at_rest(self) -> bool:
        """Whether forgetting these limits loses nothing: no call in flight, waiting or in the
        rate window, none charged today, no pause or cool-down."""
        now = self.clock.now()
        self._roll_day(now)
        self._purge(now)
        return (
            self._in_flight == 0
            and not self._waiters
            and not self._queue
            and not self._slots
            and self._used_today == 0
            and (self.paused_until is None or self.paused_until <= now)
            and self._cooldown_until <= now
        )

    @property
    def daily_budget(self) -> int:
        """Calls this process may make per Marketo day."""
        return max(0, self.daily_quota - self.daily_reserve)

    @property
    def usage(self) -> DailyUsage:
        """Today's calls: ours, the others' and what is left of the budget."""
        self._roll_day(self.clock.now())
        left = self.daily_budget - self._used_today - self._others_today
        return DailyUsage(self._used_today, self._others_today, max(0, left), self._usage_read_at)

    def usage_due(self) -> bool:
        """Whether the Usage API should be read now (never read today, or an hour ago); the
        caller that gets True reads it, concurrent callers get False."""
        now = self.clock.now()
        self._roll_day(now)
        read_at = self._usage_read_at
        if read_at is not None and now - read_at < USAGE_REFRESH_SECONDS:
            return False
        self._usage_read_at = now
        return True

    def seed_usage(self, day: date, *, ours: int, others: int) -> None:
        """Today's figures from the Usage API (figures of another day are ignored): our count
        is raised to Marketo's, the others' replaced; the budget may be spent at once."""
        self._roll_day(self.clock.now())
        if day != self._day:
            return
        self._used_today = max(self._used_today, ours)
        self._others_today = others
        self._wake()

    @property
    def used_today(self) -> int:
        """Calls counted against today's budget (in-flight calls included)."""
        self._roll_day(self.clock.now())
        return self._used_today

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def pause_until_reset(self) -> float:
        """Refuse calls until the next daily reset (after Marketo answered 607)."""
        until = next_reset(self.clock.now())
        self.paused_until = max(self.paused_until or 0.0, until)
        self._wake()
        return self.paused_until

    def note_throttled(self, delay: float) -> None:
        """Marketo answered 606/615: hold every caller of this instance back for `delay` s."""
        self._cooldown_until = max(self._cooldown_until, self.clock.now() + delay)

    @asynccontextmanager
    async def call(self) -> AsyncIterator[Permit]:
        """Admit one REST call: raises `QuotaExhaustedError` while paused or out of budget."""
        permit = await self.acquire()
        try:
            yield permit
        finally:
            permit.release()

    async def acquire(self) -> Permit:
        """Wait for a concurrency slot and a window slot; charge the daily budget.

        Callers are admitted first come, first served: a call retried after 606/615 queues
        behind the calls already waiting, so a throttle storm is spread over them all.
        """
        self._check_quota()
        ticket = object()
        self._queue.append(ticket)
        try:
            while True:
                self._check_quota()
                now = self.clock.now()
                if self._queue[0] is not ticket or self._in_flight >= self.concurrency:
                    await self._wait(None)
                    continue
                if self._cooldown_until > now:
                    await self._wait(self._cooldown_until - now)
                    continue
                self._purge(now)
                if len(self._slots) < self.allowance:
                    break
                finished = [s.done_at for s in self._slots if s.done_at is not None]
                delay = min(finished) + self.window_seconds - now if finished else None
                await self._wait(delay)
        finally:
            self._queue.remove(ticket)
            self._wake()
        slot = _Slot()
        self._slots.append(slot)
        self._in_flight += 1
        self._used_today += 1
        return Permit(self, slot)

    def _release(self, slot: _Slot, *, counted: bool) -> None:
        now = self.clock.now()
        slot.done_at = now
        self._in_flight -= 1
        if not counted:
            self._roll_day(now)
            self._used_today = max(0, self._used_today - 1)
        self._wake()

    def _check_quota(self) -> None:
        now = self.clock.now()
        self._roll_day(now)
        if self.paused_until is not None:
            if now < self.paused_until:
                raise QuotaExhaustedError(self.paused_until)
            self.paused_until = None
        if self._used_today + self._others_today >= self.daily_budget:
            self.paused_until = next_reset(now)
            raise QuotaExhaustedError(
                self.paused_until, code=None, message="Daily API budget of this process spent"
            )

    def _roll_day(self, now: float) -> None:
        day = marketo_day(now)
        if day != self._day:
            self._day = day
            self._used_today = 0
            self._others_today = 0
            self._usage_read_at = None

    def _purge(self, now: float) -> None:
        horizon = now - self.window_seconds
        self._slots = [s for s in self._slots if s.done_at is None or s.done_at > horizon]

    async def _wait(self, delay: float | None) -> None:
        """Until a call is released or `delay` seconds pass (forever when `delay` is None)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            if delay is None:
                await future
                return
            sleeper = asyncio.ensure_future(self.clock.sleep(max(0.0, delay)))
            try:
                await asyncio.wait({future, sleeper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
        finally:
            if future in self._waiters:
                self._waiters.remove(future)
            future.cancel()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)

    def __repr__(self) -> str:
        return (
            f"InstanceLimits(allowance={self.allowance}/{self.window_seconds:g}s, "
            f"concurrency={self.concurrency}, daily_budget={self.daily_budget}, "
            f"paused_until={self.paused_until!r})"
        )
