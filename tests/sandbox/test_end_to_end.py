"""End to end: `python -m sandbox` on a real port, driven over HTTP."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sandbox",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--client-id",
            "e2e-id",
            "--client-secret",
            "e2e-secret",
            "--munchkin-id",
            "999-XYZ-000",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(3)]
        assert lines[0].strip() == "Marketo sandbox 999-XYZ-000"
        rest = lines[1].removeprefix("REST endpoint: ").strip()
        identity = lines[2].removeprefix("Identity URL: ").strip()
        assert rest.endswith("/rest") and identity.endswith("/identity")
        yield rest.removesuffix("/rest")
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_real_port_round_trip(server: str) -> None:
    async with httpx.AsyncClient(base_url=server) as client:
        token = (
            await client.post(
                "/identity/oauth/token",
                params={
                    "grant_type": "client_credentials",
                    "client_id": "e2e-id",
                    "client_secret": "e2e-secret",
                },
            )
        ).json()["access_token"]
        client.headers["Authorization"] = f"Bearer {token}"
        synced = (
            await client.post("/rest/v1/leads.json", json={"input": [{"email": "e2e@example.com"}]})
        ).json()
        assert synced["result"] == [{"id": 1, "status": "created"}]
        found = (
            await client.get(
                "/rest/v1/leads.json",
                params={"filterType": "email", "filterValues": "e2e@example.com"},
            )
        ).json()
        assert found["result"][0]["id"] == 1
        assert found["requestId"].count("#") == 1

        await client.post(
            "/_sandbox/faults", json=[{"path_prefix": "/rest/v1/leads", "drop": True, "count": 1}]
        )
        with pytest.raises(httpx.TransportError):
            await client.get("/rest/v1/leads/describe2.json")
        after = await client.get("/rest/v1/leads/describe2.json")
        assert after.json()["success"] is True

        await client.post(
            "/_sandbox/faults", json=[{"path_prefix": "/rest", "http_status": 502, "count": 1}]
        )
        assert (await client.get("/rest/v1/leads/partitions.json")).status_code == 502
        calls = (await client.get("/_sandbox/calls")).json()
        assert calls["by_code"]["dropped"] == 1
        assert calls["by_code"]["http_502"] == 1
