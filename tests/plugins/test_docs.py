"""docs/plugins.md documents every hook and every built-in transform."""

from __future__ import annotations

import re

import pytest

from service import hookspecs
from service.mapping.registry import PluginRegistry

from .conftest import REPO

DOC = REPO / "docs" / "plugins.md"


def hookspec_names() -> list[str]:
    marker = f"{hookspecs.NAME}_spec"
    return sorted(name for name, obj in vars(hookspecs).items() if hasattr(obj, marker))


def undocumented_hooks(names: list[str], text: str) -> list[str]:
    headings = set(re.findall(r"^### (\w+)\s*$", text, flags=re.MULTILINE))
    return [name for name in names if name not in headings]


def test_hookspecs_are_found() -> None:
    assert hookspec_names() == ["register_mapping_presets", "register_transforms"]


@pytest.mark.parametrize("hook", hookspec_names())
def test_hook_is_documented(hook: str) -> None:
    assert undocumented_hooks([hook], DOC.read_text()) == [], f"add a '### {hook}' section"


def test_check_fails_for_an_undocumented_hook() -> None:
    assert undocumented_hooks(["register_something_new"], DOC.read_text()) == [
        "register_something_new"
    ]


def test_every_hookspec_has_a_docstring() -> None:
    for name in hookspec_names():
        doc = getattr(hookspecs, name).__doc__ or ""
        assert "Called once" in doc and "Return" in doc, name


def test_every_builtin_transform_is_documented(registry: PluginRegistry) -> None:
    text = DOC.read_text()
    for name, entry in registry.transforms.items():
        assert f"| `{name}` | `{entry.plugin}` |" in text, name
