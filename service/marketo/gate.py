"""The calling task's call gate: its Marketo calls start only while the gate lets them.

A task whose calls are allowed only under a condition (the delivery's drainer: while its lease
is confirmed with a margin, `service.delivery.fence.CallGate`) makes a gate current with
`use_gate`, a context variable: the tasks it starts from then on inherit it. `MarketoClient`
checks the current gate in its single request path, twice:

- when a call starts, before its token, its Usage API reading or its turn at the instance's
  limits: a refused call costs nothing;
- right before each HTTP exchange (Identity included), so a call held up by the instance's rate
  limiter, or retried after a backoff, is checked again when it goes out.

A task with no gate is never refused.
"""

from __future__ import annotations

import contextvars
from typing import Protocol

__all__ = ["Gate", "check_current_gate", "use_gate"]


class Gate(Protocol):
    """Whether the calls of the tasks it is current in may start now."""

    def check(self) -> None:
        """Raise an `UnavailableError` (nothing was sent) unless a call may start now."""
        ...


_CURRENT: contextvars.ContextVar[Gate | None] = contextvars.ContextVar(
    "marketo_call_gate", default=None
)


def use_gate(gate: Gate) -> None:
    """Make `gate` the calling task's gate (and that of the tasks it starts from now on)."""
    _CURRENT.set(gate)


def check_current_gate() -> None:
    """Raise unless the calling task has no gate or its gate lets a call start now."""
    gate = _CURRENT.get()
    if gate is not None:
        gate.check()
