"""Built-in mapping preset `xdm_person`: the usual XDM individual-profile fields."""

from __future__ import annotations

from collections.abc import Iterable

from service.hookspecs import DEDUPE_TARGET, FieldMapping, MappingPreset, hookimpl


@hookimpl
def register_mapping_presets() -> Iterable[MappingPreset]:
    return (
        MappingPreset(
            name="xdm_person",
            description="E-mail identity as DedupeField, names, phone, company and country.",
            mappings=(
                FieldMapping("identityMap.email", DEDUPE_TARGET, "lowercase"),
                FieldMapping("person.name.firstName", "firstName", "trim"),
                FieldMapping("person.name.lastName", "lastName", "trim"),
                FieldMapping("mobilePhone.number", "mobilePhone", "phone_e164"),
                FieldMapping("workAddress.country", "country", "country_name"),
                FieldMapping("person.birthDate", "dateOfBirth", "date"),
            ),
        ),
    )
