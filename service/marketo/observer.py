"""What the Marketo client reports about its calls, and to whom: an injected `MarketoObserver`.

The client knows what the wire cannot tell: the name of a call (`leads/sync`), its retry
attempt, how many records it sends, how long the instance's limits held it back, the Marketo
code of the answer and when it retries. It says so to the observer it is given, explicitly, per
call. `MarketoObserver` itself drops everything (`NO_OBSERVER`, the client's default); the
OpenTelemetry one is `service.telemetry.marketo.MarketoTelemetry`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

__all__ = ["NO_OBSERVER", "Call", "Exchange", "MarketoObserver"]


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP call of the client and what only the client knows about it. The request
    carries the bearer token, credentials and profile values: an observer records none."""

    request: httpx.Request
    attempt: int
    """1 for the first attempt."""
    endpoint: str | None = None
    """The client's name for the call (`leads/sync`); without one, named after the path."""
    records: int | None = None
    """Records the request carries (Sync Leads inputs, look-up values, list member ids)."""
    limiter_wait: float | None = None
    """Seconds the instance's rate and concurrency limits held the call back."""


class Exchange:
    """One HTTP exchange being observed; this one records nothing."""

    def answered(self, response: httpx.Response) -> None:
        """The response of the exchange, its body already read."""


class MarketoObserver:
    """Receives what the Marketo client reports; this one drops it all."""

    @contextlib.contextmanager
    def exchange(self, call: Call) -> Iterator[Exchange]:
        """Around sending `call.request`; an exception leaving the block failed the exchange."""
        yield Exchange()

    def attempted(self, *, endpoint: str, method: str, code: str, seconds: float) -> None:
        """One attempt of `endpoint` ended with Marketo `code` (`ok`, a Marketo or HTTP code,
        or a transport exception's name) after `seconds`, limiter wait included."""

    def retrying(self, *, endpoint: str, action: str) -> None:
        """A call of `endpoint` is tried again after `action` (`transient`, `refresh` ...)."""


NO_OBSERVER = MarketoObserver()
"""The observer of a client given none: nothing is recorded."""
