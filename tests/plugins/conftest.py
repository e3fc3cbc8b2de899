"""Plugin test fixtures: a fresh registry per test, the example plugin as a distribution."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.mapping.registry import PluginRegistry

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "marketo-destination-example-plugin"


def write_dist_info(project: Path, site: Path) -> Path:
    """Write the `.dist-info` an install of `project` would write, entry points included.

    `importlib.metadata` finds distributions by scanning `sys.path` for `*.dist-info`, so this
    exercises the same discovery as a real install without network, build or venv changes.
    """
    meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    dist = site / f"{meta['name'].replace('-', '_')}-{meta['version']}.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n"
    )
    lines = []
    for group, entries in meta.get("entry-points", {}).items():
        lines.append(f"[{group}]")
        lines.extend(f"{name} = {target}" for name, target in entries.items())
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return dist


@pytest.fixture
def example_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The example plugin importable and declared as an installed distribution."""
    site = tmp_path / "site"
    dist = write_dist_info(EXAMPLE, site)
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    monkeypatch.syspath_prepend(str(site))
    yield dist


@pytest.fixture
def registry() -> PluginRegistry:
    """Built-ins only: a fresh manager per test, no entry points."""
    return PluginRegistry.build(load_entry_points=False)
