"""Expected results of the built-in transforms (the conformance suite checks their contract)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import pytest

from service.hookspecs import TransformError
from service.mapping.registry import PluginRegistry


def run(registry: PluginRegistry, name: str, item: object, options: Mapping[str, str]) -> object:
    return registry.transform(name).item.prepare(options)(item)


@pytest.mark.parametrize(
    ("name", "value", "options", "expected"),
    [
        ("trim", "  a b ", {}, "a b"),
        ("lowercase", "ÅSA@X.SE", {}, "åsa@x.se"),
        ("uppercase", "se", {}, "SE"),
        ("default", None, {"value": "n/a"}, "n/a"),
        ("default", "  ", {"value": "n/a"}, "n/a"),
        ("default", 3.0, {"value": "n/a"}, 3.0),
        ("concat", ("Ada", None, " Lovelace "), {"separator": " "}, "Ada Lovelace"),
        ("concat", (None, ""), {}, None),
        ("split_name", "Ada King Lovelace", {"part": "first"}, "Ada King"),
        ("split_name", "Ada King Lovelace", {"part": "last"}, "Lovelace"),
        ("split_name", "Ludwig van Beethoven", {"part": "last"}, "van Beethoven"),
        ("split_name", "Lovelace, Ada", {"part": "first"}, "Ada"),
        ("split_name", "Cher", {"part": "last"}, None),
        ("phone_e164", "(415) 555-0123", {}, "+14155550123"),
        ("phone_e164", "1-415-555-0123", {}, "+14155550123"),
        ("phone_e164", "070-123 45 67", {"default_country": "se"}, "+46701234567"),
        ("phone_e164", "+44 (0)20 7946 0958", {}, "+4402079460958"),
        ("phone_e164", "0044 20 7946 0958 ext. 12", {"default_country": "DE"}, "+442079460958"),
        ("phone_e164", "06 1234 5678", {"default_country": "IT"}, "+390612345678"),
        ("date", "2024-05-01T23:30:00-05:00", {}, "2024-05-01"),
        ("date", "01/05/2024", {"input_format": "%d/%m/%Y"}, "2024-05-01"),
        ("datetime", "2024-05-01T14:00:00+02:00", {}, "2024-05-01T12:00:00Z"),
        ("datetime", "2024-01-15 09:00", {"timezone": "Europe/Stockholm"}, "2024-01-15T08:00:00Z"),
        ("datetime", "2024-05-01", {}, "2024-05-01T00:00:00Z"),
        ("boolean", "Yes", {}, True),
        ("boolean", "off", {}, False),
        ("number", "-3.5e2", {}, -350),
        ("number", "0.25", {}, 0.25),
        ("integer", "42", {}, 42),
        ("country_code", "Sverige", {}, "SE"),
        ("country_code", "united states of america", {}, "US"),
        ("country_code", "C\u00f4te d\u2019Ivoire", {}, "CI"),
        ("country_code", "Bosnia & Herzegovina", {}, "BA"),
        ("country_code", "gb", {}, "GB"),
        ("country_name", "de", {}, "Germany"),
        ("country_name", "UK", {}, "United Kingdom"),
        ("sha256", " Ada@Example.com ", {}, hashlib.sha256(b"ada@example.com").hexdigest()),
        ("sha256", "Ada", {"normalize": "none"}, hashlib.sha256(b"Ada").hexdigest()),
    ],
)
def test_builtin_results(
    registry: PluginRegistry, name: str, value: object, options: dict[str, str], expected: object
) -> None:
    result = run(registry, name, value, options)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("name", "value", "options"),
    [
        ("phone_e164", "call me", {}),
        ("phone_e164", "555-0123", {}),
        ("phone_e164", 4155550123.0, {}),
        ("date", "yesterday", {}),
        ("datetime", "31/12/2024", {}),
        ("boolean", "maybe", {}),
        ("integer", "1.5", {}),
        ("country_code", "Atlantis", {}),
        ("trim", ["a"], {}),
    ],
)
def test_builtin_refusals(
    registry: PluginRegistry, name: str, value: object, options: dict[str, str]
) -> None:
    with pytest.raises(TransformError):
        run(registry, name, value, options)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("default", {}),
        ("split_name", {"part": "middle"}),
        ("phone_e164", {"default_country": "XX"}),
        ("datetime", {"timezone": "Mars/Olympus"}),
        ("sha256", {"normalize": "upper"}),
        ("date", {"input_format": "%Q-%m"}),
        ("datetime", {"input_format": "%d/%m/%d"}),
        ("date", {"input_format": "%Y-%m-%"}),
        ("date", {"input_format": "%G-%m"}),
    ],
)
def test_bad_options_are_refused_when_prepared(
    registry: PluginRegistry, name: str, options: dict[str, str]
) -> None:
    with pytest.raises(ValueError):
        registry.transform(name).item.prepare(options)


@pytest.mark.parametrize(
    ("input_format", "problem"),
    [
        ("%Q-%m", "input_format '%Q-%m' cannot be read by strptime: 'Q' is a bad directive"),
        (
            "%d/%m/%d",
            "input_format '%d/%m/%d' cannot be read by strptime: a directive appears twice",
        ),
    ],
)
@pytest.mark.parametrize("name", ["date", "datetime"])
def test_an_input_format_strptime_cannot_read_is_named_when_prepared(
    registry: PluginRegistry, name: str, input_format: str, problem: str
) -> None:
    with pytest.raises(ValueError) as info:
        registry.transform(name).item.prepare({"input_format": input_format})
    assert str(info.value).startswith(problem)


@pytest.mark.parametrize("input_format", ["%d/%m/%Y", "%Y-%m-%dT%H:%M:%S%z", "%c", "%G-%V-%u %Z"])
def test_an_input_format_strptime_reads_is_taken(
    registry: PluginRegistry, input_format: str
) -> None:
    registry.transform("datetime").item.prepare({"input_format": input_format})
