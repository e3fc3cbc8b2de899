"""Log output: one JSON object per line, carrying the trace and span ids of the current span.

``configure_logging(level, json=True)`` is called once, by ``service.__main__``. Every record gets
``timestamp`` (UTC, ISO 8601), ``level``, ``logger``, ``message`` and, inside a span,
``trace_id`` and ``span_id`` (the hex forms Jaeger shows), plus ``exception`` when there is one.
As a last line of defence, bearer tokens and ``client_secret``/``access_token`` values are
masked in every message and traceback, whatever the format, and so is every value of a URL's query
string (Marketo look-ups carry e-mails in ``filterValues``; see :func:`redact_query`).

Libraries that log request URLs, headers or bodies (:data:`QUIET_LOGGERS`: httpx logs every
request's URL at INFO, httpcore, h2 and hpack log headers at DEBUG, uvicorn's access log prints
every path with its query) are held at WARNING whatever the service's level.
"""

from __future__ import annotations

import json as _json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from opentelemetry import trace

__all__ = [
    "QUIET_LOGGERS",
    "JsonFormatter",
    "RedactingFilter",
    "configure_logging",
    "redact",
    "redact_query",
]

QUIET_LOGGERS = ("httpx", "httpcore", "h2", "hpack", "h11", "uvicorn.access")
"""Library loggers held at WARNING by :func:`configure_logging`: below it they print request
URLs (with their query strings), headers or bodies."""

MASK = "***"

_SECRETS = re.compile(
    r"(?i)(bearer\s+)[A-Za-z0-9._~+/=:-]+"
    r"|((?:access_token|client_secret|refresh_token)[\"']?\s*[=:]\s*[\"']?)[^\s&\"',}]+"
    # A look-up's values outside a URL (an error quoting the parameter alone).
    r"|(filterValues=)[^\s&\"'}]+"
)
# The query string of an absolute URL, up to whitespace, a quote, a bracket or a fragment.
_URL_QUERY = re.compile(r"(?i)(\bhttps?://[^\s?#\"'<>]*\?)([^\s#\"'<>]*)")

_PLAIN_PARAMETERS = frozenset({"filterType", "fields", "batchSize", "_method"})
"""Query parameters whose values are names or sizes, never a person's data: kept as they are."""


def redact_query(query: str) -> str:
    """``query`` (``a=1&b=2``) with every parameter's value masked but those of
    :data:`_PLAIN_PARAMETERS`; the parameter names and their order are kept."""
    parts = []
    for part in query.split("&"):
        name, equals, value = part.partition("=")
        if equals and value and name not in _PLAIN_PARAMETERS:
            value = MASK
        parts.append(f"{name}{equals}{value}")
    return "&".join(parts)


def redact(text: str) -> str:
    """``text`` with bearer tokens, ``access_token``/``client_secret`` values and the values of
    URL query strings masked (:func:`redact_query`)."""
    text = _URL_QUERY.sub(lambda m: m.group(1) + redact_query(m.group(2)), text)
    return _SECRETS.sub(lambda m: (m.group(1) or m.group(2) or m.group(3)) + MASK, text)


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's rendered message (see :func:`redact`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the current span's ``trace_id`` and ``span_id``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            entry["trace_id"] = f"{span_context.trace_id:032x}"
            entry["span_id"] = f"{span_context.span_id:016x}"
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return _json.dumps(entry, ensure_ascii=False, default=str)


class _TextFormatter(logging.Formatter):
    def formatException(self, ei: Any) -> str:
        return redact(super().formatException(ei))

    def format(self, record: logging.LogRecord) -> str:
        span_context = trace.get_current_span().get_span_context()
        record.trace_ids = (
            f" trace_id={span_context.trace_id:032x} span_id={span_context.span_id:016x}"
            if span_context.is_valid
            else ""
        )
        return super().format(record)


def configure_logging(
    level: int | str = logging.INFO, *, json: bool = True, stream: TextIO | None = None
) -> logging.Handler:
    """Sends the root logger's records to ``stream`` (default stderr) as JSON lines (or, with
    ``json=False``, readable text with the trace ids appended); replaces the root's handlers.

    The loggers of :data:`QUIET_LOGGERS` are set to WARNING (at DEBUG or INFO they would print
    look-up URLs, headers or bodies). Returns the installed handler.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(RedactingFilter())
    if json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            _TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s%(trace_ids)s")
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    return handler
