"""How long to wait before try n: exponential growth from a first wait, a cap, and jitter.

The retry and poll loops of the service wait this way: Marketo call retries
(`service.settings.RetryPolicy`), alert webhooks (`service.settings.WebhookSettings`), deferred
outbox entries (`service.delivery.config.Backoff`) and list extract polls
(`service.settings.ExtractPolling`). Each keeps its own numbers; the arithmetic is here.
"""

from __future__ import annotations

import random

__all__ = ["exponential_delay", "jittered"]


def exponential_delay(
    first: float, retry_number: int, *, multiplier: float, maximum: float
) -> float:
    """Seconds before retry `retry_number` (1-based): `first * multiplier ** (retry_number - 1)`,
    at most `maximum`. Retry numbers below 1 count as 1; growth too large for a float is capped."""
    try:
        grown = first * multiplier ** max(0, retry_number - 1)
    except OverflowError:
        return maximum
    return min(maximum, grown)


def jittered(seconds: float, share: float, rng: random.Random) -> float:
    """`seconds` less a random part of at most `share` of it (drawn from `rng`), so that many
    waiters spread out: between `(1 - share) * seconds` and `seconds`, never below zero."""
    return max(0.0, seconds * (1.0 - share + share * rng.random()))
