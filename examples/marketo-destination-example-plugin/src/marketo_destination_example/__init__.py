"""Example Marketo destination plugin: `loyalty_tier` turns loyalty points into a tier name."""

from __future__ import annotations

from collections.abc import Mapping

from service.hookspecs import Transform, TransformError, TransformFunc, offer_transforms

DEFAULT_THRESHOLDS = "Silver:1000,Gold:5000,Platinum:20000"


def parse_thresholds(spec: str) -> list[tuple[int, str]]:
    """`"Silver:1000,Gold:5000"` -> `[(5000, "Gold"), (1000, "Silver")]`, highest first."""
    tiers = []
    for item in spec.split(","):
        name, _, points = item.partition(":")
        if not name.strip() or not points.strip().isdigit():
            raise ValueError(f"bad tier {item!r}; expected Name:points")
        tiers.append((int(points), name.strip()))
    return sorted(tiers, reverse=True)


def _prepare(options: Mapping[str, str]) -> TransformFunc:
    tiers = parse_thresholds(options.get("tiers", DEFAULT_THRESHOLDS))
    base = options.get("base", "Bronze")

    def loyalty_tier(value: object) -> str | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise TransformError(f"{type(value).__name__} is not a points balance")
        try:
            points = float(value)
        except ValueError:
            raise TransformError(f"{value!r} is not a points balance") from None
        if points != points:  # NaN compares unequal to itself
            raise TransformError("NaN is not a points balance")
        for threshold, name in tiers:
            if points >= threshold:
                return name
        return base

    return loyalty_tier


register_transforms = offer_transforms(
    Transform(
        name="loyalty_tier",
        prepare=_prepare,
        returns=(str,),
        description="Loyalty points to a tier name.",
        options={
            "tiers": f"Name:points pairs, comma-separated (default {DEFAULT_THRESHOLDS})",
            "base": "tier below the lowest threshold (default Bronze)",
        },
        example_options={"tiers": "Silver:10,Gold:100"},
    ),
)
