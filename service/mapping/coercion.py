"""Coercion of mapped values to Marketo lead field data types, and the parsers transforms share.

Pure functions, no I/O. Values come from a JSON profile (protobuf `Struct` makes every number a
float), or from a transform. A blank string means "no value" for every type but string and text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, tzinfo
from urllib.parse import urlsplit

from service.hookspecs import TransformError

__all__ = [
    "DEFAULT_LENGTHS",
    "SUPPORTED_DATA_TYPES",
    "Coercer",
    "CoercionError",
    "as_text",
    "coercer_for",
    "format_datetime",
    "is_phone_number",
    "parse_bool",
    "parse_date",
    "parse_datetime",
    "parse_number",
    "strip_extension",
]

Coercer = Callable[[object], object]


class CoercionError(TransformError):
    """A value that does not fit the target field's data type."""


DEFAULT_LENGTHS: dict[str, int] = {
    "string": 255,
    "email": 255,
    "phone": 255,
    "url": 255,
    # Marketo text areas hold up to 64 KiB; describe's `length` wins when present.
    "text": 65535,
}

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
# Every pattern here runs in time linear in the text: anchored (fullmatch), and no two
# quantifiers next to each other can match the same character. Checked by
# tests/plugins/test_conformance.py on adversarial text of the longest accepted length.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+")
_PHONE_CHARS = re.compile(r"\+?[0-9 ().\-/]+")
_PHONE_EXTENSIONS = ("x", "ext", "ext.")
_ASCII_DIGITS = "0123456789"
_DIGIT = re.compile(r"[0-9]")
_TRUE = frozenset({"true", "t", "yes", "y", "1", "on"})
_FALSE = frozenset({"false", "f", "no", "n", "0", "off"})


def strip_extension(text: str, markers: tuple[str, ...]) -> str:
    """`text` without a trailing extension: one of `markers` (any case) then ASCII digits, with
    optional whitespace around the marker; `text` unchanged when it has none.

    Plain string code rather than a `\\s*(x|ext)\\s*[0-9]+$` search, which backtracks over every
    run of spaces and takes quadratic time.
    """
    head = text.rstrip(_ASCII_DIGITS)
    if len(head) == len(text):
        return text
    head = head.rstrip()
    for marker in markers:
        if len(head) >= len(marker) and head[-len(marker) :].lower() == marker:
            return head[: -len(marker)].rstrip()
    return text


def is_phone_number(text: str) -> bool:
    """Whether `text` is digits and `+ ().-/` separators, with at least one digit and an optional
    `x`/`ext` extension."""
    if not _PHONE_CHARS.fullmatch(text):
        text = strip_extension(text, _PHONE_EXTENSIONS)
        if not _PHONE_CHARS.fullmatch(text):
            return False
    return _DIGIT.search(text) is not None


def _kind(value: object) -> str:
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _described(value: object) -> str:
    """What a refused value is, never what it holds: refusals reach outcomes and logs."""
    if isinstance(value, str):
        return f"a text of {len(value):,} characters"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a value of type {type(value).__name__}"


def as_text(value: object) -> str | None:
    """A scalar as text (`true`/`false` for booleans, `42` for an integral float)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(parse_number(value))
    raise CoercionError(f"{_kind(value)} is not text")


def parse_bool(value: object) -> bool | None:
    """`True`/`False` from a bool, 0/1, or true/false/yes/no/y/n/t/f/on/off (any case)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if not text:
            return None
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise CoercionError(f"{_described(value)} is not a boolean")


def parse_number(value: object) -> int | float | None:
    """A finite number from an int, float or decimal string; integral values become `int`."""
    if value is None or isinstance(value, bool):
        if value is None:
            return None
        raise CoercionError("a boolean is not a number")
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if not _NUMBER.fullmatch(text):
            raise CoercionError(f"{_described(value)} is not a number")
        try:
            number: int | float = int(text) if text.lstrip("+-").isdigit() else float(text)
        except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
            raise CoercionError(f"a number of {len(text):,} digits is too long") from None
    elif isinstance(value, int | float):
        number = value
    else:
        raise CoercionError(f"{_kind(value)} is not a number")
    if isinstance(number, float):
        if not math.isfinite(number):
            raise CoercionError("the number is not finite")
        if number.is_integer() and abs(number) < 2**53:
            return int(number)
    return number


def parse_datetime(
    value: object, *, pattern: str | None = None, zone: tzinfo = UTC
) -> datetime | None:
    """An aware datetime from text (ISO-8601, or the strptime `pattern`) or a datetime/date; a
    value without an offset is taken to be in `zone`."""
    if value is None:
        return None
    if isinstance(value, datetime):
        result = value
    elif isinstance(value, date):
        result = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            result = datetime.strptime(text, pattern) if pattern else datetime.fromisoformat(text)
        except ValueError:
            expected = f"a {pattern!r}" if pattern else "an ISO-8601"
            raise CoercionError(f"{_described(value)} is not {expected} date-time") from None
    else:
        raise CoercionError(f"{_kind(value)} is not a date-time")
    return result if result.tzinfo is not None else result.replace(tzinfo=zone)


def format_datetime(value: datetime) -> str:
    """Marketo's Lead DB form: ISO-8601 in UTC with `Z`, whole seconds."""
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise CoercionError("the date-time is out of range") from None
    return utc.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_date(value: object) -> date | None:
    """A calendar date from `YYYY-MM-DD` (optionally followed by a time) or a date/datetime."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        # The date is taken as written: a time part or zone does not move it to another day.
        if len(text) == 10 or (len(text) > 10 and text[10] in "T "):
            try:
                return date.fromisoformat(text[:10])
            except ValueError:
                pass
        raise CoercionError(f"{_described(value)} is not a YYYY-MM-DD date")
    raise CoercionError(f"{_kind(value)} is not a date")


def _text(length: int) -> Coercer:
    def coerce(value: object) -> object:
        text = value if isinstance(value, str) else as_text(value)
        if text is None:
            return None
        if len(text) > length:
            raise CoercionError(f"text of {len(text)} characters exceeds the limit of {length}")
        return text

    return coerce


def _trimmed(value: object, what: str, length: int, expected: str) -> str | None:
    """The string `value` without surrounding whitespace, None when blank; refuses a value that is
    not a string (`expected` says what it should be) or longer than `length` characters."""
    if not isinstance(value, str):
        raise CoercionError(f"{_kind(value)} is not {expected}")
    text = value.strip()
    if not text:
        return None
    if len(text) > length:
        raise CoercionError(f"{what} of {len(text)} characters exceeds the limit of {length}")
    return text


def _checked_text(check: Callable[[str], object], what: str, length: int) -> Coercer:
    def coerce(value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool) and what == "phone number":
            value = str(value)
        text = _trimmed(value, what, length, f"a valid {what}")
        if text is None:
            return None
        if not check(text):
            raise CoercionError(f"{_described(value)} is not a valid {what}")
        return text

    return coerce


def _url(length: int) -> Coercer:
    def coerce(value: object) -> object:
        text = _trimmed(value, "URL", length, "a URL")
        if text is None:
            return None
        try:
            parts = urlsplit(text)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise CoercionError(f"{_described(value)} is not an http(s) URL")
        if any(c.isspace() for c in text):
            raise CoercionError(f"{_described(value)} is not an http(s) URL")
        return text

    return coerce


def _integer(value: object) -> object:
    # Fast path: Struct numbers arrive as floats, most of them whole.
    if type(value) is float and value.is_integer() and INT32_MIN <= value <= INT32_MAX:
        return int(value)
    number = parse_number(value)
    if number is None:
        return None
    if not isinstance(number, int):
        raise CoercionError("the number is not a whole number")
    if not INT32_MIN <= number <= INT32_MAX:
        raise CoercionError("the number is outside the 32-bit integer range")
    return number


def _float(value: object) -> object:
    if type(value) is float and math.isfinite(value):
        return value
    number = parse_number(value)
    return None if number is None else float(number)


def _percent(value: object) -> object:
    # "42%" is common in source data; Marketo itself refuses the percent sign.
    if isinstance(value, str) and value.strip().endswith("%"):
        value = value.strip()[:-1]
    return parse_number(value)


def _boolean(value: object) -> object:
    return parse_bool(value)


def _date(value: object) -> object:
    if type(value) is str and len(value) == 10:
        try:
            return date.fromisoformat(value).isoformat()
        except ValueError:
            pass
    parsed = parse_date(value)
    return None if parsed is None else parsed.isoformat()


def _datetime(value: object) -> object:
    parsed = parse_datetime(value)
    return None if parsed is None else format_datetime(parsed)


SUPPORTED_DATA_TYPES = frozenset(
    {
        "string",
        "text",
        "email",
        "phone",
        "url",
        "integer",
        "float",
        "currency",
        "percent",
        "boolean",
        "date",
        "datetime",
    }
)


def coercer_for(data_type: str, length: int | None = None) -> Coercer:
    """The coercer for a Marketo data type; raises `ValueError` for an unsupported type.

    A coercer returns the value to send, `None` for "no value", or raises `CoercionError`.
    """
    limit = length if length else DEFAULT_LENGTHS.get(data_type, 255)
    if data_type in ("string", "text"):
        return _text(limit)
    if data_type == "email":
        return _checked_text(_EMAIL.fullmatch, "email address", limit)
    if data_type == "phone":
        return _checked_text(is_phone_number, "phone number", limit)
    if data_type == "url":
        return _url(limit)
    simple: dict[str, Coercer] = {
        "integer": _integer,
        "float": _float,
        "currency": _float,
        "percent": _percent,
        "boolean": _boolean,
        "date": _date,
        "datetime": _datetime,
    }
    if data_type in simple:
        return simple[data_type]
    raise ValueError(f"Marketo data type {data_type!r} cannot be written by a mapping")
