"""The Mapper: paths, transforms, data-type coercion, isolation of bad profiles."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pytest

from service.domain import (
    DEDUPE_TARGET,
    ExclusionCode,
    FieldMapping,
    MappedProfile,
    MappingRejectedError,
    ProfileMapper,
)
from service.hookspecs import Transform, hookimpl
from service.mapping.mapper import (
    MAX_SOURCE_CHARS,
    MAX_SOURCE_ITEMS,
    MAX_TEXT_CHARS,
    FieldType,
    Mapper,
    MappingConfigError,
    reads_identities,
    validate_mapping_types,
)
from service.mapping.registry import PluginRegistry

FIELDS = [
    FieldType("email", "email", 255),
    FieldType("firstName", "string", 255),
    FieldType("lastName", "string", 255),
    FieldType("title", "string", 5),
    FieldType("notes", "text"),
    FieldType("mobilePhone", "phone"),
    FieldType("website", "url"),
    FieldType("numberOfEmployees", "integer"),
    FieldType("score", "float"),
    FieldType("annualRevenue", "currency"),
    FieldType("discount", "percent"),
    FieldType("unsubscribed", "boolean"),
    FieldType("dateOfBirth", "date"),
    FieldType("lastSeen", "datetime"),
    FieldType("country", "string"),
    FieldType("leadPartitionId", "reference"),
]

PROFILE: dict[str, Any] = {
    "identityMap": {
        "email": [{"id": "first@example.com"}, {"id": "Primary@Example.com", "primary": True}],
        "phone": [{"id": "+1 415 555 0123"}],
    },
    "person": {"name": {"firstName": " Ada ", "lastName": "Lovelace", "fullName": "Ada Lovelace"}},
    "mobilePhone": {"number": "070-123 45 67"},
    "emails": [{"address": "a@b.co"}, {"address": "c@d.co"}],
    "company": {"size": 120.0, "revenue": "1000000.50", "site": "https://example.com/x"},
    "flags": {"unsub": "no"},
    "birth": "1815-12-10",
    "seen": "2024-05-01T14:00:00+02:00",
    "country": "Sweden",
    "discount": "15%",
}


def mapper(registry: PluginRegistry, *rows: FieldMapping, dedupe_field: str = "email") -> Mapper:
    return Mapper(rows, FIELDS, registry, dedupe_field=dedupe_field)


def test_mapper_is_a_profile_mapper(registry: PluginRegistry) -> None:
    m: ProfileMapper = mapper(registry, FieldMapping("identityMap.email", DEDUPE_TARGET))
    assert isinstance(m.map_profile(PROFILE), MappedProfile)


def test_maps_paths_transforms_and_types(registry: PluginRegistry) -> None:
    m = mapper(
        registry,
        FieldMapping("identityMap.email", DEDUPE_TARGET, "lowercase"),
        FieldMapping("person.name.firstName", "firstName", "trim"),
        FieldMapping("person.name.fullName", "lastName", "split_name", {"part": "last"}),
        FieldMapping("mobilePhone.number", "mobilePhone", "phone_e164", {"default_country": "SE"}),
        FieldMapping("company.site", "website"),
        FieldMapping("company.size", "numberOfEmployees"),
        FieldMapping("company.revenue", "annualRevenue"),
        FieldMapping("discount", "discount"),
        FieldMapping("flags.unsub", "unsubscribed"),
        FieldMapping("birth", "dateOfBirth"),
        FieldMapping("seen", "lastSeen"),
        FieldMapping("country", "country", "country_code"),
        FieldMapping("emails.1.address", "notes"),
        FieldMapping("no.such.path", "score"),
    )
    result = m.map_profile(PROFILE)
    assert result.dedupe_value == "primary@example.com"
    assert result.fields == {
        "email": "primary@example.com",
        "firstName": "Ada",
        "lastName": "Lovelace",
        "mobilePhone": "+46701234567",
        "website": "https://example.com/x",
        "numberOfEmployees": 120,
        "annualRevenue": 1000000.5,
        "discount": 15,
        "unsubscribed": False,
        "dateOfBirth": "1815-12-10",
        "lastSeen": "2024-05-01T12:00:00Z",
        "country": "SE",
        "notes": "c@d.co",
    }


def test_identity_without_primary_takes_first(registry: PluginRegistry) -> None:
    m = mapper(
        registry, FieldMapping("identityMap.phone", DEDUPE_TARGET), dedupe_field="mobilePhone"
    )
    assert m.map_profile(PROFILE).dedupe_value == "+1 415 555 0123"


def test_concat_reads_several_paths(registry: PluginRegistry) -> None:
    m = mapper(
        registry,
        FieldMapping(
            "person.name.lastName, person.name.firstName", "notes", "concat", {"separator": ", "}
        ),
    )
    assert m.map_profile(PROFILE).fields == {"notes": "Lovelace, Ada"}


def test_default_fills_missing_value(registry: PluginRegistry) -> None:
    m = mapper(registry, FieldMapping("person.jobTitle", "title", "default", {"value": "n/a"}))
    assert m.map_profile(PROFILE).fields == {"title": "n/a"}


def test_missing_dedupe_value_rejects_the_profile(registry: PluginRegistry) -> None:
    m = mapper(registry, FieldMapping("identityMap.email", DEDUPE_TARGET))
    with pytest.raises(MappingRejectedError, match="no value for the deduplication field") as info:
        m.map_profile({"identityMap": {"email": []}})
    assert (info.value.code, info.value.field) == (ExclusionCode.MISSING_DEDUPE_VALUE, "email")


@pytest.mark.parametrize(
    ("target", "value", "data_type", "detail"),
    [
        ("title", "Professor", "string, at most 5 characters", "exceeds the limit of 5"),
        ("email", "not-an-email", "email, at most 255 characters", "not a valid email address"),
        ("numberOfEmployees", 14.1, "integer", "not a whole number"),
        ("numberOfEmployees", 2.0**40, "integer", "outside the 32-bit integer range"),
        ("score", "14c", "float", "a text of 3 characters is not a number"),
        ("unsubscribed", "other", "boolean", "a text of 5 characters is not a boolean"),
        ("dateOfBirth", "yesterday", "date", "is not a YYYY-MM-DD date"),
        ("lastSeen", "yesterday", "datetime", "is not an ISO-8601 date-time"),
        ("website", "ftp://example.com", "url", "is not an http(s) URL"),
        ("mobilePhone", "call me", "phone", "is not a valid phone number"),
        ("firstName", ["Ada"], "string, at most 255 characters", "an array is not text"),
        ("firstName", {"a": 1}, "string, at most 255 characters", "an object is not text"),
        ("numberOfEmployees", "1" * 5000, "integer", "has 5,000 characters"),
    ],
)
def test_values_that_do_not_fit_the_type_are_rejected_without_quoting_them(
    registry: PluginRegistry, target: str, value: object, data_type: str, detail: str
) -> None:
    m = mapper(registry, FieldMapping("v", target))
    with pytest.raises(MappingRejectedError) as info:
        m.map_profile({"v": value})
    assert info.value.reason.startswith(f"field {target!r} ({data_type}): ")
    assert (info.value.code, info.value.field) == (ExclusionCode.VALUE_REJECTED, target)
    # The reason reaches outcomes: it names the field, its type and what is wrong (the data
    # type's words), never the value.
    assert detail in info.value.reason
    quoted = str(value)[:4] if isinstance(value, str) else repr(value)
    assert quoted not in info.value.reason


@pytest.mark.parametrize(
    ("target", "value", "expected"),
    [
        ("firstName", 42.0, "42"),
        ("firstName", True, "true"),
        ("score", "3.5", 3.5),
        ("score", 2, 2.0),
        ("unsubscribed", 1.0, True),
        ("unsubscribed", "YES", True),
        ("dateOfBirth", "2024-05-01T23:30:00-05:00", "2024-05-01"),
        ("lastSeen", "2024-05-01", "2024-05-01T00:00:00Z"),
        ("lastSeen", "2024-05-01T10:00:00", "2024-05-01T10:00:00Z"),
        ("mobilePhone", "+1 (415) 555-0123 x12", "+1 (415) 555-0123 x12"),
        ("numberOfEmployees", "", None),
    ],
)
def test_values_are_coerced(
    registry: PluginRegistry, target: str, value: object, expected: object
) -> None:
    fields = mapper(registry, FieldMapping("v", target)).map_profile({"v": value}).fields
    assert fields.get(target) == expected
    assert type(fields.get(target)) is type(expected)


def test_configuration_problems_are_all_reported(registry: PluginRegistry) -> None:
    rows = [
        FieldMapping("a", "nosuchfield"),
        FieldMapping("b", "leadPartitionId"),
        FieldMapping("c", "firstName", "nosuchtransform"),
        FieldMapping("d", "lastName", "split_name"),
        FieldMapping("e", "title", "trim", {"colour": "red"}),
        FieldMapping("f", "notes", None, {"x": "y"}),
        FieldMapping("g..h", "score"),
        FieldMapping("i", "email"),
        FieldMapping("j", DEDUPE_TARGET),
    ]
    problems = validate_mapping_types(rows, FIELDS, registry, dedupe_field="email")
    assert len(problems) == 8, problems
    joined = "\n".join(problems)
    for fragment in (
        "'nosuchfield' is not a field",
        "data type 'reference'",
        "unknown transform 'nosuchtransform'",
        "refused its options: option 'part' must be",
        "has no option(s) colour",
        "options given without a transform",
        "invalid source path 'g..h'",
        "'DedupeField (email)' is mapped more than once",
    ):
        assert fragment in joined
    with pytest.raises(MappingConfigError) as caught:
        Mapper(rows, FIELDS, registry, dedupe_field="email")
    assert [v.field for v in caught.value.violations] == [
        "mappings[0].target",
        "mappings[1].target",
        "mappings[2].transform",
        "mappings[3].options",
        "mappings[4].options",
        "mappings[5].options",
        "mappings[6].source",
        "mappings[8].target",
    ]
    assert validate_mapping_types(rows[7:8], FIELDS, registry, dedupe_field="email") == []


@pytest.mark.parametrize(
    ("row", "reads"),
    [
        (FieldMapping("identityMap.email", DEDUPE_TARGET), True),
        (FieldMapping("identityMap", "notes"), True),
        (FieldMapping("person.first, identityMap.email", "notes", "concat"), True),
        (FieldMapping("person.first, identityMap.email", "notes"), False),  # one path
        (FieldMapping("person.identityMap.email", "notes"), False),
        (FieldMapping("person.first, person.last", "notes", "concat"), False),
    ],
)
def test_reads_identities_looks_at_every_path_a_row_reads(
    registry: PluginRegistry, row: FieldMapping, reads: bool
) -> None:
    assert reads_identities([FieldMapping("person.email", DEDUPE_TARGET), row], registry) is reads


def test_field_type_from_describe() -> None:
    assert FieldType.from_describe(
        {"id": 2, "dataType": "email", "length": 255, "rest": {"name": "email", "readOnly": False}}
    ) == FieldType("email", "email", 255)
    assert FieldType.from_describe({"name": "score", "dataType": "float"}) == FieldType(
        "score", "float", None
    )


class Faulty:
    """A third-party plugin with a transform that crashes on one value and mistypes another."""

    @staticmethod
    @hookimpl
    def register_transforms() -> Iterable[Transform]:
        def fragile(value: object) -> object:
            if value == "boom":
                raise ZeroDivisionError("division by zero")
            if value == "int":
                return 7
            return value

        return [Transform.from_function("fragile", fragile, returns=(str,))]


def test_faulty_plugin_excludes_only_that_profile() -> None:
    registry = PluginRegistry.build(load_entry_points=False, extra_plugins=[Faulty])
    m = mapper(
        registry,
        FieldMapping("identityMap.email", DEDUPE_TARGET),
        FieldMapping("title", "firstName", "fragile"),
    )
    batch: list[Mapping[str, Any]] = [
        {"identityMap": {"email": [{"id": f"p{i}@example.com"}]}, "title": title}
        for i, title in enumerate(["ok", "boom", "fine", "int", "good"])
    ]
    mapped: list[str] = []
    reasons: dict[int, str] = {}
    codes: dict[int, ExclusionCode] = {}
    for i, profile in enumerate(batch):
        try:
            mapped.append(str(m.map_profile(profile).fields["firstName"]))
        except MappingRejectedError as exc:
            reasons[i] = exc.reason
            codes[i] = exc.code
            assert exc.field == "firstName"
    assert mapped == ["ok", "fine", "good"]
    assert reasons == {
        1: "field 'firstName': transform 'fragile' of plugin 'Faulty' failed (ZeroDivisionError)",
        3: "field 'firstName': transform 'fragile' of plugin 'Faulty' returned int, expected str",
    }
    assert codes == {1: ExclusionCode.TRANSFORM_FAILED, 3: ExclusionCode.TRANSFORM_FAILED}


class Exiting:
    """A third-party plugin that exits on one value and on one option: `SystemExit` is no
    `Exception`, and raised in the planning thread it stopped the whole service's event loop."""

    @staticmethod
    @hookimpl
    def register_transforms() -> Iterable[Transform]:
        def quitter(value: object) -> object:
            if value == "quit":
                sys.exit("cannot go on")
            return value

        def prepare(options: Mapping[str, str]) -> Callable[[object], object]:
            if options.get("mode") == "quit":
                sys.exit(2)
            return quitter

        return [Transform(name="quitter", prepare=prepare, returns=(str,), options={"mode": "how"})]


def test_a_transform_that_exits_excludes_only_that_profile() -> None:
    registry = PluginRegistry.build(load_entry_points=False, extra_plugins=[Exiting])
    m = mapper(registry, FieldMapping("title", "firstName", "quitter"))
    assert m.map_profile({"title": "stay"}).fields["firstName"] == "stay"
    with pytest.raises(MappingRejectedError) as info:
        m.map_profile({"title": "quit"})
    assert info.value.reason == (
        "field 'firstName': transform 'quitter' of plugin 'Exiting' failed (SystemExit)"
    )
    assert (info.value.code, info.value.field) == (ExclusionCode.TRANSFORM_FAILED, "firstName")


def test_a_transform_whose_options_make_it_exit_is_a_mapping_problem() -> None:
    registry = PluginRegistry.build(load_entry_points=False, extra_plugins=[Exiting])
    with pytest.raises(MappingConfigError) as info:
        mapper(registry, FieldMapping("title", "firstName", "quitter", {"mode": "quit"}))
    ((field, description),) = [(v.field, v.description) for v in info.value.violations]
    assert field == "mappings[0].options"
    assert description.startswith(
        "target 'firstName': transform 'quitter' of plugin 'Exiting' refused its options"
    )


def test_transform_refusal_names_plugin_and_field(registry: PluginRegistry) -> None:
    m = mapper(registry, FieldMapping("c", "country", "country_code"))
    with pytest.raises(MappingRejectedError) as info:
        m.map_profile({"c": "Atlantis"})
    # The plugin's own message quotes the value; the reason does not.
    assert info.value.reason == (
        "field 'country': transform 'country_code' of plugin 'plugins.countries' refused the value"
    )
    assert (info.value.code, info.value.field) == (ExclusionCode.VALUE_REJECTED, "country")


class Recording:
    """A transform that records every value it is given."""

    seen: list[object] = []

    @staticmethod
    @hookimpl
    def register_transforms() -> Iterable[Transform]:
        def record(value: object) -> str | None:
            Recording.seen.append(value)
            return None

        return [Transform.from_function("record", record, returns=(str,))]


@pytest.fixture
def recording() -> Iterable[PluginRegistry]:
    Recording.seen = []
    yield PluginRegistry.build(load_entry_points=False, extra_plugins=[Recording])
    Recording.seen = []


def _rejection(m: Mapper, profile: Mapping[str, Any]) -> str:
    with pytest.raises(MappingRejectedError) as info:
        m.map_profile(profile)
    return info.value.reason


def test_an_over_long_value_is_rejected_before_any_transform(recording: PluginRegistry) -> None:
    m = mapper(recording, FieldMapping("person.phone", "mobilePhone", "record"))
    secret = "5" * (MAX_SOURCE_CHARS + 1)
    reason = _rejection(m, {"person": {"phone": secret}})
    assert reason == (
        f"field 'mobilePhone' (phone): source 'person.phone' has {MAX_SOURCE_CHARS + 1:,} "
        f"characters, more than the limit of {MAX_SOURCE_CHARS:,}"
    )
    assert Recording.seen == []
    m.map_profile({"person": {"phone": "5" * MAX_SOURCE_CHARS}})
    assert Recording.seen == ["5" * MAX_SOURCE_CHARS]


def test_the_phone_of_thirty_thousand_spaces_is_rejected_unread(registry: PluginRegistry) -> None:
    m = mapper(registry, FieldMapping("p", "mobilePhone", "phone_e164"))
    reason = _rejection(m, {"p": " " * 30_000})
    assert "source 'p' has 30,000 characters" in reason
    assert "  " not in reason


def test_a_text_area_takes_values_up_to_its_length(registry: PluginRegistry) -> None:
    notes = "word " * 2_000
    m = mapper(registry, FieldMapping("n", "notes", "trim"))
    assert m.map_profile({"n": notes}).fields == {"notes": notes.strip()}
    reason = _rejection(m, {"n": "x" * (MAX_TEXT_CHARS + 1)})
    assert reason.endswith(f"more than the limit of {MAX_TEXT_CHARS:,}")
    # Without a transform the same limit comes first, then the field's own.
    plain = mapper(registry, FieldMapping("n", "firstName"))
    assert "source 'n' has 5,000 characters" in _rejection(plain, {"n": "y" * 5_000})
    assert _rejection(plain, {"n": "y" * 300}) == (
        "field 'firstName' (string, at most 255 characters): "
        "text of 300 characters exceeds the limit of 255"
    )


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (list(range(MAX_SOURCE_ITEMS + 1)), f"holds more than {MAX_SOURCE_ITEMS:,} items"),
        ([[1, 2]] * (MAX_SOURCE_ITEMS // 2), f"holds more than {MAX_SOURCE_ITEMS:,} items"),
        ({"k": ["z" * 3_000, {"k2": "z" * 2_000}]}, f"more than {MAX_SOURCE_CHARS:,} characters"),
        ({"k" * 5_000: 1}, f"more than {MAX_SOURCE_CHARS:,} characters"),
    ],
)
def test_arrays_and_objects_are_bounded_too(
    recording: PluginRegistry, value: object, why: str
) -> None:
    m = mapper(recording, FieldMapping("v", "firstName", "record"))
    reason = _rejection(m, {"v": value})
    assert reason.startswith("field 'firstName' (string): source 'v' ") and why in reason
    assert Recording.seen == []
    m.map_profile({"v": [["a"] * 10, {"b": "c" * 4_000}]})
    assert len(Recording.seen) == 1


def test_each_source_of_a_multi_source_transform_is_bounded(registry: PluginRegistry) -> None:
    m = mapper(registry, FieldMapping("a, b", "firstName", "concat"))
    assert m.map_profile({"a": "Ada", "b": "B" * 200}).fields == {"firstName": "Ada " + "B" * 200}
    reason = _rejection(m, {"a": "Ada", "b": "B" * 5_000})
    assert reason.startswith("field 'firstName' (string): source 'b' has 5,000 characters")


def test_the_dedupe_value_is_bounded(registry: PluginRegistry) -> None:
    m = mapper(registry, FieldMapping("identityMap.email", DEDUPE_TARGET, "lowercase"))
    address = "a" * 5_000 + "@example.com"
    reason = _rejection(m, {"identityMap": {"email": [{"id": address}]}})
    assert reason.startswith("field 'DedupeField' (email): source 'identityMap.email' has 5,012 ")
