"""node-marketo-rest, unchanged from npm, through its lead and list calls against the sandbox on a
real loopback port (`tests/compat/node_steps.js` runs the calls and prints what they returned).

The package is installed into `build/node` when missing (CI has the npm registry); without `node`
the test is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import sandbox_process

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "build" / "node"
PACKAGE = "node-marketo-rest@0.7.8"


def _install() -> Path:
    modules = NODE_DIR / "node_modules"
    if not (modules / "node-marketo-rest" / "package.json").exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed")
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR), PACKAGE],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return modules


def _steps(base_url: str, list_id: int, modules: Path) -> dict[str, Any]:
    node = shutil.which("node")
    assert node is not None
    done = subprocess.run(
        [node, str(Path(__file__).with_name("node_steps.js")), base_url, str(list_id)],
        env={**os.environ, "NODE_PATH": str(modules)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout)
    return out


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_lead_and_list_calls() -> None:
    modules = _install()
    with sandbox_process() as base_url:
        token = httpx.get(
            f"{base_url}/identity/oauth/token",
            params={
                "grant_type": "client_credentials",
                "client_id": "sandbox-client-id",
                "client_secret": "sandbox-client-secret",
            },
        ).json()["access_token"]
        created = httpx.post(
            f"{base_url}/rest/asset/v1/staticLists.json",
            headers={"Authorization": f"Bearer {token}"},
            data={"name": "Node list", "folder": '{"id":11,"type":"Folder"}'},
        ).json()
        list_id = created["result"][0]["id"]
        out = _steps(base_url, list_id, modules)
        calls = httpx.get(f"{base_url}/_sandbox/calls").json()

    assert set(out["token"]) == {"access_token", "token_type", "expires_in", "scope"}
    assert [item["status"] for item in out["upsert"]["result"]] == ["created", "created"]
    first, second = (item["id"] for item in out["upsert"]["result"])
    assert out["find"]["result"] == [
        {"id": first, "email": "node1@example.com", "firstName": "One"},
        {"id": second, "email": "node2@example.com", "firstName": None},
    ]
    assert out["byId"]["result"] == [{"id": first, "email": "node1@example.com"}]
    assert "email" in {field["rest"]["name"] for field in out["describe"]["result"]}
    assert [p["name"] for p in out["partitions"]["result"]] == ["Default", "EMEA", "Partners"]
    assert [item["id"] for item in out["listsBefore"]["result"]] == [list_id]
    assert out["addToList"]["result"] == [
        {"id": first, "status": "added"},
        {"id": second, "status": "added"},
    ]
    assert out["isMember"]["result"] == [{"id": first, "status": "memberof"}]
    # Get Leads by List in pages of one, the second through the client's nextPage().
    assert out["listLeads"]["result"] == [{"id": first, "email": "node1@example.com"}]
    assert out["listLeads"]["moreResult"] is True
    assert out["listLeadsNext"]["result"] == [{"id": second, "email": "node2@example.com"}]
    assert out["removeFromList"]["result"] == [{"id": second, "status": "removed"}]
    assert out["listById"]["result"][0]["name"] == "Node list"
    assert out["merge"]["success"] is True and "result" not in out["merge"]
    assert out["pageToken"]["nextPageToken"]
    (usage,) = out["usage"]["result"]
    assert usage["users"] == [{"userId": "sandbox-api-user@example.com", "count": usage["total"]}]
    assert usage["total"] >= 14
    assert out["unknownList"]["errors"] == [{"code": "1013", "message": "Object not found"}]
    # Header-only authentication throughout: no call was refused for its token.
    assert not {"601", "602", "603"} & set(calls["by_code"])
