"""Built-in transforms `date` and `datetime`: to Marketo's `YYYY-MM-DD` and ISO-8601 UTC forms."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, tzinfo
from functools import partial
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from service.hookspecs import Transform, TransformError, TransformFunc, offer_transforms
from service.mapping.coercion import CoercionError, format_datetime, parse_datetime

_OPTIONS = {
    "input_format": "strptime format of the source text (default: ISO-8601)",
    "timezone": "IANA zone of values without an offset (default UTC)",
}


def _zone(options: Mapping[str, str]) -> tzinfo:
    name = options.get("timezone", "UTC")
    if name == "UTC":
        return UTC
    try:
        # Loaded once here, when the mapping is built, never per value.
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {name!r}") from None


_SAMPLE = datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC)
"""A date-time every usable `input_format` writes (strftime) and reads back (strptime)."""


def _input_format(options: Mapping[str, str]) -> str | None:
    """The `input_format` option once strptime has read a date-time written in it: a format it
    cannot use would otherwise refuse every value, profile after profile."""
    pattern = options.get("input_format")
    if pattern is None:
        return None
    try:
        datetime.strptime(_SAMPLE.strftime(pattern), pattern)
    except re.error:  # strptime compiles the format; a directive given twice fails there
        problem = "a directive appears twice"
    except ValueError as exc:
        problem = str(exc)
    else:
        return pattern
    raise ValueError(f"input_format {pattern!r} cannot be read by strptime: {problem}")


def _parser(options: Mapping[str, str]) -> Callable[[object], datetime | None]:
    return partial(parse_datetime, pattern=_input_format(options), zone=_zone(options))


def _prepare_date(options: Mapping[str, str]) -> TransformFunc:
    parse = _parser(options)
    iso_input = "input_format" not in options

    def to_date(value: object) -> str | None:
        if iso_input and isinstance(value, str) and len(value) == 10:
            # Fast path for the common YYYY-MM-DD input: no time, so no zone to apply.
            try:
                return date.fromisoformat(value).isoformat()
            except ValueError:
                pass
        parsed = parse(value)
        return None if parsed is None else parsed.date().isoformat()

    return to_date


def _prepare_datetime(options: Mapping[str, str]) -> TransformFunc:
    parse = _parser(options)

    def to_datetime(value: object) -> str | None:
        parsed = parse(value)
        try:
            return None if parsed is None else format_datetime(parsed)
        except CoercionError as exc:
            raise TransformError(str(exc)) from None

    return to_datetime


register_transforms = offer_transforms(
    Transform(
        name="date",
        prepare=_prepare_date,
        returns=(str,),
        description="A date as YYYY-MM-DD.",
        options=_OPTIONS,
        example_options={"input_format": "%d/%m/%Y"},
    ),
    Transform(
        name="datetime",
        prepare=_prepare_datetime,
        returns=(str,),
        description="A date-time as ISO-8601 in UTC, e.g. 2024-05-01T12:00:00Z.",
        options=_OPTIONS,
        example_options={"timezone": "Europe/Stockholm"},
    ),
)
