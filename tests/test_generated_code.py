"""The committed generated code under service/_proto is what scripts/gen_proto.sh produces."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import REPO

GENERATED = Path("service/_proto")
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(tree: Path, out: Path) -> Path:
    """Runs ``tree``'s scripts/gen_proto.sh into ``out``; returns the generated package dir."""
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run(
        ["bash", str(tree / "scripts" / "gen_proto.sh"), str(out)],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out / GENERATED


def differences(expected: Path, actual: Path) -> list[str]:
    """Generated files that are missing, extra or not byte-for-byte equal between two trees."""

    def files(root: Path) -> dict[str, bytes]:
        return {
            str(path.relative_to(root)): path.read_bytes()
            for path in root.rglob("*")
            if path.is_file() and path.name.endswith(GENERATED_SUFFIXES)
        }

    want, got = files(expected), files(actual)
    return sorted(
        [f"missing: {name}" for name in want.keys() - got.keys()]
        + [f"extra: {name}" for name in got.keys() - want.keys()]
        + [f"differs: {name}" for name in want.keys() & got.keys() if want[name] != got[name]]
    )


def test_committed_generated_code_is_current(tmp_path: Path) -> None:
    fresh = generate(REPO, tmp_path)
    assert differences(fresh, REPO / GENERATED) == [], "run `make proto` and commit the result"
    assert list((REPO / GENERATED).rglob("*_pb2_grpc.py")), "the comparison saw generated files"


def test_a_changed_proto_is_detected(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(REPO / "scripts", tree / "scripts")
    shutil.copytree(REPO / "proto", tree / "proto")
    proto = tree / "proto" / "marketo_destination" / "v1" / "destination.proto"
    probe = "\n// Added by the drift test.\nmessage DriftProbe {\n  string x = 1;\n}\n"
    proto.write_text(proto.read_text() + probe)
    changed = generate(tree, tree)
    found = differences(changed, REPO / GENERATED)
    assert "differs: marketo_destination/v1/destination_pb2.py" in found


def test_buf_lint_passes() -> None:
    buf = Path(sys.executable).with_name("buf")
    result = subprocess.run(
        [str(buf), "lint"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
