"""Structured logs: JSON lines with the current span's ids, secrets masked."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from service.telemetry.core import Telemetry
from service.telemetry.logs import QUIET_LOGGERS, configure_logging, redact


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_json_lines_carry_the_trace_and_span_ids(telemetry: Telemetry, restore_root: None) -> None:
    out = io.StringIO()
    configure_logging("INFO", json=True, stream=out)
    log = logging.getLogger("service.test")
    log.info("outside %s", "spans")
    with telemetry.tracer.start_as_current_span("Sync") as span:
        log.warning("inside %d", 1)
    log.debug("not shown")
    try:
        raise ValueError("bad access_token=abc123secret")
    except ValueError:
        log.exception("failed with Bearer tok-en.123")

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["message"] for line in lines] == [
        "outside spans",
        "inside 1",
        "failed with Bearer ***",
    ]
    assert "trace_id" not in lines[0]
    context = span.get_span_context()
    assert lines[1]["trace_id"] == f"{context.trace_id:032x}"
    assert lines[1]["span_id"] == f"{context.span_id:016x}"
    assert lines[1]["level"] == "WARNING"
    assert lines[1]["logger"] == "service.test"
    assert lines[1]["timestamp"].endswith("+00:00")
    assert "abc123secret" not in lines[2]["exception"]
    assert "ValueError" in lines[2]["exception"]


def test_text_format_appends_the_ids(telemetry: Telemetry, restore_root: None) -> None:
    out = io.StringIO()
    configure_logging(logging.INFO, json=False, stream=out)
    with telemetry.tracer.start_as_current_span("x") as span:
        logging.getLogger("t").info("client_secret=hunter2 sent")
    text = out.getvalue()
    assert f"trace_id={span.get_span_context().trace_id:032x}" in text
    assert "hunter2" not in text


def test_text_format_masks_query_values_in_tracebacks(restore_root: None) -> None:
    out = io.StringIO()
    configure_logging(logging.INFO, json=False, stream=out)
    try:
        raise ValueError("GET http://127.0.0.1:9/rest/v1/leads.json?filterValues=jane%40x.org")
    except ValueError:
        logging.getLogger("t").exception("look-up failed")
    text = out.getvalue()
    assert "look-up failed" in text and "filterValues=***" in text
    assert "jane" not in text


def test_library_loggers_that_print_urls_are_quiet_at_debug(restore_root: None) -> None:
    out = io.StringIO()
    configure_logging(logging.DEBUG, json=True, stream=out)
    try:
        logging.getLogger("httpx").info("HTTP Request: GET http://127.0.0.1:9/?x=jane")
        logging.getLogger("uvicorn.access").info('127.0.0.1 - "GET /?x=jane HTTP/1.1" 200')
        logging.getLogger("service.test").debug("still shown")
    finally:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
    assert [json.loads(line)["message"] for line in out.getvalue().splitlines()] == ["still shown"]


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Authorization: Bearer abc.def-123", "Authorization: Bearer ***"),
        ("?access_token=abc&x=1", "?access_token=***&x=1"),
        ('{"client_secret": "s3cr3t"}', '{"client_secret": "***"}'),
        ("nothing to hide", "nothing to hide"),
        (
            "GET https://x.mktorest.com/rest/v1/leads.json?filterType=email"
            '&filterValues=a%40b.com,c%40d.com&fields=id "HTTP/1.1 200 OK"',
            "GET https://x.mktorest.com/rest/v1/leads.json?filterType=email"
            '&filterValues=***&fields=id "HTTP/1.1 200 OK"',
        ),
        ("url='http://127.0.0.1:9/a?q=jane@x.org'", "url='http://127.0.0.1:9/a?q=***'"),
        ("filterValues=jane@x.org failed", "filterValues=*** failed"),
    ],
)
def test_redact(raw: str, clean: str) -> None:
    assert redact(raw) == clean
