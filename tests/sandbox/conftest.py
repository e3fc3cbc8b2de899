"""Fixtures: a sandbox on a manual clock and httpx clients talking to it in process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from sandbox import ManualClock, SandboxSettings, asgi_transport, create_app
from sandbox.app import Sandbox

BASE_URL = "https://123-ABC-456.mktorest.com"
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def app(clock: ManualClock) -> Starlette:
    return create_app(SandboxSettings(), clock=clock)


@pytest.fixture
def sandbox(app: Starlette) -> Sandbox:
    state: Sandbox = app.state.sandbox
    return state


@pytest.fixture
async def raw(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """A client without credentials."""
    async with httpx.AsyncClient(transport=asgi_transport(app), base_url=BASE_URL) as client:
        yield client


async def fetch_token(client: httpx.AsyncClient) -> str:
    response = await client.get(
        "/identity/oauth/token",
        params={
            "grant_type": "client_credentials",
            "client_id": "sandbox-client-id",
            "client_secret": "sandbox-client-secret",
        },
    )
    assert response.status_code == 200
    token: str = response.json()["access_token"]
    return token


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """A client that sends a valid Bearer token."""
    async with httpx.AsyncClient(transport=asgi_transport(app), base_url=BASE_URL) as plain:
        token = await fetch_token(plain)
    async with httpx.AsyncClient(
        transport=asgi_transport(app),
        base_url=BASE_URL,
        headers={"Authorization": f"Bearer {token}"},
    ) as client:
        yield client


async def seed(client: httpx.AsyncClient, *leads: dict[str, Any]) -> list[int]:
    response = await client.post("/_sandbox/leads", json={"leads": list(leads)})
    assert response.status_code == 200, response.text
    ids: list[int] = response.json()["ids"]
    return ids


async def sync(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/rest/v1/leads.json", json=body)
    assert response.status_code == 200
    data: dict[str, Any] = response.json()
    return data


async def create_list(client: httpx.AsyncClient, name: str, folder_id: int = 11) -> int:
    response = await client.post(
        "/rest/asset/v1/staticLists.json",
        data={"name": name, "folder": f'{{"id":{folder_id},"type":"Folder"}}'},
    )
    body = response.json()
    assert body["success"], body
    list_id: int = body["result"][0]["id"]
    return list_id


def error_code(body: dict[str, Any]) -> str:
    assert body["success"] is False, body
    code: str = body["errors"][0]["code"]
    return code
