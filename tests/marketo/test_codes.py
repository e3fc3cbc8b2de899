"""The classification table: every documented code has a rule; unknown codes are transient."""

from __future__ import annotations

import httpx
import pytest

from service.marketo.codes import (
    CODES,
    Action,
    classify_code,
    classify_exception,
    classify_response_code,
    classify_status,
)


@pytest.mark.parametrize("code", ["601", "602", 601])
def test_token_codes_refresh_and_are_not_counted(code: str | int) -> None:
    rule = classify_code(code)
    assert rule.action is Action.REFRESH
    assert not rule.counted


@pytest.mark.parametrize("code", ["606", "615"])
def test_limit_codes_are_throttled(code: str) -> None:
    assert classify_code(code).action is Action.THROTTLED
    assert not classify_code(code).may_have_applied


def test_daily_quota_code() -> None:
    assert classify_code("607").action is Action.QUOTA


@pytest.mark.parametrize("code", ["604", "608", "611", "713", "719"])
def test_transient_codes(code: str) -> None:
    assert classify_code(code).action is Action.TRANSIENT


@pytest.mark.parametrize("code", ["604", "611", "713", "719"])
def test_codes_after_which_a_write_may_have_happened(code: str) -> None:
    assert classify_code(code).may_have_applied


def test_608_means_not_processed() -> None:
    assert not classify_code("608").may_have_applied


@pytest.mark.parametrize("code", ["603", "605", "609", "610", "612", "701", "709", "710", "711"])
def test_rejected_codes(code: str) -> None:
    assert classify_code(code).action is Action.REJECTED


def test_uncounted_codes_match_the_error_code_page() -> None:
    uncounted = {code for code, rule in CODES.items() if not rule.counted}
    assert {"601", "602", "604", "605", "608", "611"} <= uncounted
    assert uncounted <= {"600", "601", "602", "604", "605", "608", "611"}


@pytest.mark.parametrize("code", ["1003", "1004", "1005", "1007", "1008", "1010", "1015"])
def test_record_level_reasons_are_results(code: str) -> None:
    assert classify_code(code).action is Action.PER_RECORD
    assert classify_response_code(code).action is Action.REJECTED


@pytest.mark.parametrize("code", ["1006", "1011"])
def test_a_field_the_schema_lacks_is_a_record_reason_or_a_configuration_error(code: str) -> None:
    assert classify_code(code).action is Action.PER_RECORD
    assert classify_response_code(code).action is Action.CONFIGURATION


@pytest.mark.parametrize("status", [403, 404])
def test_forbidden_and_not_found_are_configuration_errors(status: int) -> None:
    assert classify_status(status).action is Action.CONFIGURATION


@pytest.mark.parametrize("code", ["1016", "1019", "1029"])
def test_busy_import_queue_is_retried_later(code: str) -> None:
    assert classify_response_code(code).action is Action.THROTTLED


@pytest.mark.parametrize("code", ["999", "620", "1999", "abc", None, ""])
def test_unknown_codes_are_transient_never_dropped(code: str | None) -> None:
    rule = classify_code(code)
    assert rule.action is Action.TRANSIENT
    assert rule.may_have_applied


def test_every_6xx_and_7xx_in_the_table_is_classified_as_a_response_code() -> None:
    for code, rule in CODES.items():
        if code.startswith(("6", "7")):
            assert rule.action is not Action.PER_RECORD, code


@pytest.mark.parametrize(
    ("status", "action"),
    [
        (401, Action.REFRESH),
        (413, Action.REJECTED),
        (414, Action.REJECTED),
        (429, Action.THROTTLED),
        (400, Action.REJECTED),
        (500, Action.TRANSIENT),
        (502, Action.TRANSIENT),
        (503, Action.TRANSIENT),
    ],
)
def test_http_statuses(status: int, action: Action) -> None:
    assert classify_status(status).action is action


def test_5xx_may_have_been_applied() -> None:
    assert classify_status(502).may_have_applied


def test_transport_errors_distinguish_never_sent_from_maybe_sent() -> None:
    request = httpx.Request("GET", "https://x")
    assert not classify_exception(httpx.ConnectError("no", request=request)).may_have_applied
    assert not classify_exception(httpx.ConnectTimeout("no", request=request)).may_have_applied
    assert classify_exception(httpx.ReadTimeout("late", request=request)).may_have_applied
    assert classify_exception(
        httpx.RemoteProtocolError("dropped", request=request)
    ).may_have_applied
    assert classify_exception(RuntimeError("?")).action is Action.TRANSIENT


@pytest.mark.parametrize(
    ("message", "action"),
    [
        ("Too many jobs (10) in queue", Action.THROTTLED),
        ("Too many jobs in queue", Action.THROTTLED),
        ("Job already queued", Action.REJECTED),
        ("Export daily quota 500MB exceeded", Action.DAILY_LIMIT),
        ("Export daily quota exceeded", Action.DAILY_LIMIT),
        ("EXPORT DAILY QUOTA EXCEEDED", Action.DAILY_LIMIT),
        ("", Action.THROTTLED),
    ],
)
def test_1029_is_told_apart_by_its_reason(message: str, action: Action) -> None:
    assert classify_response_code("1029", message).action is action
    assert classify_response_code(1029, message).action is action


def test_1029_reasons_only_apply_to_1029() -> None:
    assert classify_response_code("1016", "Job already queued").action is Action.THROTTLED
    assert classify_response_code("610", "Export daily quota exceeded").action is Action.REJECTED


def test_http_500_is_in_the_table() -> None:
    rule = classify_status(500)
    assert rule.description == "Internal Server Error"
    assert rule.action is Action.TRANSIENT
    assert rule.may_have_applied
