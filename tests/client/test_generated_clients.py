"""buf.gen.yaml's clients for other programs: the Python plugins generate importable stubs of the
same API, and the TypeScript plugin (ts-proto, from npm) generates code that
examples/typescript/client.ts type-checks against with tsc, while a wrong caller does not.

The npm packages of examples/typescript/package.json are installed into build/tsproto when
missing; without node or npm, or when the npm registry cannot be reached, the TypeScript test is
skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service._proto.marketo_destination.v1 import destination_pb2

ROOT = Path(__file__).resolve().parents[2]
TS_TOOLS = ROOT / "build" / "tsproto"
BIN = Path(sys.executable).parent
BUF = BIN / "buf"


def _template(keep: str, tmp_path: Path) -> Path:
    """buf.gen.yaml with only the plugins whose name or command holds ``keep``."""
    template = yaml.safe_load((ROOT / "buf.gen.yaml").read_text())
    template["plugins"] = [p for p in template["plugins"] if keep in str(p)]
    assert template["plugins"], f"buf.gen.yaml has no {keep} plugin"
    path = tmp_path / f"buf.gen.{keep}.yaml"
    path.write_text(yaml.safe_dump(template))
    return path


def _generate(template: Path, out: Path) -> None:
    done = subprocess.run(
        [str(BUF), "generate", "--template", str(template), "-o", str(out)],
        cwd=ROOT,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr


def test_the_python_clients_describe_the_same_api(tmp_path: Path) -> None:
    _generate(_template("python", tmp_path), tmp_path)
    out = tmp_path / "gen" / "python"
    assert (out / "marketo_destination" / "v1" / "destination_pb2.pyi").exists()
    # A fresh interpreter: the service's own module holds the same names in this one's pool.
    program = (
        "import json\n"
        "from marketo_destination.v1 import destination_pb2 as m, destination_pb2_grpc as g\n"
        "service = m.DESCRIPTOR.services_by_name['MarketoDestinationService']\n"
        "print(json.dumps({'methods': [x.name for x in service.methods],\n"
        "                  'messages': sorted(m.DESCRIPTOR.message_types_by_name),\n"
        "                  'stub': hasattr(g, 'MarketoDestinationServiceStub')}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=out, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout)
    ours = destination_pb2.DESCRIPTOR.services_by_name["MarketoDestinationService"]
    assert found["methods"] == [m.name for m in ours.methods]
    assert found["messages"] == sorted(destination_pb2.DESCRIPTOR.message_types_by_name)
    assert found["stub"] is True


def _ts_tools() -> Path:
    """build/tsproto/node_modules/.bin with ts-proto and tsc, installed when missing."""
    tools = TS_TOOLS / "node_modules" / ".bin"
    wanted = (ROOT / "examples" / "typescript" / "package.json").read_text()
    installed = TS_TOOLS / "package.json"
    ready = installed.exists() and installed.read_text() == wanted
    if ready and (tools / "protoc-gen-ts_proto").exists() and (tools / "tsc").exists():
        return tools
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed")
    TS_TOOLS.mkdir(parents=True, exist_ok=True)
    installed.write_text(wanted)
    try:
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(TS_TOOLS)],
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        installed.unlink(missing_ok=True)
        pytest.skip(f"npm could not install the TypeScript tools (registry unreachable?): {error}")
    return tools


def _tsc(tools: Path, project: Path, source: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(tools / "tsc"),
            "--noEmit",
            "--strict",
            "--target",
            "es2020",
            "--module",
            "commonjs",
            "--moduleResolution",
            "node",
            "--esModuleInterop",
            "--skipLibCheck",
            str(source),
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_typescript_client_type_checks_against_the_generated_code(tmp_path: Path) -> None:
    tools = _ts_tools()
    _generate(_template("ts_proto", tmp_path), tmp_path)
    generated = tmp_path / "gen" / "ts" / "marketo_destination" / "v1" / "destination.ts"
    assert "MarketoDestinationServiceClient" in generated.read_text()
    (tmp_path / "node_modules").symlink_to(TS_TOOLS / "node_modules")
    example = tmp_path / "examples" / "typescript" / "client.ts"
    example.parent.mkdir(parents=True)
    shutil.copyfile(ROOT / "examples" / "typescript" / "client.ts", example)
    checked = _tsc(tools, tmp_path, example)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # The check has teeth: a caller with a wrong field type is refused where it is wrong.
    wrong = example.with_name("wrong.ts")
    wrong.write_text(
        'import { SyncRequest } from "../../gen/ts/marketo_destination/v1/destination";\n'
        'export const request: SyncRequest = { destinationId: 7, updates: [], requestId: "" };\n'
    )
    refused = _tsc(tools, tmp_path, wrong)
    assert refused.returncode != 0
    assert "wrong.ts(2,39): error TS2322: Type 'number' is not assignable" in refused.stdout
