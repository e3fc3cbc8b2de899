"""External fencing: a drainer calls Marketo only while its lease is confirmed with a margin.

The store fences its own writes with the lease generation, but Marketo knows nothing of leases:
a replica that lost its lease (stalled, cut off from the database) could still send a Sync Leads
call that lands after the new holder wrote a newer version. A `CallGate` per drainer stops that:

- a call may start only while `confirmed_until - now > margin`, where `confirmed_until` is the
  expiry of the last lease renewal that succeeded and `margin` is at least the longest Marketo
  exchange (the HTTP timeout) plus a clock-skew allowance; so an exchange that starts is
  answered, or given up, before the lease can expire on any clock within the skew;
- a lost lease, or an event-loop stall seen by the heartbeat, closes the gate at once (a renewal
  that succeeds after a stall opens it again: the lease was still ours);
- a lease taken over after its previous tenure expired (rather than being released) opens only
  `margin` after that expiry: a call the previous holder started just in time has ended by then.

A drainer task makes its gate current (`use_gate`, a context variable: tasks it starts inherit
it). The gate is then checked twice: when the engine calls a port method (the delivery wraps the
client in a `GatedPort` when a gate is current), and right before each HTTP exchange
(`check_current_gate`, the request hook of the service's Marketo HTTP client), so a call held up
by the instance's rate limiter or retried after a backoff is checked again when it goes out.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import httpx

from service.delivery.engine.bulk import BulkImportPort
from service.marketo.clock import Clock
from service.marketo.errors import UnavailableError
from service.marketo.types import ImportJob, Lead, MembershipResult, RecordResult, SyncAction

__all__ = [
    "REPLICA_HEADER",
    "CallGate",
    "GatedPort",
    "LeaseUnconfirmed",
    "check_current_gate",
    "current_gate",
    "use_gate",
]

REPLICA_HEADER = "X-Marketo-Dest-Replica"
"""Request header naming the calling replica (sent only when `marketo_replica_header` is set,
so that a sandbox can log which replica made each call)."""

_CURRENT: contextvars.ContextVar[CallGate | None] = contextvars.ContextVar(
    "marketo_call_gate", default=None
)


class LeaseUnconfirmed(UnavailableError):
    """No Marketo call was sent: the drainer's lease is not confirmed with the safety margin."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="lease", attempts=0)


class CallGate:
    """Whether a drainer may start a Marketo call now (see the module docstring)."""

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


def use_gate(gate: CallGate) -> None:
    """Make `gate` the calling task's gate (and that of the tasks it starts from now on)."""
    _CURRENT.set(gate)


def current_gate() -> CallGate | None:
    """The calling task's gate, if it has one."""
    return _CURRENT.get()


async def check_current_gate(request: httpx.Request) -> None:
    """httpx request hook: refuse to send when the calling task's gate is shut."""
    gate = _CURRENT.get()
    if gate is not None:
        gate.check()


class GatedPort:
    """A Marketo port whose every call passes the drainer's gate first."""

    def __init__(self, port: BulkImportPort, gate: CallGate) -> None:
        self._port = port
        self._gate = gate

    async def find_leads(
        self, filter_type: str, values: Sequence[str], fields: Sequence[str]
    ) -> list[Lead]:
        """See `MarketoPort.find_leads`."""
        self._gate.check()
        return await self._port.find_leads(filter_type, values, fields)

    async def sync_leads(
        self,
        records: Sequence[Mapping[str, Any]],
        *,
        action: SyncAction,
        lookup_field: str | None = None,
        partition_name: str | None = None,
    ) -> list[RecordResult]:
        """See `MarketoPort.sync_leads`."""
        self._gate.check()
        return await self._port.sync_leads(
            records, action=action, lookup_field=lookup_field, partition_name=partition_name
        )

    async def add_to_list(self, list_id: int, lead_ids: Sequence[int]) -> list[MembershipResult]:
        """See `MarketoPort.add_to_list`."""
        self._gate.check()
        return await self._port.add_to_list(list_id, lead_ids)

    async def remove_from_list(
        self, list_id: int, lead_ids: Sequence[int]
    ) -> list[MembershipResult]:
        """See `MarketoPort.remove_from_list`."""
        self._gate.check()
        return await self._port.remove_from_list(list_id, lead_ids)

    async def create_import(
        self,
        csv_bytes: bytes,
        *,
        lookup_field: str | None = None,
        list_id: int | None = None,
        partition_name: str | None = None,
    ) -> ImportJob:
        """See `BulkImportPort.create_import`."""
        self._gate.check()
        return await self._port.create_import(
            csv_bytes,
            lookup_field=lookup_field,
            list_id=list_id,
            partition_name=partition_name,
        )

    async def import_status(self, batch_id: int) -> ImportJob:
        """See `BulkImportPort.import_status`."""
        self._gate.check()
        return await self._port.import_status(batch_id)

    async def import_failures(self, batch_id: int) -> str:
        """See `BulkImportPort.import_failures`."""
        self._gate.check()
        return await self._port.import_failures(batch_id)

    async def import_warnings(self, batch_id: int) -> str:
        """See `BulkImportPort.import_warnings`."""
        self._gate.check()
        return await self._port.import_warnings(batch_id)
