"""Built-in transform `split_name`: a full name to its first or last name."""

from __future__ import annotations

from collections.abc import Mapping

from service.hookspecs import Transform, TransformFunc, offer_transforms
from service.mapping.coercion import as_text

# Lower-case particles stay with the family name ("Ludwig van Beethoven" -> "van Beethoven").
_PARTICLES = frozenset(
    {"van", "von", "de", "der", "den", "da", "das", "di", "del", "della", "la", "le", "du", "dos"}
)


def split_full_name(full: str) -> tuple[str | None, str | None]:
    """`(first, last)` from "First Middle Last" or "Last, First"."""
    if "," in full:
        last, _, first = full.partition(",")
        return first.strip() or None, last.strip() or None
    words = full.split()
    if not words:
        return None, None
    if len(words) == 1:
        return words[0], None
    start = len(words) - 1
    while start > 1 and words[start - 1] in _PARTICLES:
        start -= 1
    return " ".join(words[:start]), " ".join(words[start:])


def _prepare(options: Mapping[str, str]) -> TransformFunc:
    part = options.get("part", "")
    if part not in ("first", "last"):
        raise ValueError("option 'part' must be 'first' or 'last'")
    index = 0 if part == "first" else 1

    def split_name(value: object) -> str | None:
        text = as_text(value)
        return None if text is None else split_full_name(text)[index]

    return split_name


register_transforms = offer_transforms(
    Transform(
        name="split_name",
        prepare=_prepare,
        returns=(str,),
        description="First or last name from a full name.",
        options={"part": "'first' or 'last' (required)"},
        example_options={"part": "last"},
    ),
)
