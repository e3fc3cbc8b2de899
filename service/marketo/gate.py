"""A call gate: the calls of a client holding one start only while the gate lets them.

A caller whose calls are allowed only under a condition (the delivery's drainer: while its lease
is confirmed with a margin, `service.delivery.fence.CallGate`) calls through a gated view of its
client, `MarketoClient.gated(gate)`: same HTTP client, token cache, limits and observer, and
`gate` checked in the client's single request path, twice:

- when a call starts, before its token, its Usage API reading or its turn at the instance's
  limits: a refused call costs nothing;
- right before each HTTP exchange (Identity included), so a call held up by the instance's rate
  limiter, or retried after a backoff, is checked again when it goes out; the error of a retry
  refused counts the attempts already sent (`UnavailableError.attempts`: they may have landed).

The gate is the view's state, passed explicitly: the client it was made from, and every other
client of the instance, are not gated by it. A client with no gate is never refused.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Gate"]


class Gate(Protocol):
    """Whether the calls of the clients it gates may start now."""

    def check(self) -> None:
        """Raise an `UnavailableError` (nothing was sent) unless a call may start now."""
        ...
