"""Usage API: daily and weekly usage per API user, errors per code, another integration's usage.

Source: https://experienceleague.adobe.com/en/docs/marketo-developer/marketo/rest/lead-database/usage
(`/rest/v1/stats/usage.json`, `/usage/last7days.json`, `/errors.json`, `/errors/last7days.json`;
each result element is one day with a total and a per-user or per-code breakdown). The day and the
daily quota it shares reset at midnight US Central (reference S3/S5).
"""

from __future__ import annotations

from typing import Any

import httpx

from sandbox import ManualClock, SandboxSettings

from .conftest import error_code, fetch_token

ME = SandboxSettings().api_user
TODAY = "2025-12-31"  # conftest START is 2026-01-01T00:00Z, still Dec 31 in Chicago


async def _result(client: httpx.AsyncClient, path: str) -> list[dict[str, Any]]:
    body = (await client.get(path)).json()
    assert body["success"] is True, body
    result: list[dict[str, Any]] = body["result"]
    return result


async def test_daily_usage_counts_our_calls_per_user(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        await client.get("/rest/v1/leads/partitions.json")
    (today,) = await _result(client, "/rest/v1/stats/usage.json")
    assert today == {"date": TODAY, "total": 3, "users": [{"userId": ME, "count": 3}]}
    # The usage call itself shows in the next one.
    (again,) = await _result(client, "/rest/v1/stats/usage.json")
    assert again["total"] == 4


async def test_uncounted_answers_stay_out_of_usage_but_errors_are_listed(
    client: httpx.AsyncClient, raw: httpx.AsyncClient
) -> None:
    await raw.get("/rest/v1/leads/partitions.json", headers={"Authorization": "Bearer nope"})
    await client.get("/rest/v1/leads.json", params={"filterType": "nofield", "filterValues": "1"})
    (usage,) = await _result(client, "/rest/v1/stats/usage.json")
    assert usage["total"] == 1  # the 1006 is counted, the 601 is not
    (errors,) = await _result(client, "/rest/v1/stats/errors.json")
    assert errors == {
        "date": TODAY,
        "total": 2,
        "errors": [{"errorCode": "1006", "count": 1}, {"errorCode": "601", "count": 1}],
    }


async def test_per_endpoint_counts_in_the_control_dump(client: httpx.AsyncClient) -> None:
    await client.get("/rest/v1/leads/partitions.json")
    await client.get("/rest/v1/leads/describe.json")
    await client.get("/rest/v1/leads/describe.json")
    dump = (await client.get("/_sandbox/usage")).json()
    assert dump[TODAY]["calls"][ME] == {
        "GET /rest/v1/leads/partitions.json": 1,
        "GET /rest/v1/leads/describe.json": 2,
    }


async def test_seeded_integration_spends_the_shared_daily_quota(
    client: httpx.AsyncClient, raw: httpx.AsyncClient
) -> None:
    await raw.post("/_sandbox/reset", json={"daily_quota": 10})
    seeded = await raw.post("/_sandbox/usage", json={"userId": "etl@example.com", "count": 9})
    assert seeded.json() == {"date": TODAY, "users": {"etl@example.com": 9}}
    token = await fetch_token(raw)
    auth = {"Authorization": f"Bearer {token}"}
    (usage,) = (await raw.get("/rest/v1/stats/usage.json", headers=auth)).json()["result"]
    assert usage["users"] == [{"userId": "etl@example.com", "count": 9}]
    assert usage["total"] == 9
    refused = await raw.get("/rest/v1/leads/partitions.json", headers=auth)
    assert error_code(refused.json()) == "607"


async def test_last_seven_days_newest_first(
    client: httpx.AsyncClient, raw: httpx.AsyncClient, clock: ManualClock
) -> None:
    await raw.post(
        "/_sandbox/usage", json={"userId": "crm@example.com", "count": 40, "date": "2025-12-29"}
    )
    await client.get("/rest/v1/leads/partitions.json")
    clock.advance(86_400)
    client.headers["Authorization"] = f"Bearer {await fetch_token(raw)}"
    week = await _result(client, "/rest/v1/stats/usage/last7days.json")
    assert [day["date"] for day in week] == [
        "2026-01-01",
        "2025-12-31",
        "2025-12-30",
        "2025-12-29",
        "2025-12-28",
        "2025-12-27",
        "2025-12-26",
    ]
    assert [day["total"] for day in week] == [0, 1, 0, 40, 0, 0, 0]
    assert week[3]["users"] == [{"userId": "crm@example.com", "count": 40}]
    errors = await _result(client, "/rest/v1/stats/errors/last7days.json")
    assert len(errors) == 7
    assert all(day["errors"] == [] for day in errors)


async def test_seed_rejects_bad_input(raw: httpx.AsyncClient) -> None:
    for body in (
        {"count": 1},
        {"userId": "x", "count": -1},
        {"userId": "x", "count": 1, "date": "x"},
    ):
        assert (await raw.post("/_sandbox/usage", json=body)).status_code == 400
