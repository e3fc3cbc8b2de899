"""How long and how often a call is retried."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from service.backoff import exponential_delay, jittered
from service.marketo.codes import Action


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff with jitter, bounded by attempts and a deadline per HTTP call."""

    max_attempts: int = 8
    """Calls made for one request at most (the first included)."""
    deadline: float = 300.0
    """Seconds from the first attempt after which no retry is started."""
    base_delay: float = 1.0
    """First backoff for transient failures (604/608/611/713/719, 5xx, connection errors)."""
    throttle_delay: float = 2.0
    """First backoff after 606 (rate limit) or a busy import queue."""
    concurrency_delay: float = 0.5
    """First backoff after 615 (concurrency limit)."""
    max_delay: float = 30.0
    """Cap on any single backoff."""
    multiplier: float = 2.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)
    """Source of jitter; seed it in tests for reproducible delays."""

    def delay(self, action: Action, retry_number: int, code: str | None = None) -> float:
        """Seconds to wait before retry `retry_number` (1-based): exponential, jittered
        between half and all of the nominal delay."""
        if action is Action.THROTTLED:
            base = self.concurrency_delay if code == "615" else self.throttle_delay
        else:
            base = self.base_delay
        nominal = exponential_delay(
            base, retry_number, multiplier=self.multiplier, maximum=self.max_delay
        )
        return jittered(nominal, 0.5, self.rng)
