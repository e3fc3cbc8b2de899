"""External fencing: a drainer calls Marketo only while its lease is confirmed with a margin.

The store fences its own writes with the lease generation, but Marketo knows nothing of leases:
a replica that lost its lease (stalled, cut off from the database) could still send a Sync Leads
call that lands after the new holder wrote a newer version. A `CallGate` per drainer stops that:

- a call may start only while `confirmed_until - now > margin`, where `confirmed_until` is the
  expiry of the last lease renewal that succeeded and `margin` is at least the longest Marketo
  exchange (the HTTP timeout, which the client applies to each exchange as a whole, waiting for
  a pooled connection included, not only to each of httpx's phases) plus a clock-skew
  allowance; so an exchange that starts is answered, or given up, before the lease can expire
  on any clock within the skew;
- a lost lease, or an event-loop stall seen by the heartbeat, closes the gate at once (a renewal
  that succeeds after a stall opens it again: the lease was still ours);
- a lease taken over after its previous tenure expired (rather than being released) opens only
  `margin` after that expiry: a call the previous holder started just in time has ended by then.

A drainer hands its gate to the batch delivery, whose engines (their tasks included) and schema
reads call through `MarketoClient.gated(gate)`, a view of the destination's client (see
`service.marketo.gate`); the client checks the gate in its single request path: when a call
starts (before its token and its turn at the instance's limits) and again right before each
HTTP exchange, Identity's included, so a call held up by the instance's rate limiter or retried
after a backoff is checked again when it goes out. Other callers of the same clients (dry runs,
reconciliation, the RPCs) are not gated by it.
"""

from __future__ import annotations

from datetime import datetime

from service.marketo.clock import Clock
from service.marketo.errors import UnavailableError

__all__ = ["REPLICA_HEADER", "CallGate", "LeaseUnconfirmed"]

REPLICA_HEADER = "X-Marketo-Dest-Replica"
"""Request header naming the calling replica (sent only when `marketo_replica_header` is set,
so that a sandbox can log which replica made each call)."""


class LeaseUnconfirmed(UnavailableError):
    """No Marketo call was sent: the drainer's lease is not confirmed with the safety margin."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="lease", attempts=0)


class CallGate:
    """Whether a drainer may start a Marketo call now (see the module docstring); a
    `service.marketo.gate.Gate`."""

    def __init__(
        self,
        clock: Clock,
        *,
        margin: float,
        confirmed_until: datetime,
        opens_at: datetime | None = None,
    ) -> None:
        """`margin` in seconds; `opens_at`: no call before then (a lease taken over)."""
        self._clock = clock
        self.margin = margin
        self.confirmed_until = confirmed_until.timestamp()
        self.opens_at = opens_at.timestamp() if opens_at is not None else 0.0
        self.closed_reason = ""
        """Why the gate was closed for good or until the next confirmation ("" while open)."""

    def confirm(self, expires_at: datetime) -> None:
        """A renewal succeeded: the lease is ours until `expires_at`; reopens a closed gate."""
        self.confirmed_until = expires_at.timestamp()
        self.closed_reason = ""

    def close(self, reason: str) -> None:
        """No call from now on until the next `confirm`."""
        self.closed_reason = reason

    def refusal(self) -> str | None:
        """Why a call may not start now, or None when it may."""
        if self.closed_reason:
            return self.closed_reason
        now = self._clock.now()
        if now < self.opens_at:
            return f"the lease was taken over; calls start in {self.opens_at - now:.1f}s"
        left = self.confirmed_until - now
        if left <= self.margin:
            return f"the lease is confirmed for {left:.1f}s, within the {self.margin:.1f}s margin"
        return None

    @property
    def open(self) -> bool:
        """Whether a call may start now."""
        return self.refusal() is None

    def check(self) -> None:
        """Raise `LeaseUnconfirmed` unless a call may start now."""
        reason = self.refusal()
        if reason is not None:
            raise LeaseUnconfirmed(f"Marketo call not sent: {reason}")
