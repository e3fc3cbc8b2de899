"""Built-in transform `sha256`: the hex SHA-256 of a normalised value."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from service.hookspecs import Transform, TransformFunc, offer_transforms
from service.mapping.coercion import as_text


def _prepare(options: Mapping[str, str]) -> TransformFunc:
    normalize = options.get("normalize", "lower")
    if normalize not in ("lower", "none"):
        raise ValueError("option 'normalize' must be 'lower' or 'none'")
    lower = normalize == "lower"

    def sha256(value: object) -> str | None:
        text = as_text(value)
        if text is None:
            return None
        if lower:
            # The common matching convention: trimmed, lower-cased UTF-8.
            text = text.strip().lower()
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    return sha256


register_transforms = offer_transforms(
    Transform(
        name="sha256",
        prepare=_prepare,
        returns=(str,),
        description="Hex SHA-256 of the value, trimmed and lower-cased first by default.",
        options={"normalize": "'lower' (default: trim and lower-case) or 'none'"},
        example_options={"normalize": "lower"},
    ),
)
