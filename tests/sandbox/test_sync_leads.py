"""Sync Leads: actions, lookup fields, partitions, per-record outcomes and validation."""

from __future__ import annotations

import httpx
import pytest

from sandbox.app import Sandbox

from .conftest import error_code, fetch_token, seed, sync


async def test_create_then_update_by_email(client: httpx.AsyncClient) -> None:
    first = await sync(client, input=[{"email": "a@example.com", "firstName": "A"}])
    assert first == {
        "requestId": first["requestId"],
        "result": [{"id": 1, "status": "created"}],
        "success": True,
    }
    second = await sync(client, input=[{"email": "A@example.com", "lastName": "Z"}])
    assert second["result"] == [{"id": 1, "status": "updated"}]
    leads = (await client.get("/_sandbox/leads")).json()["leads"]
    assert leads[0]["fields"] == {"email": "A@example.com", "firstName": "A", "lastName": "Z"}


async def test_results_keep_input_order_and_mix(client: httpx.AsyncClient) -> None:
    await seed(client, {"email": "old@example.com"})
    body = await sync(
        client,
        input=[
            {"email": "new@example.com"},
            {"email": "old@example.com"},
            {"email": "bad", "firstName": "x"},
        ],
    )
    assert [r["status"] for r in body["result"]] == ["created", "updated", "skipped"]
    assert body["success"] is True
    assert "errors" not in body and "warnings" not in body


async def test_skipped_record_has_no_id(client: httpx.AsyncClient) -> None:
    body = await sync(client, input=[{"email": "x@example.com", "isVip": "other"}])
    assert body["result"] == [
        {
            "status": "skipped",
            "reasons": [
                {"code": "1003", "message": "Invalid value for field 'isVip' and value 'other'"}
            ],
        }
    ]


async def test_multiple_matches_skip_with_1007(client: httpx.AsyncClient) -> None:
    await seed(client, {"email": "dup@example.com"}, {"email": "dup@example.com"})
    for action in ("createOrUpdate", "updateOnly"):
        body = await sync(client, action=action, input=[{"email": "dup@example.com"}])
        assert body["result"] == [
            {
                "status": "skipped",
                "reasons": [{"code": "1007", "message": "Multiple lead match lookup criteria"}],
            }
        ]


async def test_create_only_with_existing_match_is_1005(client: httpx.AsyncClient) -> None:
    await seed(client, {"email": "a@example.com", "partition": "EMEA"})
    body = await sync(
        client, action="createOnly", partitionName="Default", input=[{"email": "a@example.com"}]
    )
    assert body["result"][0]["reasons"] == [{"code": "1005", "message": "Lead already exists"}]


async def test_create_duplicate_always_creates(client: httpx.AsyncClient) -> None:
    await seed(client, {"email": "a@example.com"})
    body = await sync(client, action="createDuplicate", input=[{"email": "a@example.com"}])
    assert body["result"] == [{"id": 2, "status": "created"}]


async def test_update_only_without_match_is_1004(client: httpx.AsyncClient) -> None:
    body = await sync(client, action="updateOnly", input=[{"email": "none@example.com"}])
    assert body["result"][0]["reasons"] == [{"code": "1004", "message": "Lead not found"}]


async def test_update_only_by_id(client: httpx.AsyncClient) -> None:
    [lead_id] = await seed(client, {"email": "a@example.com"})
    body = await sync(
        client, action="updateOnly", lookupField="id", input=[{"id": lead_id, "title": "CTO"}]
    )
    assert body["result"] == [{"id": lead_id, "status": "updated"}]
    missing = await sync(client, action="updateOnly", lookupField="id", input=[{"id": 999}])
    assert missing["result"][0]["reasons"][0]["code"] == "1004"


async def test_id_with_create_only_is_1003(client: httpx.AsyncClient) -> None:
    body = await sync(client, action="createOnly", input=[{"id": 5, "email": "a@example.com"}])
    assert body["result"][0]["status"] == "skipped"
    assert body["result"][0]["reasons"][0]["code"] == "1003"


async def test_custom_lookup_field(client: httpx.AsyncClient) -> None:
    await seed(client, {"email": "a@example.com", "customerId": "C-1"})
    body = await sync(
        client, lookupField="customerId", input=[{"customerId": "C-1", "firstName": "Ann"}]
    )
    assert body["result"] == [{"id": 1, "status": "updated"}]


async def test_unknown_lookup_field_is_1006(client: httpx.AsyncClient) -> None:
    body = await sync(client, lookupField="userId", input=[{"email": "a@example.com"}])
    assert body["errors"] == [{"code": "1006", "message": "Lookup field 'userId' not found"}]


async def test_unsearchable_lookup_field_is_1011(client: httpx.AsyncClient) -> None:
    body = await sync(client, lookupField="firstName", input=[{"firstName": "A"}])
    assert body["errors"] == [{"code": "1011", "message": "Lookup field 'firstName' not supported"}]


async def test_unknown_field_in_record_is_1006(client: httpx.AsyncClient) -> None:
    body = await sync(client, input=[{"email": "a@example.com", "shoeSize": 4}])
    assert body["result"][0]["reasons"] == [
        {"code": "1006", "message": "Field 'shoeSize' not found"}
    ]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("email", "not-an-email"),
        ("email", "jörg@example.com"),
        ("accountScore", 14.1),
        ("npsScore", "14c"),
        ("lastLoginAt", "yesterday"),
        ("discountRate", "100%"),
        ("isVip", "other"),
        ("lastPurchaseDate", "2024-13-01"),
        ("lifetimeValue", True),
        ("firstName", "x" * 256),
    ],
)
async def test_type_validation_1003(client: httpx.AsyncClient, field: str, value: object) -> None:
    record = {"email": "ok@example.com", field: value}
    body = await sync(client, lookupField="customerId", input=[record])
    reason = body["result"][0]["reasons"][0]
    assert reason["code"] == "1003"
    assert reason["message"].startswith(f"Invalid value for field '{field}' and value ")


@pytest.mark.parametrize(
    ("field", "value", "stored"),
    [
        ("accountScore", "42", 42),
        ("npsScore", 9.5, 9.5),
        ("isVip", "true", True),
        ("lastPurchaseDate", "2024-02-29", "2024-02-29"),
        ("lastLoginAt", "2024-02-29T10:00:00+01:00", "2024-02-29T09:00:00Z"),
        ("lastName", None, None),
    ],
)
async def test_valid_values_are_stored(
    client: httpx.AsyncClient, field: str, value: object, stored: object
) -> None:
    body = await sync(client, input=[{"email": "ok@example.com", field: value}])
    assert body["result"][0]["status"] == "created"
    lead = (await client.get("/rest/v1/lead/1.json", params={"fields": field})).json()
    assert lead["result"][0][field] == stored


async def test_read_only_field_is_rejected(client: httpx.AsyncClient) -> None:
    body = await sync(client, input=[{"email": "a@example.com", "sfdcLeadId": "00Q"}])
    assert body["result"][0]["reasons"][0]["code"] == "1003"


async def test_more_than_300_records(client: httpx.AsyncClient) -> None:
    records = [{"email": f"u{i}@example.com"} for i in range(301)]
    body = await sync(client, input=records)
    assert error_code(body) == "1003"


async def test_300_records_are_accepted(client: httpx.AsyncClient) -> None:
    records = [{"email": f"u{i}@example.com"} for i in range(300)]
    body = await sync(client, input=records)
    assert len(body["result"]) == 300


async def test_get_is_not_sync_and_put_is_605(client: httpx.AsyncClient) -> None:
    response = await client.put("/rest/v1/leads.json", json={"input": []})
    assert response.json()["errors"] == [{"code": "605", "message": "HTTP Method not supported"}]


async def test_invalid_json_and_content_type(client: httpx.AsyncClient) -> None:
    bad = await client.post(
        "/rest/v1/leads.json", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert error_code(bad.json()) == "609"
    form = await client.post("/rest/v1/leads.json", data={"input": "x"})
    assert error_code(form.json()) == "612"


async def test_partition_name_on_create(client: httpx.AsyncClient) -> None:
    await sync(client, partitionName="EMEA", input=[{"email": "a@example.com"}])
    leads = (await client.get("/_sandbox/leads")).json()["leads"]
    assert leads[0]["partition"] == "EMEA"
    lead = (await client.get("/rest/v1/lead/1.json", params={"fields": "leadPartitionId"})).json()
    assert lead["result"][0]["leadPartitionId"] == 2


async def test_unknown_partition_is_1008(client: httpx.AsyncClient) -> None:
    body = await sync(client, partitionName="Mars", input=[{"email": "a@example.com"}])
    assert body["result"][0]["reasons"] == [
        {"code": "1008", "message": "Access denied to partition 'Mars'"}
    ]


async def test_match_in_other_partition_is_1010(client: httpx.AsyncClient) -> None:
    await seed(client, {"email": "a@example.com", "partition": "EMEA"})
    body = await sync(client, partitionName="Default", input=[{"email": "a@example.com"}])
    assert body["result"][0]["reasons"][0]["code"] == "1010"
    same = await sync(client, partitionName="EMEA", input=[{"email": "a@example.com"}])
    assert same["result"] == [{"id": 1, "status": "updated"}]


async def test_update_only_ignores_partition_and_searches_all(
    client: httpx.AsyncClient,
) -> None:
    await seed(client, {"email": "a@example.com", "partition": "Partners"})
    body = await sync(
        client, action="updateOnly", partitionName="EMEA", input=[{"email": "a@example.com"}]
    )
    assert body["result"] == [{"id": 1, "status": "updated"}]
    leads = (await client.get("/_sandbox/leads")).json()["leads"]
    assert leads[0]["partition"] == "Partners"


async def test_partition_required_when_default_not_accessible(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/_sandbox/reset", json={"api_partitions": ["EMEA"]})
    token = (
        await client.get(
            "/identity/oauth/token",
            params={
                "grant_type": "client_credentials",
                "client_id": "sandbox-client-id",
                "client_secret": "sandbox-client-secret",
            },
        )
    ).json()["access_token"]
    client.headers["Authorization"] = f"Bearer {token}"
    body = await sync(client, input=[{"email": "a@example.com"}])
    assert body["result"][0]["reasons"][0]["code"] == "1009"
    ok = await sync(client, partitionName="EMEA", input=[{"email": "a@example.com"}])
    assert ok["result"][0]["status"] == "created"


async def test_indexes_follow_updates(client: httpx.AsyncClient, sandbox: Sandbox) -> None:
    await sync(client, input=[{"email": "a@example.com", "customerId": "C1"}])
    await sync(client, lookupField="customerId", input=[{"customerId": "C1", "email": "b@x.io"}])
    assert sandbox.state.leads.find("email", "a@example.com") == []
    assert sandbox.state.leads.find("email", "B@X.IO") == [1]


async def test_match_outside_api_partitions_is_1008(client: httpx.AsyncClient) -> None:
    await client.post("/_sandbox/reset", json={"api_partitions": ["Default"]})
    client.headers["Authorization"] = "Bearer " + await fetch_token(client)
    await seed(client, {"email": "a@example.com", "partition": "EMEA"})
    body = await sync(client, input=[{"email": "a@example.com"}])
    assert body["result"][0]["reasons"] == [
        {"code": "1008", "message": "Access denied to partition 'EMEA'"}
    ]


async def test_async_processing_answers_like_sync(client: httpx.AsyncClient) -> None:
    body = await sync(client, asyncProcessing=True, input=[{"email": "a@example.com"}])
    assert body["result"] == [{"id": 1, "status": "created"}]


async def test_same_key_twice_in_one_batch(client: httpx.AsyncClient) -> None:
    body = await sync(client, input=[{"email": "a@example.com"}, {"email": "a@example.com"}])
    assert body["result"] == [{"id": 1, "status": "created"}, {"id": 1, "status": "updated"}]


async def test_unknown_field_can_reject_the_whole_request(client: httpx.AsyncClient) -> None:
    await client.post("/_sandbox/reset", json={"unknown_field_rejects_request": True})
    client.headers["Authorization"] = f"Bearer {await fetch_token(client)}"
    body = await sync(
        client, input=[{"email": "a@example.com"}, {"email": "b@example.com", "shoeSize": 4}]
    )
    assert body["success"] is False
    assert body["errors"] == [{"code": "1006", "message": "Field 'shoeSize' not found"}]
    assert (await client.get("/_sandbox/leads")).json()["leads"] == []
