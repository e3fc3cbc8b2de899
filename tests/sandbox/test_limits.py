"""Rate window, concurrency, daily quota, body and URI limits, and how calls are counted."""

from __future__ import annotations

import asyncio
from datetime import datetime
from zoneinfo import ZoneInfo

import httpx
import pytest

from sandbox import ManualClock, SandboxSettings, asgi_transport, create_app

from .conftest import BASE_URL, error_code, fetch_token

DESCRIBE = "/rest/v1/leads/partitions.json"


async def _authorize(client: httpx.AsyncClient) -> None:
    client.headers["Authorization"] = f"Bearer {await fetch_token(client)}"


async def test_sliding_window_606(client: httpx.AsyncClient, clock: ManualClock) -> None:
    await client.post("/_sandbox/reset", json={"calls_per_window": 3, "window_seconds": 2})
    await _authorize(client)
    for _ in range(3):
        assert (await client.get(DESCRIBE)).json()["success"] is True
        clock.advance(0.5)
    refused = (await client.get(DESCRIBE)).json()
    assert refused["errors"] == [
        {"code": "606", "message": "Max rate limit '3' exceeded with in '2' secs"}
    ]
    clock.advance(0.5)  # the first call is now 2 s old and leaves the window
    assert (await client.get(DESCRIBE)).json()["success"] is True


async def test_default_606_message(client: httpx.AsyncClient) -> None:
    for _ in range(100):
        await client.get(DESCRIBE)
    body = (await client.get(DESCRIBE)).json()
    assert body["errors"] == [
        {"code": "606", "message": "Max rate limit '100' exceeded with in '20' secs"}
    ]
    calls = (await client.get("/_sandbox/calls")).json()
    assert calls["counted"] == 100
    assert calls["by_code"] == {"success": 101, "606": 1}  # one is the identity call


async def test_daily_quota_607_and_reset_at_chicago_midnight() -> None:
    chicago = ZoneInfo("America/Chicago")
    # 23:59:00 Central Daylight Time, 2026-07-01
    start = datetime(2026, 7, 1, 23, 59, tzinfo=chicago).timestamp()
    clock = ManualClock(start)
    app = create_app(SandboxSettings(daily_quota=2), clock=clock)
    async with httpx.AsyncClient(transport=asgi_transport(app), base_url=BASE_URL) as client:
        await _authorize(client)
        for _ in range(2):
            assert (await client.get(DESCRIBE)).json()["success"] is True
        refused = (await client.get(DESCRIBE)).json()
        assert refused["errors"] == [{"code": "607", "message": "Daily quota reached"}]
        clock.advance(59)  # 23:59:59 CDT = 04:59:59 UTC: still the same Chicago day
        assert error_code((await client.get(DESCRIBE)).json()) == "607"
        clock.advance(1)  # midnight in Chicago (05:00 UTC in summer)
        assert (await client.get(DESCRIBE)).json()["success"] is True


async def test_concurrency_615(client: httpx.AsyncClient) -> None:
    await client.post("/_sandbox/reset", json={"concurrency": 2, "latency_ms": 50})
    await _authorize(client)
    bodies = await asyncio.gather(*(client.get(DESCRIBE) for _ in range(4)))
    codes = sorted(r.json().get("errors", [{"code": "ok"}])[0]["code"] for r in bodies)
    assert codes == ["615", "615", "ok", "ok"]
    refused = next(r.json() for r in bodies if not r.json()["success"])
    assert refused["errors"][0]["message"] == "Concurrent access limit '2' reached"
    calls = (await client.get("/_sandbox/calls")).json()
    # Two sleep in flight; each refused call is the third at the moment it arrives.
    assert calls["peak_concurrency"] == 3
    assert calls["counted"] == 2


async def test_uncounted_codes_do_not_use_quota(client: httpx.AsyncClient) -> None:
    await client.put("/rest/v1/leads.json")  # 605
    await client.get(DESCRIBE, headers={"Authorization": "Bearer bad"})  # 601
    await client.post("/_sandbox/faults", json=[{"path_prefix": "/rest", "code": 611, "count": 1}])
    await client.get(DESCRIBE)
    await client.get(DESCRIBE)
    calls = (await client.get("/_sandbox/calls")).json()
    assert calls["counted"] == 1
    assert calls["quota_used"] == 1
    assert calls["by_code"] == {"605": 1, "601": 1, "611": 1, "success": 2}  # + identity
    assert calls["by_endpoint"]["GET /rest/v1/leads/partitions.json"]["calls"] == 3


async def test_rejected_calls_can_be_counted(client: httpx.AsyncClient) -> None:
    await client.post("/_sandbox/reset", json={"calls_per_window": 1, "count_rejected_calls": True})
    await _authorize(client)
    await client.get(DESCRIBE)
    await client.get(DESCRIBE)
    calls = (await client.get("/_sandbox/calls")).json()
    assert calls["counted"] == 2


async def test_body_over_1mb_is_413(client: httpx.AsyncClient) -> None:
    big = [{"email": f"{i}@example.com", "profileNotes": "x" * 4000} for i in range(300)]
    response = await client.post("/rest/v1/leads.json", json={"input": big})
    assert response.status_code == 413
    calls = (await client.get("/_sandbox/calls")).json()
    assert calls["counted"] == 0


@pytest.mark.parametrize("limit", [1, 8192])
async def test_uri_over_8kb_is_414(client: httpx.AsyncClient, limit: int) -> None:
    values = "x" * (8192 if limit == 8192 else 10)
    if limit == 1:
        await client.post("/_sandbox/reset", json={"uri_limit": 50})
        await _authorize(client)
    response = await client.get(
        "/rest/v1/leads.json", params={"filterType": "email", "filterValues": values}
    )
    assert response.status_code == 414
    assert "414 Request-URI Too Large" in response.text


async def test_reset_rejects_unknown_settings(client: httpx.AsyncClient) -> None:
    response = await client.post("/_sandbox/reset", json={"speed": 1})
    assert response.status_code == 400
