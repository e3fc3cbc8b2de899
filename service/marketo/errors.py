"""Errors raised by the Marketo client.

Every error is classified by what the caller should do next (see `codes.py`)::

    MarketoError                      base; `code` holds Marketo's code or the HTTP status, if any
    ├── AuthenticationError           Identity said HTTP 401: the client id or secret is wrong
    ├── QuotaExhaustedError           607 or the local daily budget spent; `paused_until` (epoch s);
    │                                 also 1029 "Export daily quota exceeded" (code 1029: only
    │                                 bulk extracts wait, the instance is not paused)
    ├── RejectedError                 the request cannot succeed as sent (603, 610, 709, 1013 ...);
    │                                 never retried; `code` lets callers map 603/1008 to
    │                                 PERMISSION_DENIED
    │   └── ConfigurationError        the instance's configuration refuses the whole request
    │                                 (response-level 1006/1011, HTTP 403/404): a field deleted
    │                                 from the schema, say; no record causes it, so a batch is
    │                                 never split over it
    ├── UnavailableError              transient failures outlasted the retry deadline or attempts
    └── OutcomeUnknownError           a non-idempotent write may have been applied but got no
                                      answer; look up before retrying

Record-level reasons (1xxx inside `result`) are never raised: they come back as results.
Messages never contain the client secret or an access token.
"""

from __future__ import annotations

from collections.abc import Sequence

from service.marketo.types import RecordResult


class MarketoError(Exception):
    """Base of every error raised by the Marketo client."""

    def __init__(
        self, message: str, *, code: str | None = None, endpoint: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.endpoint = endpoint
        self.completed: tuple[RecordResult, ...] = ()
        """For chunked writes: results of the chunks answered before this error (input order)."""
        self.first_unknown_index = 0
        """For chunked writes: index of the first input record without a result."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r})"


class AuthenticationError(MarketoError):
    """Marketo's Identity service rejected the client id or secret (HTTP 401)."""

    def __init__(self, detail: str = "", *, endpoint: str | None = None) -> None:
        message = "Marketo rejected the client id or secret"
        if detail:
            message = f"{message} ({detail})"
        super().__init__(message, code="401", endpoint=endpoint)


class QuotaExhaustedError(MarketoError):
    """The daily quota is spent (607 or the local budget); calls resume at `paused_until`. With
    code 1029, the daily export allowance is spent: extracts resume then, other calls go on."""

    def __init__(
        self,
        paused_until: float,
        *,
        code: str | None = "607",
        endpoint: str | None = None,
        message: str = "",
    ) -> None:
        text = message or "Marketo daily API quota reached"
        super().__init__(
            f"{text}; paused until epoch {paused_until:.0f}", code=code, endpoint=endpoint
        )
        self.paused_until = paused_until


class RejectedError(MarketoError):
    """Marketo rejected the request; retrying it unchanged will not help."""

    def __init__(self, code: str, message: str, *, endpoint: str | None = None) -> None:
        super().__init__(
            f"Marketo rejected the request: {code} {message}", code=code, endpoint=endpoint
        )
        self.reason = message


class ConfigurationError(RejectedError):
    """The instance's configuration refuses the request as a whole (response-level 1006/1011,
    HTTP 403/404), e.g. it names a field deleted from the lead schema.

    No record of the request causes it: the caller re-reads the schema rather than splitting.
    """


class UnavailableError(MarketoError):
    """Transient failures (604/608/611/713/719, HTTP 5xx, connection errors) outlasted the retry
    budget; `attempts` calls were made."""

    def __init__(
        self, message: str, *, code: str | None, attempts: int, endpoint: str | None = None
    ) -> None:
        super().__init__(message, code=code, endpoint=endpoint)
        self.attempts = attempts


class OutcomeUnknownError(MarketoError):
    """A non-idempotent write may have reached Marketo and got no usable answer.

    The caller must look the records up before retrying. For chunked writes, `completed`
    holds the results of the chunks that did answer (input order) and `first_unknown_index`
    the index of the first input record whose outcome is unknown.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None,
        endpoint: str | None = None,
        completed: Sequence[RecordResult] = (),
        first_unknown_index: int = 0,
    ) -> None:
        super().__init__(message, code=code, endpoint=endpoint)
        self.completed = tuple(completed)
        self.first_unknown_index = first_unknown_index
