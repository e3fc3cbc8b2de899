"""Per-instance limits: sliding window, concurrency cap, daily budget, 607 pause."""

from __future__ import annotations

import asyncio
from datetime import date, datetime
from zoneinfo import ZoneInfo

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.marketo.errors import QuotaExhaustedError
from service.marketo.limits import DailyUsage, InstanceLimits, next_reset
from tests.harness import retained_memory
from tests.marketo.conftest import FakeClock

UTC = ZoneInfo("UTC")


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_allowance_is_the_share_of_the_window() -> None:
    assert InstanceLimits().allowance == 80
    assert InstanceLimits(share=1.0).allowance == 100
    assert InstanceLimits(calls_per_window=10, share=0.05).allowance == 1


@pytest.mark.parametrize(
    ("now", "reset"),
    [
        # Summer (CDT, UTC-5): midnight Chicago is 05:00 UTC.
        ("2026-07-01T12:00:00+00:00", "2026-07-02T05:00:00+00:00"),
        # Winter (CST, UTC-6): 06:00 UTC.
        ("2026-01-15T12:00:00+00:00", "2026-01-16T06:00:00+00:00"),
        # Just before midnight local time.
        ("2026-01-16T05:59:59+00:00", "2026-01-16T06:00:00+00:00"),
        # The day DST starts (8 Mar 2026, 23 h long): next midnight is in CDT.
        ("2026-03-08T07:00:00+00:00", "2026-03-09T05:00:00+00:00"),
        # The day DST ends (1 Nov 2026, 25 h long): next midnight is in CST.
        ("2026-11-01T06:00:00+00:00", "2026-11-02T06:00:00+00:00"),
    ],
)
def test_next_reset_is_midnight_in_chicago(now: str, reset: str) -> None:
    assert next_reset(ts(now)) == ts(reset)


async def test_window_holds_calls_until_a_window_after_the_answer() -> None:
    clock = FakeClock()
    limits = InstanceLimits(calls_per_window=10, window_seconds=20, share=0.5, clock=clock)
    start = clock.now()
    sent: list[float] = []
    for _ in range(12):
        async with limits.call():
            sent.append(clock.now())
            clock.advance(0.1)  # the call takes 100 ms
    assert sent[:5] == pytest.approx([start + 0.1 * i for i in range(5)])
    # The 6th waits until 20 s after the 1st call's answer.
    assert sent[5] == pytest.approx(start + 0.1 + 20)


@settings(max_examples=40, deadline=None)
@given(
    per_window=st.integers(1, 20),
    share=st.sampled_from([0.5, 0.8, 1.0]),
    concurrency=st.integers(1, 6),
    durations=st.lists(st.floats(0, 3), min_size=1, max_size=60),
)
def test_never_more_than_allowed_in_any_window_or_in_flight(
    per_window: int, share: float, concurrency: int, durations: list[float]
) -> None:
    clock = FakeClock()
    limits = InstanceLimits(
        calls_per_window=per_window,
        window_seconds=5,
        share=share,
        concurrency=concurrency,
        clock=clock,
    )
    spans: list[tuple[float, float]] = []
    peak = 0

    async def one(duration: float) -> None:
        nonlocal peak
        async with limits.call():
            begin = clock.now()
            peak = max(peak, limits.in_flight)
            await clock.sleep(duration)
            spans.append((begin, clock.now()))

    async def run() -> None:
        await asyncio.gather(*(one(d) for d in durations))

    asyncio.run(run())
    assert peak <= concurrency
    assert len(spans) == len(durations)
    # A server counting each call at any instant within its span never sees more than the
    # allowance within one window: calls whose spans start within a window of another's end.
    for begin, _ in spans:
        overlapping = [s for s in spans if s[0] <= begin + 0 and s[1] > begin - 5]
        assert len(overlapping) <= limits.allowance


async def test_concurrency_cap() -> None:
    clock = FakeClock()
    limits = InstanceLimits(concurrency=3, clock=clock)
    gate = asyncio.Event()
    peak = 0

    async def one() -> None:
        nonlocal peak
        async with limits.call():
            peak = max(peak, limits.in_flight)
            await gate.wait()

    tasks = [asyncio.create_task(one()) for _ in range(7)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert limits.in_flight == 3
    gate.set()
    await asyncio.gather(*tasks)
    assert peak == 3
    assert limits.in_flight == 0


async def test_daily_budget_leaves_the_reserve_and_pauses_until_midnight() -> None:
    clock = FakeClock(ts("2026-07-01T12:00:00+00:00"))
    limits = InstanceLimits(daily_quota=10, daily_reserve=4, clock=clock)
    for _ in range(6):
        async with limits.call():
            pass
    with pytest.raises(QuotaExhaustedError) as caught:
        async with limits.call():
            pass
    assert caught.value.paused_until == ts("2026-07-02T05:00:00+00:00")
    assert limits.paused_until == caught.value.paused_until
    clock.advance(caught.value.paused_until - clock.now())
    async with limits.call():
        pass
    assert limits.paused_until is None
    assert limits.used_today == 1


async def test_usage_api_figures_seed_the_daily_budget() -> None:
    clock = FakeClock(ts("2026-07-01T12:00:00+00:00"))  # 07:00 in Chicago
    limits = InstanceLimits(daily_quota=100, daily_reserve=10, clock=clock)
    async with limits.call():
        pass
    today = date(2026, 7, 1)
    limits.seed_usage(today, ours=30, others=55)  # a restart: Marketo counted more of ours
    assert limits.usage == DailyUsage(ours=30, others=55, remaining=5, usage_read_at=None)
    limits.seed_usage(date(2026, 6, 30), ours=90, others=90)  # not today's: ignored
    assert (limits.usage.ours, limits.usage.others) == (30, 55)
    for _ in range(5):
        async with limits.call():
            pass
    with pytest.raises(QuotaExhaustedError):  # 35 + 55 = 100 - 10: the reserve is left
        async with limits.call():
            pass
    assert limits.usage.remaining == 0
    limits.seed_usage(today, ours=3, others=60)  # ours never goes down
    assert (limits.usage.ours, limits.usage.others) == (35, 60)


def test_the_usage_api_is_due_at_first_use_then_hourly_and_after_the_reset() -> None:
    clock = FakeClock(ts("2026-07-01T12:00:00+00:00"))
    limits = InstanceLimits(clock=clock)
    assert limits.usage_due()
    assert not limits.usage_due()  # claimed: concurrent callers do not read it again
    assert limits.usage.usage_read_at == clock.now()
    clock.advance(3599)
    assert not limits.usage_due()
    clock.advance(1)
    assert limits.usage_due()
    limits.seed_usage(date(2026, 7, 1), ours=0, others=500)
    clock.advance(ts("2026-07-02T05:00:00+00:00") - clock.now())  # midnight in Chicago
    assert limits.usage.others == 0
    assert limits.usage_due()


async def test_uncounted_calls_are_refunded() -> None:
    clock = FakeClock()
    limits = InstanceLimits(daily_quota=3, clock=clock)
    for _ in range(5):
        async with limits.call() as permit:
            permit.counted = False  # e.g. answered 601
    assert limits.used_today == 0


async def test_607_pause_is_visible_and_refuses_calls() -> None:
    clock = FakeClock(ts("2026-01-15T12:00:00+00:00"))
    limits = InstanceLimits(clock=clock)
    until = limits.pause_until_reset()
    assert until == ts("2026-01-16T06:00:00+00:00")
    assert limits.paused_until == until
    with pytest.raises(QuotaExhaustedError):
        await limits.acquire()
    clock.advance(until - clock.now() + 1)
    (await limits.acquire()).release()


async def test_throttle_cooldown_holds_every_caller() -> None:
    clock = FakeClock()
    limits = InstanceLimits(clock=clock)
    limits.note_throttled(7.5)
    start = clock.now()
    async with limits.call():
        assert clock.now() >= start + 7.5


def test_limits_are_shared_per_instance_and_http_client() -> None:
    a, b = httpx.AsyncClient(), httpx.AsyncClient()
    first = InstanceLimits.shared(a, "https://123-ABC-456.mktorest.com/rest")
    assert InstanceLimits.shared(a, "https://123-abc-456.mktorest.com") is first
    assert InstanceLimits.shared(a, "https://999-XYZ-000.mktorest.com") is not first
    assert InstanceLimits.shared(b, "https://123-ABC-456.mktorest.com") is not first


class _Owner:
    """What clients share limits over (the service: its `httpx.AsyncClient`)."""


def _churn(owner: _Owner, count: int) -> None:
    """Limits of `count` new instances, none kept by a client (as DescribeMarketo calls on ever
    new munchkin ids leave them)."""
    for n in range(count):
        InstanceLimits.shared(owner, f"https://{n:06}-ABC-123.mktorest.com")


def test_limits_of_ever_new_instances_stay_within_a_bound() -> None:
    owner = _Owner()
    with retained_memory() as retained:
        _churn(owner, 20_000)
    # About 25 MiB when every instance's limits are kept.
    assert retained.bytes < 4 * 1024 * 1024, f"{retained.mib:.1f} MiB retained"


def test_limits_a_client_holds_stay_shared_however_many_instances_come() -> None:
    owner = _Owner()
    held = InstanceLimits.shared(owner, "https://111-AAA-111.mktorest.com")
    _churn(owner, 5_000)
    assert InstanceLimits.shared(owner, "https://111-AAA-111.mktorest.com") is held


async def test_limits_whose_state_counts_are_kept_when_no_client_holds_them() -> None:
    owner = _Owner()
    clock = FakeClock()
    limits = InstanceLimits.shared(owner, "https://111-AAA-111.mktorest.com", clock=clock)
    async with limits.call():
        pass
    del limits
    clock.advance(3_600)  # out of the rate window; still charged today
    _churn(owner, 5_000)
    again = InstanceLimits.shared(owner, "https://111-AAA-111.mktorest.com", clock=clock)
    assert again.used_today == 1
