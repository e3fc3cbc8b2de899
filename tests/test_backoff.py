"""The shared backoff arithmetic and the waits built on it."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from service.backoff import exponential_delay, jittered
from service.delivery.config import Backoff
from service.marketo.codes import Action
from service.settings import ExtractPolling, RetryPolicy, WebhookSettings


class FixedDraw(random.Random):
    """A random source whose every draw is `value`; counts the draws."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value
        self.draws = 0

    def random(self) -> float:
        self.draws += 1
        return self.value


def test_exponential_delay_grows_from_the_first_wait_up_to_the_cap() -> None:
    waits = [exponential_delay(1.0, n, multiplier=2.0, maximum=8.0) for n in range(1, 7)]
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert exponential_delay(2.0, 3, multiplier=1.5, maximum=30.0) == 4.5


def test_exponential_delay_counts_retry_numbers_below_one_as_the_first() -> None:
    assert exponential_delay(5.0, 0, multiplier=2.0, maximum=60.0) == 5.0
    assert exponential_delay(5.0, -3, multiplier=2.0, maximum=60.0) == 5.0


def test_exponential_delay_caps_the_first_wait_and_growth_beyond_a_float() -> None:
    assert exponential_delay(90.0, 1, multiplier=2.0, maximum=60.0) == 60.0
    assert exponential_delay(1.0, 5_000, multiplier=2.0, maximum=600.0) == 600.0


@pytest.mark.parametrize(("draw", "expected"), [(0.0, 5.0), (0.5, 7.5), (1.0, 10.0)])
def test_jittered_takes_off_at_most_the_share(draw: float, expected: float) -> None:
    rng = FixedDraw(draw)
    assert jittered(10.0, 0.5, rng) == expected
    assert rng.draws == 1


def test_jittered_without_a_share_is_exact_and_still_draws() -> None:
    rng = FixedDraw(0.3)
    assert jittered(7.25, 0.0, rng) == 7.25
    assert rng.draws == 1, "the draws of a seeded source stay in step whatever the share"


def test_jittered_is_never_negative() -> None:
    assert jittered(10.0, 1.5, FixedDraw(0.0)) == 0.0


def test_retry_policy_waits_from_the_first_delay_of_the_action() -> None:
    policy = RetryPolicy(rng=FixedDraw(1.0))
    assert policy.delay(Action.TRANSIENT, 3) == 4.0
    assert policy.delay(Action.THROTTLED, 1, "606") == 2.0
    assert policy.delay(Action.THROTTLED, 2, "615") == 1.0
    assert policy.delay(Action.TRANSIENT, 10) == 30.0
    assert RetryPolicy(rng=FixedDraw(0.0)).delay(Action.TRANSIENT, 3) == 2.0


def test_webhook_retries_double_up_to_the_maximum_with_jitter() -> None:
    settings = WebhookSettings(base_delay=2.0, max_delay=10.0)
    assert [settings.delay(n, FixedDraw(1.0)) for n in range(1, 5)] == [2.0, 4.0, 8.0, 10.0]
    assert settings.delay(2, FixedDraw(0.0)) == 2.0


def test_extract_polls_grow_without_jitter() -> None:
    polling = ExtractPolling()
    waits = [polling.delay(n) for n in range(1, 10)]
    assert waits == [2.0, 3.0, 4.5, 6.75, 10.125, 15.1875, 22.78125, 30.0, 30.0]


def test_deferred_entries_wait_base_times_multiplier_per_attempt() -> None:
    backoff = Backoff(base=timedelta(seconds=5), maximum=timedelta(minutes=1), jitter=0.2)
    assert backoff.delay(0, FixedDraw(1.0)) == timedelta(seconds=5)
    assert backoff.delay(2, FixedDraw(1.0)) == timedelta(seconds=20)
    assert backoff.delay(2, FixedDraw(0.0)) == timedelta(seconds=16)
    assert backoff.delay(1_000, FixedDraw(1.0)) == timedelta(minutes=1)
