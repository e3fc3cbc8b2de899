"""Failures-file reasons back to Marketo's codes."""

from __future__ import annotations

import pytest

from service.delivery.engine.bulk import reason_code


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("Lead not found", "1004"),
        ("Multiple lead match lookup criteria", "1007"),
        ("Partition update not allowed, record exists in a separate partition", "1010"),
        ("Access denied to partition 'EMEA'", "1008"),
        ("Invalid value for field 'leadScore' and value 'lots'", "1003"),
        ("Field 'id' is only allowed with updateOnly, not createOrUpdate", "1003"),
        ("Field 'noSuchField' not found", "1006"),
        ("Something Marketo never said", ""),
    ],
)
def test_reason_codes(message: str, code: str) -> None:
    assert reason_code(message) == code
