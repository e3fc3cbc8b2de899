"""The plugin test kit (marketo_destination_testing): the example plugin's own suite runs on it
as a plugin author runs it, and each helper fails a test when it should."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

import marketo_destination_testing as kit
from service.domain import ExclusionCode, FieldMapping, MappedProfile, MappingRejectedError
from service.hookspecs import Transform, TransformError, TransformFunc, hookimpl

from .conftest import EXAMPLE, REPO


def test_the_example_plugin_suite_passes_on_the_kit() -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    environment["PYTHONPATH"] = os.pathsep.join([str(REPO), str(EXAMPLE / "src")])
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=EXAMPLE,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    passed = re.search(r"(\d+) passed", run.stdout)
    assert passed and int(passed.group(1)) >= 10, run.stdout
    assert "skipped" not in run.stdout and "failed" not in run.stdout


def test_the_registry_holds_the_builtins_and_the_plugin() -> None:
    registry = kit.build_registry(_Wobbly())
    assert {"lowercase", "phone_e164", "wobbly", "typo"} <= set(registry.transforms)
    assert registry.transform("wobbly").plugin != registry.transform("lowercase").plugin
    assert set(kit.build_registry().transforms).isdisjoint({"wobbly", "typo"})


def test_a_preset_maps_by_name() -> None:
    mapper = kit.mapper_for("xdm_person", kit.build_registry())
    mapped = mapper.map_profile(
        {
            "identityMap": {"email": [{"id": "Ada@Example.com"}]},
            "person": {"name": {"firstName": " Ada ", "lastName": "Lovelace"}},
        }
    )
    assert mapped.dedupe_value == "ada@example.com"
    assert mapped.fields == {"email": "ada@example.com", "firstName": "Ada", "lastName": "Lovelace"}
    with pytest.raises(KeyError, match="xdm_person"):
        kit.mapper_for("no_such_preset", kit.build_registry())


def test_field_types_decide_the_coercion() -> None:
    rows = [FieldMapping("n", "employees")]
    registry = kit.build_registry()
    typed = kit.mapper_for(rows, registry, field_types={"employees": "integer"})
    assert typed.map_profile({"n": "120"}).fields == {"employees": 120}
    assert kit.mapper_for(rows, registry).map_profile({"n": 120}).fields == {"employees": "120"}


def test_a_rejection_naming_the_field_is_returned() -> None:
    mapper = kit.mapper_for(
        [FieldMapping("n", "employees")], kit.build_registry(), field_types={"employees": "integer"}
    )
    error = kit.rejection_of(
        mapper, {"n": "many"}, field="employees", code=ExclusionCode.VALUE_REJECTED
    )
    assert error.code == ExclusionCode.VALUE_REJECTED


class _Refusing:
    """A mapper double whose rejection says what the test wants."""

    def __init__(self, reason: str, field: str) -> None:
        self.error = MappingRejectedError(reason, field=field)

    def map_profile(self, profile: Mapping[str, Any]) -> MappedProfile:
        raise self.error


@pytest.mark.parametrize(
    ("mapper", "field", "message"),
    [
        (_Refusing("field 'tier': too big", "tier"), "other", "names field 'tier'"),
        (_Refusing("too big", "tier"), "tier", "does not name"),
        (_Refusing("field 'tier': 'secret-value' is bad", "tier"), "tier", "quotes"),
    ],
)
def test_a_rejection_that_misses_the_field_or_quotes_a_value_fails(
    mapper: Any, field: str, message: str
) -> None:
    with pytest.raises(AssertionError, match=message):
        kit.rejection_of(mapper, {"x": {"y": ["secret-value"]}}, field=field)


def test_a_profile_that_maps_fails_the_rejection_check() -> None:
    mapper = kit.mapper_for([FieldMapping("n", "name")], kit.build_registry())
    with pytest.raises(pytest.fail.Exception, match="mapped, not rejected"):
        kit.rejection_of(mapper, {"n": "Ada"}, field="name")


def test_a_wrong_code_fails_the_rejection_check() -> None:
    mapper = kit.mapper_for(
        [FieldMapping("n", "employees")], kit.build_registry(), field_types={"employees": "integer"}
    )
    with pytest.raises(AssertionError, match="code"):
        kit.rejection_of(mapper, {"n": "x"}, field="employees", code=ExclusionCode.TRANSFORM_FAILED)


class _Wobbly:
    """Transforms that break the contract: ``wobbly`` returns an undeclared type and answers
    differently each time; ``typo`` raises something other than TransformError."""

    def __init__(self) -> None:
        self.calls = 0

    def _wobbly(self, options: Mapping[str, str]) -> TransformFunc:
        def func(value: object) -> object:
            self.calls += 1
            return self.calls if value == "text" else None

        return func

    @staticmethod
    def _typo(options: Mapping[str, str]) -> TransformFunc:
        def func(value: object) -> object:
            if value == "":
                raise ValueError("empty")
            if value == "text":
                raise TransformError("refused")
            return None

        return func

    @hookimpl
    def register_transforms(self) -> Iterable[Transform]:
        return (
            Transform("wobbly", self._wobbly, returns=(str,)),
            Transform("typo", self._typo, returns=(str,)),
        )


def test_transform_problems_are_found() -> None:
    registry = kit.build_registry(_Wobbly())
    wobbly = kit.transform_problems(registry, "wobbly")
    assert any("returned a int" in p for p in wobbly), wobbly
    assert any("differently" in p for p in wobbly), wobbly
    typo = kit.transform_problems(registry, "typo")
    assert typo == ["typo('') raised ValueError, not TransformError"]
    assert kit.transform_problems(registry, "typo", options={"x": "1"}) == [
        "options ['x'] are not declared by 'typo'"
    ]


def test_every_builtin_transform_keeps_the_contract_the_kit_checks() -> None:
    registry = kit.build_registry()
    for name in registry.transforms:
        assert kit.transform_problems(registry, name) == [], name


def test_the_kit_is_shipped_and_checked() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"marketo_destination_testing*"' in pyproject
    assert "marketo_destination_testing" in (REPO / "Makefile").read_text()
    assert Path(kit.__file__).parent.joinpath("py.typed").is_file()
