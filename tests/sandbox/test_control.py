"""The /_sandbox control API."""

from __future__ import annotations

import httpx

from sandbox import SandboxSettings, asgi_transport, create_app
from sandbox.app import Sandbox

from .conftest import BASE_URL, seed


async def test_seed_and_dump_leads(raw: httpx.AsyncClient) -> None:
    ids = await seed(
        raw,
        {"email": "a@example.com", "partition": "EMEA", "updatedAt": "2025-01-02T03:04:05Z"},
        {"email": "a@example.com", "sfdcLeadId": "00Q1"},
    )
    assert ids == [1, 2]
    leads = (await raw.get("/_sandbox/leads")).json()["leads"]
    assert leads[0] == {
        "id": 1,
        "partition": "EMEA",
        "createdAt": "2025-01-02T03:04:05Z",
        "updatedAt": "2025-01-02T03:04:05Z",
        "fields": {"email": "a@example.com"},
    }
    assert leads[1]["fields"]["sfdcLeadId"] == "00Q1"


async def test_seed_rejects_unknown_partition(raw: httpx.AsyncClient) -> None:
    response = await raw.post("/_sandbox/leads", json={"leads": [{"partition": "Nope"}]})
    assert response.status_code == 400


async def test_reset_empties_state_and_sets_schema(
    raw: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    await seed(raw, {"email": "a@example.com"})
    response = await raw.post(
        "/_sandbox/reset",
        json={
            "partitions": ["Default", "Japan"],
            "workspaces": [{"name": "Default", "partitions": ["Default", "Japan"]}],
            "fields": [{"name": "memberNo", "dataType": "integer", "searchable": True}],
            "token_ttl": 60,
            "daily_quota": 10,
            "window_seconds": 2,
            "calls_per_window": 5,
            "concurrency": 1,
        },
    )
    assert response.status_code == 200
    assert (await raw.get("/_sandbox/leads")).json()["leads"] == []
    assert ["memberNo"] in sandbox.state.schema.describe2()[0]["searchableFields"]
    assert "customerId" not in sandbox.state.schema.fields
    assert sandbox.settings.token_ttl == 60
    assert [p.name for p in sandbox.state.partitions.values()] == ["Default", "Japan"]


async def test_reset_validates(raw: httpx.AsyncClient) -> None:
    bad = await raw.post(
        "/_sandbox/reset", json={"workspaces": [{"name": "W", "partitions": ["Nope"]}]}
    )
    assert bad.status_code == 400


async def test_clock_endpoint(raw: httpx.AsyncClient, sandbox: Sandbox) -> None:
    before = sandbox.clock.now()
    response = await raw.post("/_sandbox/clock", json={"advance_seconds": 30})
    assert response.json()["now"] == before + 30


async def test_clock_endpoint_needs_manual_clock() -> None:
    app = create_app(SandboxSettings())
    async with httpx.AsyncClient(transport=asgi_transport(app), base_url=BASE_URL) as client:
        response = await client.post("/_sandbox/clock", json={"advance_seconds": 1})
    assert response.status_code == 409


async def test_calls_shape(raw: httpx.AsyncClient) -> None:
    body = (await raw.get("/_sandbox/calls")).json()
    assert set(body) == {
        "requests",
        "counted",
        "identity",
        "in_flight",
        "peak_concurrency",
        "window_calls",
        "quota_used",
        "by_endpoint",
        "by_code",
    }


def test_settings_defaults() -> None:
    settings = SandboxSettings()
    assert (settings.client_id, settings.client_secret, settings.munchkin_id) == (
        "sandbox-client-id",
        "sandbox-client-secret",
        "123-ABC-456",
    )
    assert (settings.calls_per_window, settings.window_seconds, settings.concurrency) == (
        100,
        20.0,
        10,
    )
    assert (settings.daily_quota, settings.token_ttl) == (50_000, 3600)
    assert (settings.body_limit, settings.bulk_file_limit) == (1_000_000, 10_000_000)
    # Marketo removed the access_token parameter in 2026 (authentication page, see test_auth_2026).
    assert settings.accept_access_token_param is False
    assert "client_secret" not in repr(settings)


def described(sandbox: Sandbox) -> set[str]:
    return {f["name"] for f in sandbox.state.schema.describe2()[0]["fields"]}


async def test_a_custom_field_is_deleted_with_its_values_and_added_back(
    raw: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    await seed(raw, {"email": "a@example.com", "loyaltyTier": "gold"})

    assert (await raw.delete("/_sandbox/fields/loyaltyTier")).status_code == 200
    assert "loyaltyTier" not in described(sandbox)
    leads = (await raw.get("/_sandbox/leads")).json()["leads"]
    assert leads[0]["fields"] == {"email": "a@example.com"}

    added = await raw.post("/_sandbox/fields", json={"fields": [{"name": "loyaltyTier"}]})
    assert added.status_code == 200
    assert "loyaltyTier" in described(sandbox)


async def test_only_plain_custom_fields_can_be_deleted_or_added(raw: httpx.AsyncClient) -> None:
    assert (await raw.delete("/_sandbox/fields/email")).status_code == 400  # standard
    assert (await raw.delete("/_sandbox/fields/customerId")).status_code == 400  # searchable
    assert (await raw.delete("/_sandbox/fields/nothing")).status_code == 400
    twice = await raw.post("/_sandbox/fields", json={"fields": [{"name": "loyaltyTier"}]})
    assert twice.status_code == 400
    searchable = {"fields": [{"name": "memberNo", "searchable": True}]}
    assert (await raw.post("/_sandbox/fields", json=searchable)).status_code == 400
