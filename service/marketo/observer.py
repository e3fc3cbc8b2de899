"""What the Marketo client reports about its calls, and to whom: an injected `MarketoObserver`.

The client knows what the wire cannot tell: the name of a call (`leads/sync`), its retry
attempt, how many records it sends, how long the instance's limits held it back, the Marketo
code of the answer and when it retries. It says so to the observer it is given, explicitly, per
call. `MarketoObserver` itself drops everything (`NO_OBSERVER`, the client's default); the
OpenTelemetry one is `service.telemetry.marketo.MarketoTelemetry`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

__all__ = ["NO_OBSERVER", "Call", "Exchange", "MarketoObserver", "endpoint_of"]

_ID_SEGMENT = re.compile(r"^\d+$")
_VERSION_SEGMENT = re.compile(r"^v\d+$")


def endpoint_of(path: str) -> str:
    """The Marketo endpoint of a URL path, without ids, version or ``.json``:
    ``/rest/v1/lists/42/leads.json`` -> ``lists/leads``, ``/rest/asset/v1/folders.json`` ->
    ``asset/folders``, ``/bulk/v1/leads/batch/7.json`` -> ``bulk/leads/batch``,
    ``/identity/oauth/token`` -> ``identity``. The client names its calls so unless the path
    does not tell the call apart (`leads/sync`, `lists/leads/add`)."""
    segments = [s.removesuffix(".json") for s in path.split("/") if s]
    if not segments:
        return "/"
    if segments[0] == "identity":
        return "identity"
    if segments[0] == "rest":
        segments = segments[1:]
    kept = [s for s in segments if not _ID_SEGMENT.match(s) and not _VERSION_SEGMENT.match(s)]
    return "/".join(kept) or "/"


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
