"""Log output: one JSON object per line, carrying the trace and span ids of the current span.

``configure_logging(level, json=True)`` is called once, by ``service.__main__``. Every record gets
``timestamp`` (UTC, ISO 8601), ``level``, ``logger``, ``message`` and, inside a span,
``trace_id`` and ``span_id`` (the hex forms Jaeger shows), plus ``exception`` when there is one.
As a last line of defence, bearer tokens and ``client_secret``/``access_token`` values are
masked in every message, whatever the format.
"""

from __future__ import annotations

import json as _json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import TextIO

from opentelemetry import trace

__all__ = ["JsonFormatter", "RedactingFilter", "configure_logging", "redact"]

_SECRETS = re.compile(
    r"(?i)(bearer\s+)[A-Za-z0-9._~+/=:-]+"
    r"|((?:access_token|client_secret|refresh_token)[\"']?\s*[=:]\s*[\"']?)[^\s&\"',}]+"
)


def redact(text: str) -> str:
    """``text`` with bearer tokens and ``access_token``/``client_secret`` values masked."""
    return _SECRETS.sub(lambda m: (m.group(1) or m.group(2)) + "***", text)


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

    Returns the installed handler.
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
    return handler
