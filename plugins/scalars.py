"""Built-in transforms `boolean`, `number` and `integer`: typed values from text."""

from __future__ import annotations

from service.hookspecs import Transform, TransformError, offer_transforms
from service.mapping.coercion import parse_bool, parse_number


def to_boolean(value: object) -> bool | None:
    return parse_bool(value)


def to_number(value: object) -> int | float | None:
    return parse_number(value)


def to_integer(value: object) -> int | None:
    number = parse_number(value)
    if number is not None and not isinstance(number, int):
        raise TransformError(f"{value!r} is not a whole number")
    return number


register_transforms = offer_transforms(
    Transform.from_function(
        "boolean",
        to_boolean,
        returns=(bool,),
        description="true/false/yes/no/y/n/t/f/on/off/1/0 to a boolean.",
    ),
    Transform.from_function(
        "number", to_number, returns=(int, float), description="A decimal number from text."
    ),
    Transform.from_function(
        "integer", to_integer, returns=(int,), description="A whole number from text."
    ),
)
