"""Fuzz Sync's C quick look (service/api/_wirecheck.c) under AddressSanitizer and
UndefinedBehaviorSanitizer: `make fuzz` (part of `make test`).

Builds the extension with `-fsanitize=address,undefined` into build/sanitized/, then runs
tests/test_sync_checks.py with that build in place of the installed one (every test of the C:
malformed and unusual encodings, UTF-8, long strings, limits), `--examples` examples of each
kind of change the fuzz makes. The first memory error or undefined behaviour aborts the run with
its report; the tests themselves hold the C's verdicts to `sync_checks.check_update`.

    .venv/bin/python scripts/fuzz_wirecheck.py [--examples 500]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "service" / "api" / "_wirecheck.c"
MODULE = "service.api._wirecheck"
BUILT_ENV = "WIRECHECK_SANITIZED"
"""Set, to the sanitized build's path, in the process that runs the tests."""
FLAGS = [
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
    "-fno-omit-frame-pointer",
    "-g",
    "-O1",
]


def build(out_dir: Path) -> Path:
    """The extension compiled with the sanitizers, in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"_wirecheck{sysconfig.get_config_var('EXT_SUFFIX')}"
    include = sysconfig.get_paths()["include"]
    command = ["gcc", "-shared", "-fPIC", "-pthread", *FLAGS, f"-I{include}"]
    subprocess.run([*command, str(SOURCE), "-o", str(target)], check=True)
    return target


def runtime(library: str) -> str:
    """The path of a sanitizer runtime that gcc links against."""
    found = subprocess.run(
        ["gcc", f"-print-file-name={library}"], check=True, capture_output=True, text=True
    ).stdout.strip()
    if not os.path.isabs(found):
        raise SystemExit(f"gcc has no {library}: install the sanitizer runtimes")
    return found


def run_tests(built: Path) -> int:
    """tests/test_sync_checks.py with the sanitized build as `service.api._wirecheck`."""
    spec = importlib.util.spec_from_file_location(MODULE, built)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE] = module  # what `service.api.sync_checks` imports from now on
    spec.loader.exec_module(module)

    import pytest

    from service.api import sync_checks

    assert sync_checks.NATIVE_CHECKS and sys.modules[MODULE].__file__ == str(built)
    with open("/proc/self/maps") as maps:  # the sanitizers' runtimes are loaded
        loaded = maps.read()
    assert "libasan" in loaded and "libubsan" in loaded, "the sanitizers are not loaded"
    return pytest.main(["-q", "-p", "no:cacheprovider", "tests/test_sync_checks.py"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=500, help="per kind of change (500)")
    args = parser.parse_args()
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    built = os.environ.get(BUILT_ENV)
    if built:
        return run_tests(Path(built))
    target = build(ROOT / "build" / "sanitized")
    env = dict(
        os.environ,
        **{BUILT_ENV: str(target)},
        # The ASan runtime must come first; Python itself is not instrumented.
        LD_PRELOAD=" ".join(runtime(name) for name in ("libasan.so", "libubsan.so")),
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:strict_string_checks=1",
        UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1",
        PYTHONMALLOC="malloc",  # each Python object its own allocation, seen by ASan
        WIRECHECK_FUZZ_EXAMPLES=str(args.examples),
    )
    return subprocess.run([sys.executable, __file__], env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
