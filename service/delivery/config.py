"""What the dispatcher is given: its tuning numbers (`DeliverySettings`, `Backoff`) and the
collaborators it works with (`DeliveryServices`: store, Marketo connections, plugins, alerts,
the inbox codec, telemetry, clock and randomness)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from service.backoff import exponential_delay, jittered
from service.delivery.engine.bulk import BulkPolicy
from service.domain import DecodedBatch
from service.mapping.registry import PluginRegistry
from service.marketo.clock import Clock, SystemClock
from service.store.base import CLAIM_MAX_BYTES
from service.store.sql import Store
from service.telemetry.core import Telemetry
from service.usecases.alerts import AlertMonitor
from service.usecases.connections import MarketoConnections

__all__ = ["Backoff", "DeliveryServices", "DeliverySettings"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long a deferred entry waits: `base * multiplier ** attempts`, capped, with jitter."""

    base: timedelta = timedelta(seconds=5)
    """Wait after the first failure."""
    maximum: timedelta = timedelta(minutes=10)
    """Upper bound of any wait (jitter included)."""
    multiplier: float = 2.0
    jitter: float = 0.2
    """Fraction of the wait drawn at random and subtracted, so retries of many entries spread."""

    def delay(self, attempts: int, rng: random.Random) -> timedelta:
        """The wait before the next try of an entry that already failed `attempts` times."""
        seconds = exponential_delay(
            self.base.total_seconds(),
            attempts + 1,
            multiplier=self.multiplier,
            maximum=self.maximum.total_seconds(),
        )
        return timedelta(seconds=jittered(seconds, self.jitter, rng))


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliverySettings:
    """The dispatcher's tuning numbers (durations in seconds unless typed `timedelta`). Those
    without a default come from the service settings (`service.app.delivery_settings`)."""

    batch_size: int
    """Entries claimed at once by a drainer."""
    linger: float
    """How long a partial batch waits for more updates."""
    lease_ttl: timedelta
    """Life of an instance lease (renewed every third of it while held)."""
    call_margin: float = 0.0
    """Seconds of confirmed lease under which a drainer starts no Marketo call (at least the
    HTTP timeout plus a clock-skew allowance; see `service.delivery.fence`). Less than two
    thirds of `lease_ttl`, or the gate would close between renewals."""
    rate_window: float = 0.0
    """Marketo's rate window (seconds): a lease taken over after an expiry opens its gate only
    once the previous holder's calls have left the window (see the dispatcher)."""
    poll_interval: float = 1.0
    """How often due work (e.g. retries coming due) is looked for."""
    idle_hold: float = 0.0
    """How long a drainer keeps its lease once its instance has nothing due (one Marketo rate
    window in the service)."""
    claim_max_bytes: int = CLAIM_MAX_BYTES
    """Stored payload one claim (a batch, a bulk one too) holds in memory; a batch cut short by
    it counts as full."""
    backoff: Backoff = Backoff()
    """Waits of deferred entries."""
    schema_recheck: Backoff
    """Spaces the schema reads of a destination paused by a schema mismatch."""
    field_types_ttl: float = 600.0
    """How long an instance's lead schema is cached."""
    bulk_threshold: int
    """Due backlog of one destination from which its work goes through bulk import (0: never;
    a negative number counts as 0)."""
    bulk_batch_size: int = 200_000
    """Entries claimed at once for bulk import (never fewer than `batch_size`)."""
    bulk_policy: BulkPolicy = field(default_factory=BulkPolicy)
    """How bulk imports are sized and polled."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.claim_max_bytes < 1:
            raise ValueError("claim_max_bytes must be at least 1")
        if not 0 <= self.call_margin < self.lease_ttl.total_seconds() * 2 / 3:
            raise ValueError("call_margin must be from 0 to less than two thirds of lease_ttl")
        object.__setattr__(self, "bulk_threshold", max(self.bulk_threshold, 0))
        object.__setattr__(self, "bulk_batch_size", max(self.bulk_batch_size, self.batch_size))


@dataclass(frozen=True, slots=True)
class DeliveryServices:
    """Whom the dispatcher works with. `decode` turns an inbox batch (as Sync stored it) into
    updates; `clock` (epoch seconds and sleep) drives every wait, so tests need no real
    sleeping; `rng` draws the jitter of backoffs."""

    store: Store
    connections: MarketoConnections
    registry: PluginRegistry
    alerts: AlertMonitor
    decode: Callable[[bytes], DecodedBatch]
    telemetry: Telemetry | None = None
    clock: Clock = field(default_factory=SystemClock)
    rng: random.Random = field(default_factory=random.Random)
    list_gone: Callable[[str], None] | None = None
    """Called with a destination id when Marketo answered that one of its lists does not exist
    (1013) during delivery: the reconciliation creates it again (`Reconciliation.list_gone`)."""
