"""Identity endpoint and token checks."""

from __future__ import annotations

import re

import httpx

from sandbox import ManualClock

from .conftest import error_code, fetch_token

CREDS = {
    "grant_type": "client_credentials",
    "client_id": "sandbox-client-id",
    "client_secret": "sandbox-client-secret",
}


async def test_token_has_exactly_four_fields(raw: httpx.AsyncClient) -> None:
    response = await raw.get("/identity/oauth/token", params=CREDS)
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3600
    assert re.fullmatch(r"[0-9a-f-]{36}:\w+", body["access_token"])
    assert response.headers["cache-control"] == "no-store"


async def test_same_token_with_remaining_lifetime(
    raw: httpx.AsyncClient, clock: ManualClock
) -> None:
    first = (await raw.post("/identity/oauth/token", params=CREDS)).json()
    clock.advance(1000)
    second = (await raw.get("/identity/oauth/token", params=CREDS)).json()
    assert second["access_token"] == first["access_token"]
    assert second["expires_in"] == 2600
    # In its last second the live token comes back with `expires_in: 0` (2026 authentication
    # page: the remaining lifetime), then a new one is minted.
    clock.advance(2599.5)
    edge = (await raw.get("/identity/oauth/token", params=CREDS)).json()
    assert (edge["access_token"], edge["expires_in"]) == (first["access_token"], 0)
    clock.advance(0.5)
    fresh = (await raw.get("/identity/oauth/token", params=CREDS)).json()
    assert fresh["access_token"] != first["access_token"]
    assert fresh["expires_in"] == 3600


async def test_form_encoded_post_body(raw: httpx.AsyncClient) -> None:
    response = await raw.post("/identity/oauth/token", data=CREDS)
    assert response.status_code == 200
    assert response.json()["token_type"] == "bearer"


async def test_bad_secret_is_http_401(raw: httpx.AsyncClient) -> None:
    response = await raw.get("/identity/oauth/token", params={**CREDS, "client_secret": "x"})
    assert response.status_code == 401
    assert response.json() == {
        "error": "unauthorized",
        "error_description": "Bad Client Credentials",
    }


async def test_unknown_client_is_http_401(raw: httpx.AsyncClient) -> None:
    response = await raw.get("/identity/oauth/token", params={**CREDS, "client_id": "nope"})
    assert response.status_code == 401
    assert response.json()["error_description"] == "No client with requested id"


async def test_missing_token_is_603(raw: httpx.AsyncClient) -> None:
    body = (await raw.get("/rest/v1/leads/describe.json")).json()
    assert body["errors"] == [{"code": "603", "message": "Access denied"}]


async def test_invalid_token_is_601(raw: httpx.AsyncClient) -> None:
    response = await raw.get(
        "/rest/v1/leads/describe.json", headers={"Authorization": "Bearer nope:sb"}
    )
    assert response.status_code == 200
    assert response.json()["errors"] == [{"code": "601", "message": "Access token invalid"}]


async def test_expired_token_is_602_then_new_token(
    raw: httpx.AsyncClient, clock: ManualClock
) -> None:
    token = await fetch_token(raw)
    clock.advance(3600)
    response = await raw.get(
        "/rest/v1/leads/describe.json", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.json()["errors"] == [{"code": "602", "message": "Access token expired"}]
    fresh = await fetch_token(raw)
    assert fresh != token


async def test_access_token_param_behind_switch(raw: httpx.AsyncClient) -> None:
    """Refused by default since 2026 (601); the legacy switch turns it back on."""
    token = await fetch_token(raw)
    refused = await raw.get("/rest/v1/leads/describe.json", params={"access_token": token})
    assert error_code(refused.json()) == "601"
    header = await raw.get(
        "/rest/v1/leads/describe.json", headers={"Authorization": f"Bearer {token}"}
    )
    assert header.json()["success"] is True
    await raw.post("/_sandbox/reset", json={"access_token_param": True})
    token = await fetch_token(raw)
    ok = await raw.get("/rest/v1/leads/describe.json", params={"access_token": token})
    assert ok.json()["success"] is True


async def test_reset_changes_credentials(raw: httpx.AsyncClient) -> None:
    await raw.post("/_sandbox/reset", json={"client_id": "other", "client_secret": "s"})
    response = await raw.get(
        "/identity/oauth/token",
        params={"grant_type": "client_credentials", "client_id": "other", "client_secret": "s"},
    )
    assert response.status_code == 200


async def test_identity_calls_are_not_counted(raw: httpx.AsyncClient) -> None:
    await fetch_token(raw)
    calls = (await raw.get("/_sandbox/calls")).json()
    assert calls["counted"] == 0
    assert calls["identity"] == 1


async def test_envelope_and_request_id(client: httpx.AsyncClient, clock: ManualClock) -> None:
    response = await client.get("/rest/v1/leads/partitions.json")
    body = response.json()
    assert set(body) == {"requestId", "result", "success"}
    head, tail = body["requestId"].split("#")
    int(head, 16)
    assert int(tail, 16) == int(clock.now() * 1000)
    assert response.headers["content-type"] == "application/json;charset=UTF-8"
