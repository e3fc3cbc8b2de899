"""`loyalty_tier` through the service's registry and mapper, with the plugin test kit."""

from __future__ import annotations

from typing import Any

import pytest

from marketo_destination_testing import AssertRejected, CheckTransform, MapProfile
from service.domain import ExclusionCode, FieldMapping
from service.mapping.mapper import MappingConfigError

TIER = [
    FieldMapping("person.email", "DedupeField", "lowercase"),
    FieldMapping("loyalty.points", "loyaltyTier", "loyalty_tier"),
]


def profile(points: object) -> dict[str, Any]:
    return {"person": {"email": "Ada@Example.com"}, "loyalty": {"points": points}}


@pytest.mark.parametrize(
    ("points", "tier"),
    [(0, "Bronze"), (999, "Bronze"), (1000, "Silver"), ("5000", "Gold"), (25_000.5, "Platinum")],
)
def test_points_become_a_tier(map_profile: MapProfile, points: object, tier: str) -> None:
    mapped = map_profile(TIER, profile(points))
    assert mapped.fields == {"email": "ada@example.com", "loyaltyTier": tier}


def test_tiers_and_base_are_options(map_profile: MapProfile) -> None:
    rows = [
        FieldMapping(
            "loyalty.points", "loyaltyTier", "loyalty_tier", {"tiers": "Gold:10", "base": "None"}
        )
    ]
    assert map_profile(rows, profile(9)).fields == {"loyaltyTier": "None"}
    assert map_profile(rows, profile(10)).fields == {"loyaltyTier": "Gold"}


def test_no_points_leaves_the_field_out(map_profile: MapProfile) -> None:
    assert map_profile(TIER, {"person": {"email": "a@b.co"}}).fields == {"email": "a@b.co"}


def test_a_balance_not_a_number_is_refused_naming_the_field(
    assert_rejected: AssertRejected,
) -> None:
    rejection = assert_rejected(
        TIER, profile("lots"), field="loyaltyTier", code=ExclusionCode.VALUE_REJECTED
    )
    assert "loyalty_tier" in rejection.reason


def test_bad_tiers_are_refused_when_the_mapping_is_built(map_profile: MapProfile) -> None:
    rows = [FieldMapping("loyalty.points", "loyaltyTier", "loyalty_tier", {"tiers": "Gold"})]
    with pytest.raises(MappingConfigError, match="loyaltyTier"):
        map_profile(rows, profile(1))


def test_the_transform_keeps_the_contract(check_transform: CheckTransform) -> None:
    check_transform("loyalty_tier")
    check_transform("loyalty_tier", options={"tiers": "A:1,B:2", "base": "Z"})
