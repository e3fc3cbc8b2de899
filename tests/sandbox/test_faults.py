"""Fault injection: codes, HTTP failures, dropped connections, delays, count and probability."""

from __future__ import annotations

import httpx
import pytest

from .conftest import error_code

DESCRIBE = "/rest/v1/leads/partitions.json"


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("601", "Access token invalid"),
        ("602", "Access token expired"),
        ("604", "Request time-out"),
        ("606", "Max rate limit '100' exceeded with in '20' secs"),
        ("607", "Daily quota reached"),
        ("608", "API Temporarily Unavailable"),
        ("611", "System error"),
        ("615", "Concurrent access limit '10' reached"),
    ],
)
async def test_code_faults(client: httpx.AsyncClient, code: str, message: str) -> None:
    await client.post("/_sandbox/faults", json=[{"path_prefix": "/rest/v1/leads", "code": code}])
    body = (await client.get(DESCRIBE)).json()
    assert body["errors"] == [{"code": code, "message": message}]
    assert (await client.get("/rest/v1/lists.json")).json()["success"] is True


async def test_count_limits_a_fault(client: httpx.AsyncClient) -> None:
    await client.post("/_sandbox/faults", json=[{"path_prefix": "/rest", "code": 608, "count": 2}])
    codes = [(await client.get(DESCRIBE)).json().get("errors") for _ in range(3)]
    assert [c[0]["code"] if c else None for c in codes] == ["608", "608", None]


async def test_skip_lets_the_first_matching_requests_pass(client: httpx.AsyncClient) -> None:
    await client.post(
        "/_sandbox/faults", json=[{"path_prefix": "/rest", "code": 608, "skip": 2, "count": 1}]
    )
    codes = [(await client.get(DESCRIBE)).json().get("errors") for _ in range(4)]
    assert [c[0]["code"] if c else None for c in codes] == [None, None, "608", None]


async def test_probability_zero_never_fires(client: httpx.AsyncClient) -> None:
    await client.post(
        "/_sandbox/faults", json=[{"path_prefix": "/rest", "code": 608, "probability": 0}]
    )
    assert (await client.get(DESCRIBE)).json()["success"] is True


@pytest.mark.parametrize("status", [502, 503])
async def test_http_status_faults(client: httpx.AsyncClient, status: int) -> None:
    await client.post(
        "/_sandbox/faults", json={"faults": [{"path_prefix": "/rest", "http_status": status}]}
    )
    response = await client.get(DESCRIBE)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("text/html")


async def test_dropped_connection_is_transport_error(client: httpx.AsyncClient) -> None:
    await client.post("/_sandbox/faults", json=[{"path_prefix": "/rest", "drop": True}])
    with pytest.raises(httpx.TransportError):
        await client.get(DESCRIBE)
    calls = (await client.get("/_sandbox/calls")).json()
    assert calls["by_code"]["dropped"] == 1
    assert calls["in_flight"] == 0


async def test_drop_as_code(client: httpx.AsyncClient) -> None:
    await client.post("/_sandbox/faults", json=[{"path_prefix": "/identity", "code": "drop"}])
    with pytest.raises(httpx.RemoteProtocolError):
        await client.get("/identity/oauth/token")


async def test_delay_raises_observed_concurrency(client: httpx.AsyncClient) -> None:
    import asyncio

    await client.post("/_sandbox/faults", json=[{"path_prefix": "/rest", "delay_ms": 30}])
    responses = await asyncio.gather(*(client.get(DESCRIBE) for _ in range(3)))
    assert all(r.json()["success"] for r in responses)
    assert (await client.get("/_sandbox/calls")).json()["peak_concurrency"] == 3


async def test_clear_faults(client: httpx.AsyncClient) -> None:
    await client.post("/_sandbox/faults", json=[{"path_prefix": "/rest", "code": 611}])
    assert error_code((await client.get(DESCRIBE)).json()) == "611"
    await client.delete("/_sandbox/faults")
    assert (await client.get(DESCRIBE)).json()["success"] is True


async def test_bad_fault_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/_sandbox/faults", json=[{"path_prefix": "/", "code": 999}])
    assert response.status_code == 400


async def test_asset_fault_uses_asset_envelope(client: httpx.AsyncClient) -> None:
    await client.post("/_sandbox/faults", json=[{"path_prefix": "/rest/asset", "code": 611}])
    body = (await client.get("/rest/asset/v1/staticLists.json")).json()
    assert body["warnings"] == []
    assert error_code(body) == "611"
