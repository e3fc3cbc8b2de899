"""`marketo-destination demo` runs the whole data path and reports what it did."""

from __future__ import annotations

import io
from pathlib import Path

from service.api.demo import demo_settings, run_demo
from service.settings import Settings


async def test_the_demo_delivers_every_profile(tmp_path: Path) -> None:
    settings, holder = demo_settings(Settings(), tmp_path / "demo")
    assert holder is None
    out = io.StringIO()
    leads = await run_demo(settings, profiles=600, out=out)
    report = out.getvalue()
    assert leads == 600
    assert "received   600" in report
    assert "created 420, updated 180" in report
    assert "failed     0" in report
    assert report.count("Activated ") == 3
