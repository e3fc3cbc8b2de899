"""Get Leads by filter type, Get Lead by id, Delete Leads, Describe, partitions, workspaces."""

from __future__ import annotations

import httpx

from .conftest import error_code, seed


async def test_filter_by_email_default_fields(client: httpx.AsyncClient) -> None:
    await seed(client, {"email": "a@example.com", "firstName": "A", "company": "Acme"})
    body = (
        await client.get(
            "/rest/v1/leads.json", params={"filterType": "email", "filterValues": "a@example.com"}
        )
    ).json()
    assert body["success"] is True
    [record] = body["result"]
    assert set(record) == {"id", "updatedAt", "lastName", "email", "createdAt", "firstName"}
    assert record["lastName"] is None
    assert record["createdAt"].endswith("Z")


async def test_fields_parameter_and_boolean_default(client: httpx.AsyncClient) -> None:
    await seed(client, {"email": "a@example.com", "customerId": "C1"})
    body = (
        await client.get(
            "/rest/v1/leads.json",
            params={"filterType": "customerId", "filterValues": "C1", "fields": "customerId,isVip"},
        )
    ).json()
    assert body["result"] == [{"id": 1, "customerId": "C1", "isVip": False}]


async def test_no_match_is_empty_result(client: httpx.AsyncClient) -> None:
    body = (
        await client.get("/rest/v1/leads.json", params={"filterType": "email", "filterValues": "x"})
    ).json()
    assert body == {"requestId": body["requestId"], "result": [], "success": True}


async def test_duplicates_all_returned(client: httpx.AsyncClient) -> None:
    await seed(
        client,
        {"email": "d@example.com", "updatedAt": "2025-01-01T00:00:00Z"},
        {"email": "d@example.com", "updatedAt": "2025-06-01T00:00:00Z", "partition": "EMEA"},
    )
    body = (
        await client.get(
            "/rest/v1/leads.json",
            params={
                "filterType": "email",
                "filterValues": "d@example.com",
                "fields": "updatedAt,leadPartitionId",
            },
        )
    ).json()
    assert body["result"] == [
        {"id": 1, "updatedAt": "2025-01-01T00:00:00Z", "leadPartitionId": 1},
        {"id": 2, "updatedAt": "2025-06-01T00:00:00Z", "leadPartitionId": 2},
    ]


async def test_unsearchable_filter_is_1011(client: httpx.AsyncClient) -> None:
    body = (
        await client.get(
            "/rest/v1/leads.json", params={"filterType": "createdAt", "filterValues": "x"}
        )
    ).json()
    assert body["errors"] == [{"code": "1011", "message": "Lookup field 'createdAt' not supported"}]


async def test_unknown_filter_is_1006(client: httpx.AsyncClient) -> None:
    body = (
        await client.get("/rest/v1/leads.json", params={"filterType": "nope", "filterValues": "x"})
    ).json()
    assert error_code(body) == "1006"


async def test_more_than_300_values(client: httpx.AsyncClient) -> None:
    values = ",".join(f"{i}@x.io" for i in range(301))
    body = (
        await client.post(
            "/rest/v1/leads.json",
            params={"_method": "GET"},
            data={"filterType": "email", "filterValues": values},
        )
    ).json()
    assert error_code(body) == "1003"


async def test_paging(client: httpx.AsyncClient) -> None:
    await seed(client, *({"email": "p@example.com"} for _ in range(5)))
    params = {"filterType": "email", "filterValues": "p@example.com", "batchSize": "2"}
    seen: list[int] = []
    pages = 0
    while True:
        body = (await client.get("/rest/v1/leads.json", params=params)).json()
        pages += 1
        seen += [r["id"] for r in body["result"]]
        if not body.get("moreResult"):
            break
        params["nextPageToken"] = body["nextPageToken"]
    assert seen == [1, 2, 3, 4, 5]
    assert pages == 3


async def test_post_method_get_with_long_query(client: httpx.AsyncClient) -> None:
    await seed(client, {"email": "a@example.com"})
    values = ",".join([f"user{i:04d}@some-long-domain.example.com" for i in range(299)])
    values += ",a@example.com"
    too_long = await client.get(
        "/rest/v1/leads.json", params={"filterType": "email", "filterValues": values}
    )
    assert too_long.status_code == 414
    body = (
        await client.post(
            "/rest/v1/leads.json?_method=GET",
            data={"filterType": "email", "filterValues": values},
        )
    ).json()
    assert [r["id"] for r in body["result"]] == [1]


async def test_get_lead_by_id(client: httpx.AsyncClient) -> None:
    await seed(client, {"email": "a@example.com", "title": "CEO"})
    body = (await client.get("/rest/v1/lead/1.json", params={"fields": "title"})).json()
    assert body["result"] == [{"id": 1, "title": "CEO"}]
    missing = (await client.get("/rest/v1/lead/99.json")).json()
    assert missing["result"] == []


async def test_delete_leads(client: httpx.AsyncClient) -> None:
    await seed(client, {"email": "a@example.com"})
    body = await client.post("/rest/v1/leads/delete.json", json={"input": [{"id": 1}, {"id": 7}]})
    assert body.json()["result"] == [
        {"id": 1, "status": "deleted"},
        {"id": 7, "status": "skipped", "reasons": [{"code": "1004", "message": "Lead not found"}]},
    ]
    assert (await client.get("/_sandbox/leads")).json()["leads"] == []


async def test_describe(client: httpx.AsyncClient) -> None:
    body = (await client.get("/rest/v1/leads/describe.json")).json()
    by_name = {f["rest"]["name"]: f for f in body["result"]}
    assert by_name["email"]["dataType"] == "email"
    assert by_name["email"]["length"] == 255
    assert by_name["leadPartitionId"]["dataType"] == "reference"
    assert by_name["createdAt"]["rest"]["readOnly"] is True
    assert "soap" not in by_name["ecids"]
    assert by_name["leadPartitionId"]["soap"]["name"] == "Lead Partition ID"
    types = {f["dataType"] for f in body["result"]}
    assert {
        "string",
        "text",
        "boolean",
        "integer",
        "float",
        "currency",
        "percent",
        "date",
        "datetime",
        "email",
        "phone",
        "url",
        "reference",
    } <= types


async def test_describe2_searchable_fields(client: httpx.AsyncClient) -> None:
    body = (await client.get("/rest/v1/leads/describe2.json")).json()
    [result] = body["result"]
    assert result["name"] == "API Lead"
    assert ["email"] in result["searchableFields"]
    assert ["customerId"] in result["searchableFields"]
    assert ["firstName"] not in result["searchableFields"]
    assert all(isinstance(key, list) for key in result["searchableFields"])
    email = next(f for f in result["fields"] if f["name"] == "email")
    assert email == {
        "name": "email",
        "displayName": "Email Address",
        "dataType": "email",
        "length": 255,
        "updateable": True,
        "crmManaged": False,
    }


async def test_partitions(client: httpx.AsyncClient) -> None:
    body = (await client.get("/rest/v1/leads/partitions.json")).json()
    assert body["result"][0] == {
        "id": 1,
        "name": "Default",
        "description": "Initial system lead partition",
    }
    assert len(body["result"]) == 3


async def test_update_partition(client: httpx.AsyncClient) -> None:
    await seed(client, {"email": "a@example.com"})
    body = (
        await client.post(
            "/rest/v1/leads/partitions.json",
            json={
                "input": [{"id": 1, "partitionName": "EMEA"}, {"id": 2, "partitionName": "EMEA"}]
            },
        )
    ).json()
    assert body["result"][0] == {"id": 1, "status": "updated"}
    assert body["result"][1]["reasons"][0]["code"] == "1004"
    leads = (await client.get("/_sandbox/leads")).json()["leads"]
    assert leads[0]["partition"] == "EMEA"


async def test_workspaces_bare_array(client: httpx.AsyncClient) -> None:
    body = (await client.get("/userservice/management/v1/users/workspaces.json")).json()
    assert isinstance(body, list)
    assert [w["name"] for w in body] == ["Default", "EMEA"]
    assert set(body[0]) == {
        "id",
        "name",
        "description",
        "globalViz",
        "status",
        "currencyInfo",
        "createdAt",
        "updatedAt",
    }


async def test_unknown_resource_is_610(client: httpx.AsyncClient) -> None:
    body = (await client.get("/rest/v1/nothing.json")).json()
    assert error_code(body) == "610"
    double = (await client.get("//rest/v1/leads/describe.json")).json()
    assert error_code(double) == "610"


async def test_text_look_ups_ignore_case_and_surrounding_spaces(client: httpx.AsyncClient) -> None:
    await seed(client, {"email": "Ann@Example.com", "customerId": "Cx-1 "})
    for filter_type, value in (("email", " ANN@example.COM"), ("customerId", "cX-1")):
        body = (
            await client.get(
                "/rest/v1/leads.json",
                params={"filterType": filter_type, "filterValues": value, "fields": "email"},
            )
        ).json()
        assert body["result"] == [{"id": 1, "email": "Ann@Example.com"}], filter_type


async def test_a_comma_in_filter_values_separates_two_values(client: httpx.AsyncClient) -> None:
    await seed(client, {"email": "a@example.com"}, {"email": "b@example.com"})
    body = (
        await client.get(
            "/rest/v1/leads.json",
            params={"filterType": "email", "filterValues": "a@example.com,b@example.com"},
        )
    ).json()
    assert [record["email"] for record in body["result"]] == ["a@example.com", "b@example.com"]
