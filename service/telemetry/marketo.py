"""Marketo calls in OpenTelemetry: :class:`MarketoTelemetry`, the observer given to the Marketo
client (:class:`service.marketo.observer.MarketoObserver`).

One CLIENT span per HTTP call, the child of the current (batch) span, named
``marketo <METHOD> <endpoint>``, with what the client tells about the call (its name, attempt,
records, limiter wait) and what the request and the answer's envelope show; the client's attempts
and retries are counted as ``marketo.calls``, ``marketo.call.duration`` and ``marketo.retries``.
Headers (the bearer token), query string values, bodies and exception messages are never
recorded.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator

import httpx
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from service.marketo.observer import NO_OBSERVER, Call, Exchange, MarketoObserver, endpoint_of
from service.telemetry.core import Telemetry
from service.telemetry.logs import redact_query

__all__ = ["MarketoTelemetry", "marketo_observer", "redact_url"]

_SUCCESS_FALSE = re.compile(rb'"success"\s*:\s*false')
# The code is looked for in the first `errors` array only: a lazy scan from every `"errors"`
# to the next `]` would take quadratic time on a body repeating it.
_ERRORS = re.compile(rb'"errors"\s*:\s*\[\s*\{')
_CODE = re.compile(rb'"code"\s*:\s*"?(\w+)')
_SKIPPED = re.compile(rb'"status"\s*:\s*"skipped"')


def redact_url(url: httpx.URL) -> str:
    """``url`` without fragment or user info, its query string's values masked but the
    parameter names kept (:func:`service.telemetry.logs.redact_query`): query strings carry
    profile attribute values (``filterValues``) and, in Identity calls, credentials."""
    port = f":{url.port}" if url.port is not None else ""
    query = url.query.decode("ascii", "replace")
    return f"{url.scheme}://{url.host}{port}{url.path}" + (
        f"?{redact_query(query)}" if query else ""
    )


def marketo_observer(telemetry: Telemetry | None) -> MarketoObserver:
    """The observer for Marketo clients: a :class:`MarketoTelemetry` over ``telemetry``, or
    :data:`~service.marketo.observer.NO_OBSERVER` without telemetry or when it is disabled."""
    if telemetry is None or not telemetry.enabled:
        return NO_OBSERVER
    return MarketoTelemetry(telemetry)


class MarketoTelemetry(MarketoObserver):
    """Records what the Marketo client reports in ``telemetry``'s spans and metrics.

    Span attributes: ``marketo.endpoint``, ``http.request.method``, ``http.response.status_code``,
    ``url.full`` (redacted by :func:`redact_url`), ``server.address``, ``server.port``,
    ``marketo.code`` (the first error code when the body says ``"success": false``; ``ok``
    otherwise), ``marketo.records``, ``marketo.records.skipped``, ``marketo.attempt``,
    ``marketo.limiter.wait`` (also a ``marketo.limiter.wait`` measurement) and ``error.type``.
    Each request's duration also goes to ``http.client.request.duration`` (method, host, status
    code, error type).
    """

    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry
        self._tracer = telemetry.tracer

    @contextlib.contextmanager
    def exchange(self, call: Call) -> Iterator[Exchange]:
        """A CLIENT span around sending ``call.request``; a call the client does not name is
        named after its path (:func:`endpoint_of`)."""
        request = call.request
        name = call.endpoint or endpoint_of(request.url.path)
        attrs: dict[str, AttributeValue] = {
            "marketo.endpoint": name,
            "http.request.method": request.method,
            "url.full": redact_url(request.url),
            "server.address": request.url.host,
            "marketo.attempt": call.attempt,
        }
        if request.url.port is not None:
            attrs["server.port"] = request.url.port
        if call.records is not None:
            attrs["marketo.records"] = call.records
        if call.limiter_wait is not None:
            attrs["marketo.limiter.wait"] = call.limiter_wait
            self._telemetry.record_limiter_wait(call.limiter_wait, instance=request.url.host)
        with self._tracer.start_as_current_span(
            f"marketo {request.method} {name}",
            kind=SpanKind.CLIENT,
            attributes=attrs,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            exchange = _TracedExchange(span, name)
            started = time.perf_counter()
            error_type: str | None = None
            try:
                yield exchange
            except Exception as error:
                # The exception's type only: messages may quote the URL.
                error_type = type(error).__qualname__
                span.set_attribute("error.type", error_type)
                span.set_status(Status(StatusCode.ERROR, error_type))
                raise
            finally:
                status = exchange.status_code
                if error_type is None and status is not None and status >= 400:
                    error_type = str(status)
                self._telemetry.record_http_client(
                    time.perf_counter() - started,
                    method=request.method,
                    server_address=request.url.host,
                    status_code=status,
                    error_type=error_type,
                )

    def attempted(self, *, endpoint: str, method: str, code: str, seconds: float) -> None:
        """Counts the attempt in ``marketo.calls`` and ``marketo.call.duration``."""
        self._telemetry.record_marketo_call(
            endpoint=endpoint, method=method, code=code, seconds=seconds
        )

    def retrying(self, *, endpoint: str, action: str) -> None:
        """Counts the retry in ``marketo.retries``."""
        self._telemetry.record_marketo_retry(endpoint=endpoint, action=action)


class _TracedExchange(Exchange):
    def __init__(self, span: Span, endpoint: str) -> None:
        self._span = span
        self._endpoint = endpoint
        self.status_code: int | None = None

    def answered(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        span = self._span
        span.set_attribute("http.response.status_code", response.status_code)
        if response.status_code >= 400:
            span.set_attribute("error.type", str(response.status_code))
            span.set_status(Status(StatusCode.ERROR, f"HTTP {response.status_code}"))
        elif "json" in response.headers.get("content-type", ""):
            _annotate_body(span, response, self._endpoint)


def _error_code(body: bytes) -> str:
    """The code of the first error of a Marketo envelope, or `unknown`."""
    errors = _ERRORS.search(body)
    if errors is None:
        return "unknown"
    end = body.find(b"]", errors.end())
    match = _CODE.search(body, errors.end(), end if end >= 0 else len(body))
    return match.group(1).decode("ascii", "replace") if match else "unknown"


def _annotate_body(span: Span, response: httpx.Response, endpoint: str) -> None:
    # The client has read the body. Only the envelope's code and the count of skipped records
    # are taken from it, never a value.
    body = response.content
    if _SUCCESS_FALSE.search(body):
        code = _error_code(body)
        span.set_attribute("marketo.code", code)
        span.set_status(Status(StatusCode.ERROR, f"Marketo {code}"))
        return
    if endpoint != "identity":
        span.set_attribute("marketo.code", "ok")
        skipped = len(_SKIPPED.findall(body))
        if skipped:
            span.set_attribute("marketo.records.skipped", skipped)
