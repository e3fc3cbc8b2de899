"""What the Marketo client reports about its calls, and to whom: an injected `MarketoObserver`.

The client knows what the wire cannot tell: the name of a call (`leads/sync`), its retry
attempt, how many records it sends, how long the instance's limits held it back, the Marketo
code of the answer and when it retries. It says so to the observer it is given, explicitly, per
call; `NO_OBSERVER` (the default) drops everything. The OpenTelemetry implementation is
`service.telemetry.marketo.MarketoTelemetry`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Protocol

import httpx

__all__ = ["NO_OBSERVER", "Exchange", "MarketoObserver"]


class Exchange(Protocol):
    """One HTTP exchange being observed."""

    def answered(self, response: httpx.Response) -> None:
        """The response of the exchange, its body already read."""


class MarketoObserver(Protocol):
    """Receives what the Marketo client reports; never sees a credential or a token."""

    def exchange(
        self,
        request: httpx.Request,
        *,
        endpoint: str | None = None,
        attempt: int,
        records: int | None = None,
        limiter_wait: float | None = None,
    ) -> AbstractContextManager[Exchange]:
        """Around sending `request`, attempt `attempt` (1 for the first) of the call named
        `endpoint` (by default, after its path), carrying `records` records, after
        `limiter_wait` seconds held back by the instance's limits. An exception leaving the
        block failed the exchange."""
        ...

    def attempted(self, *, endpoint: str, method: str, code: str, seconds: float) -> None:
        """One attempt of `endpoint` ended with Marketo `code` (`ok`, a Marketo or HTTP code,
        or a transport exception's name) after `seconds`, limiter wait included."""

    def retrying(self, *, endpoint: str, action: str) -> None:
        """A call of `endpoint` is tried again after `action` (`transient`, `refresh` ...)."""


class _Ignored:
    def answered(self, response: httpx.Response) -> None:
        pass


class _Unobserved:
    """Drops every report."""

    @contextlib.contextmanager
    def exchange(
        self,
        request: httpx.Request,
        *,
        endpoint: str | None = None,
        attempt: int,
        records: int | None = None,
        limiter_wait: float | None = None,
    ) -> Iterator[Exchange]:
        yield _Ignored()

    def attempted(self, *, endpoint: str, method: str, code: str, seconds: float) -> None:
        pass

    def retrying(self, *, endpoint: str, action: str) -> None:
        pass


NO_OBSERVER: MarketoObserver = _Unobserved()
"""The observer of a client given none: nothing is recorded."""
