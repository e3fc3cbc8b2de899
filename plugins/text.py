"""Built-in text transforms: trim, lowercase, uppercase, default, concat."""

from __future__ import annotations

from collections.abc import Mapping

from service.hookspecs import Transform, TransformError, TransformFunc, offer_transforms
from service.mapping.coercion import as_text

_SCALARS: tuple[type, ...] = (str, int, float, bool)


def trim(value: object) -> str | None:
    text = as_text(value)
    return None if text is None else text.strip()


def lowercase(value: object) -> str | None:
    text = as_text(value)
    return None if text is None else text.lower()


def uppercase(value: object) -> str | None:
    text = as_text(value)
    return None if text is None else text.upper()


def _prepare_default(options: Mapping[str, str]) -> TransformFunc:
    if "value" not in options:
        raise ValueError("option 'value' is required")
    fallback = options["value"]

    def default(value: object) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return fallback
        if isinstance(value, list | tuple | dict):
            raise TransformError("arrays and objects cannot be mapped")
        return value

    return default


def _prepare_concat(options: Mapping[str, str]) -> TransformFunc:
    separator = options.get("separator", " ")

    def concat(values: object) -> str | None:
        if not isinstance(values, tuple):
            values = (values,)
        parts = []
        for value in values:
            text = value if type(value) is str else as_text(value)
            if text:
                text = text.strip()
                if text:
                    parts.append(text)
        return separator.join(parts) if parts else None

    return concat


register_transforms = offer_transforms(
    Transform.from_function(
        "trim", trim, returns=(str,), description="Strip leading and trailing whitespace."
    ),
    Transform.from_function("lowercase", lowercase, returns=(str,), description="Lower-case."),
    Transform.from_function("uppercase", uppercase, returns=(str,), description="Upper-case."),
    Transform(
        name="default",
        prepare=_prepare_default,
        returns=_SCALARS,
        description="Use `value` when the source is missing or blank.",
        options={"value": "the value to use (required)"},
        example_options={"value": "unknown"},
    ),
    Transform(
        name="concat",
        prepare=_prepare_concat,
        returns=(str,),
        description="Join the non-blank values of several comma-separated source paths.",
        options={"separator": "text between values (default: one space)"},
        example_options={"separator": " "},
        multi_source=True,
    ),
)
