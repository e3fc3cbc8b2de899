"""The service's own regular expressions on caller or Marketo text answer in linear time.

Each is given long adversarial text within a CPU budget (see tests/plugins/test_conformance.py,
which does the same for the plugins' patterns); a backtracking pattern is interrupted there.
"""

from __future__ import annotations

import httpx
import pytest

from sandbox import schema
from service.api import access
from service.telemetry import logs
from service.telemetry.marketo import _annotate_body
from service.usecases import destinations
from service.usecases.mapping_rules import ARRAY_SOURCE
from tests.plugins.test_conformance import CALL_BUDGET, LONGEST, adversarial_texts, cpu_budget

# The other patterns that read caller text: linear already (anchored, no adjacent quantifiers
# over the same characters); kept so by this check.
OTHER_PATTERNS = {
    "consent path": destinations.DOTTED_PATH.match,
    "bearer header": access._BEARER.fullmatch,
    "secrets in logs": lambda text: logs.redact(text),
    "sandbox email": schema._EMAIL.match,
    "sandbox integer": schema._INTEGER.match,
    "sandbox number": schema._NUMBER.match,
}


@pytest.mark.parametrize(
    ("source", "selects_array"),
    [
        ("items[]", True),
        ("items[*]", True),
        ("items[ * ]", True),
        ("items[\t]", True),
        ("items[0].name", False),
        ("items[**]", False),
        ("items", False),
    ],
)
def test_array_sources_are_recognised(source: str, selects_array: bool) -> None:
    assert bool(ARRAY_SOURCE.search(source)) is selects_array


def test_a_source_path_of_spaces_is_checked_in_linear_time() -> None:
    source = "items[" + " " * 65_535 + "x"
    with cpu_budget(CALL_BUDGET, "ARRAY_SOURCE on a run of spaces"):
        assert ARRAY_SOURCE.search(source) is None


@pytest.mark.parametrize("name", sorted(OTHER_PATTERNS))
def test_the_other_patterns_on_caller_text_are_linear(name: str) -> None:
    check = OTHER_PATTERNS[name]
    texts = [*adversarial_texts(), "bearer" + " " * LONGEST, "client_secret=" + " " * LONGEST]
    for text in texts:
        with cpu_budget(CALL_BUDGET, f"{name} on {text[:12]!r}..."):
            check(text)


class RecordingSpan:
    def __init__(self) -> None:
        self.attributes: dict[str, object] = {}

    def set_attribute(self, key: str, value: object) -> None:
        self.attributes[key] = value

    def set_status(self, status: object, description: str | None = None) -> None:
        self.attributes["status"] = description


async def _code_of(body: bytes) -> object:
    span = RecordingSpan()
    _annotate_body(span, httpx.Response(200, content=body), "leads")  # type: ignore[arg-type]
    return span.attributes["marketo.code"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"success":false,"errors":[{"code":"1006","message":"Field not found"}]}', "1006"),
        (b'{"success": false, "errors": [ { "message": "m", "code": 601 } ]}', "601"),
        (b'{"success":false,"errors":[{"message":"no code"}],"code":"x"}', "unknown"),
        (b'{"success":false}', "unknown"),
    ],
)
async def test_the_marketo_code_is_read_from_the_first_error(body: bytes, code: str) -> None:
    assert await _code_of(body) == code


async def test_a_body_repeating_errors_is_read_in_linear_time() -> None:
    body = b'{"success":false,' + b'"errors":[{"message":"' * 10_000
    with cpu_budget(CALL_BUDGET, "the error code of a body repeating errors"):
        assert await _code_of(body) == "unknown"
