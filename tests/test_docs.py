"""The README and the docs link only to files that exist, name every docs page, and list every
exclusion code."""

from __future__ import annotations

import re

from service.domain import ExclusionCode

from .conftest import REPO

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_every_relative_link_resolves_inside_the_repository() -> None:
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            resolved = (page.parent / target).resolve()
            if not resolved.is_relative_to(REPO) or not resolved.exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert broken == []


def test_the_readme_lists_every_docs_page() -> None:
    readme = (REPO / "README.md").read_text()
    missing = [p.name for p in (REPO / "docs").glob("*.md") if f"docs/{p.name}" not in readme]
    assert missing == []


def test_the_exclusion_codes_are_each_documented() -> None:
    """docs/observability.md's table of exclusion codes has one row per `ExclusionCode`, and
    the proto's comment on ProfileOutcome.exclusion_code names each one."""
    page = (REPO / "docs/observability.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \|", page.split("## Exclusions", 1)[1], re.MULTILINE)
    codes = [code.value for code in ExclusionCode]
    assert sorted(rows) == sorted(codes)
    proto = (REPO / "proto/marketo_destination/v1/destination.proto").read_text()
    comment = proto.split("string exclusion_code = 11;")[0].rsplit("string update_id = 10;")[1]
    assert [code for code in codes if f'"{code}"' not in comment] == []
