"""The two sizes of the reliability suite and where its figures go.

`RELIABILITY_PROFILE=short` (default; part of `make test`) or `long` (`make reliability`).
`RELIABILITY_SEED` changes every random choice (faults, kill moments, shuffles); the default
seed makes a run repeatable. Figures (latencies, memory, counts) are printed and, when
`RELIABILITY_FIGURES` names a file, merged into it as JSON (docs/reliability.md copies them).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PROFILE", "SEED", "Profile", "record"]


@dataclass(frozen=True, kw_only=True)
class Profile:
    name: str
    chaos_updates: int
    """Updates streamed across the four destinations of the chaos test."""
    chaos_delay_ms: int
    """The injected "multi-second" delay."""
    crash_profiles: int
    crash_kills: int
    fuzz_examples: int
    """Hypothesis examples per RPC."""
    load_streams: int
    load_updates: int
    """Updates per load stream."""
    load_request_size: int


SHORT = Profile(
    name="short",
    chaos_updates=5_000,
    chaos_delay_ms=2_000,
    crash_profiles=3_000,
    crash_kills=5,
    fuzz_examples=25,
    load_streams=10,
    load_updates=500,
    load_request_size=100,
)
LONG = Profile(
    name="long",
    chaos_updates=50_000,
    chaos_delay_ms=3_000,
    crash_profiles=20_000,
    crash_kills=8,
    fuzz_examples=200,
    load_streams=50,
    load_updates=2_000,
    load_request_size=100,
)

_PROFILES = {p.name: p for p in (SHORT, LONG)}
_name = os.environ.get("RELIABILITY_PROFILE", "short")
if _name not in _PROFILES:
    raise ValueError(f"RELIABILITY_PROFILE must be one of {sorted(_PROFILES)}, got {_name!r}")
PROFILE = _PROFILES[_name]
SEED = int(os.environ.get("RELIABILITY_SEED", "20261129"))


def record(test: str, figures: dict[str, Any]) -> None:
    """Print a test's figures and merge them into `$RELIABILITY_FIGURES` when set."""
    figures = {"profile": PROFILE.name, "seed": SEED, **figures}
    print(f"\nreliability figures [{test}]: {json.dumps(figures, sort_keys=True)}")
    target = os.environ.get("RELIABILITY_FIGURES")
    if not target:
        return
    path = Path(target)
    existing: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    existing[test] = figures
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n")
