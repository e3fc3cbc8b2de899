"""Static list membership, members paging, lists.json and the Asset API (lists, folders)."""

from __future__ import annotations

import httpx

from .conftest import create_list, error_code, seed


async def test_add_by_query_ids_is_idempotent(client: httpx.AsyncClient) -> None:
    await seed(client, {"email": "a@example.com"})
    list_id = await create_list(client, "L")
    for _ in range(2):
        body = (
            await client.post(f"/rest/v1/lists/{list_id}/leads.json", params={"id": ["1", "9"]})
        ).json()
        assert body["result"] == [
            {"id": 1, "status": "added"},
            {
                "id": 9,
                "status": "skipped",
                "reasons": [{"code": "1004", "message": "Lead not found"}],
            },
        ]
    lists = (await client.get("/_sandbox/lists")).json()["lists"]
    assert lists[0]["members"] == [1]


async def test_add_and_remove_by_json_body(client: httpx.AsyncClient) -> None:
    await seed(client, {"email": "a@example.com"}, {"email": "b@example.com"})
    list_id = await create_list(client, "L")
    added = await client.post(f"/rest/v1/lists/{list_id}/leads.json", json={"input": [{"id": 1}]})
    assert added.json()["result"] == [{"id": 1, "status": "added"}]
    removed = await client.request(
        "DELETE", f"/rest/v1/lists/{list_id}/leads.json", json={"input": [{"id": 1}, {"id": 2}]}
    )
    assert removed.json()["result"] == [
        {"id": 1, "status": "removed"},
        {
            "id": 2,
            "status": "skipped",
            "reasons": [{"code": "1015", "message": "Lead not in list"}],
        },
    ]


async def test_remove_by_repeated_query_ids(client: httpx.AsyncClient) -> None:
    await seed(client, {"email": "a@example.com"}, {"email": "b@example.com"})
    list_id = await create_list(client, "L")
    await client.post(f"/rest/v1/lists/{list_id}/leads.json", params={"id": ["1", "2"]})
    body = (
        await client.delete(f"/rest/v1/lists/{list_id}/leads.json", params={"id": ["1", "2"]})
    ).json()
    assert [r["status"] for r in body["result"]] == ["removed", "removed"]


async def test_is_member(client: httpx.AsyncClient) -> None:
    await seed(client, {"email": "a@example.com"}, {"email": "b@example.com"})
    list_id = await create_list(client, "L")
    await client.post(f"/rest/v1/lists/{list_id}/leads.json", params={"id": "1"})
    body = (
        await client.get(
            f"/rest/v1/lists/{list_id}/leads/ismember.json", params={"id": ["1", "2", "3"]}
        )
    ).json()
    assert [r.get("status") for r in body["result"]] == ["memberof", "notmemberof", "skipped"]


async def test_unknown_list_is_1013(client: httpx.AsyncClient) -> None:
    body = (await client.post("/rest/v1/lists/4242/leads.json", params={"id": "1"})).json()
    assert error_code(body) == "1013"


async def test_more_than_300_ids(client: httpx.AsyncClient) -> None:
    list_id = await create_list(client, "L")
    body = (
        await client.post(
            f"/rest/v1/lists/{list_id}/leads.json",
            json={"input": [{"id": i} for i in range(301)]},
        )
    ).json()
    assert error_code(body) == "1003"


async def test_members_paging_on_both_paths(client: httpx.AsyncClient) -> None:
    await seed(client, *({"email": f"{i}@example.com"} for i in range(5)))
    list_id = await create_list(client, "L")
    await client.post(
        f"/rest/v1/lists/{list_id}/leads.json", params={"id": ["5", "1", "3", "2", "4"]}
    )
    for prefix in ("lists", "list"):
        params = {"batchSize": "2", "fields": "email"}
        seen: list[int] = []
        while True:
            body = await client.get(f"/rest/v1/{prefix}/{list_id}/leads.json", params=params)
            data = body.json()
            seen += [r["id"] for r in data["result"]]
            if not data.get("moreResult"):
                break
            params["nextPageToken"] = data["nextPageToken"]
        assert seen == [5, 1, 3, 2, 4]
    form = await client.post(
        f"/rest/v1/list/{list_id}/leads.json",
        data={"listId": str(list_id), "_method": "GET", "batchSize": "300"},
    )
    assert len(form.json()["result"]) == 5


async def test_lead_db_lists(client: httpx.AsyncClient) -> None:
    list_id = await create_list(client, "Alpha")
    await create_list(client, "Beta", folder_id=13)
    body = (await client.get("/rest/v1/lists.json", params={"name": "Alpha"})).json()
    assert "errors" not in body
    [record] = body["result"]
    assert record["id"] == list_id
    assert record["workspaceName"] == "Default"
    assert record["createdAt"].endswith("Z") and "+0000" not in record["createdAt"]
    emea = (await client.get("/rest/v1/lists.json", params={"workspaceName": "EMEA"})).json()
    assert [r["name"] for r in emea["result"]] == ["Beta"]


async def test_asset_create_list_record(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/rest/asset/v1/staticLists.json",
        data={"name": "Audience", "folder": '{"id":11,"type":"Folder"}', "description": "d"},
    )
    body = response.json()
    assert body["errors"] == [] and body["warnings"] == []
    [record] = body["result"]
    assert record["folder"] == {"id": 11, "type": "Folder"}
    assert record["workspace"] == "Default"
    assert record["createdAt"].endswith("Z+0000")
    assert record["computedUrl"].endswith(f"#ST{record['id']}A1")


async def test_asset_duplicate_name_is_709(client: httpx.AsyncClient) -> None:
    await create_list(client, "Same")
    body = (
        await client.post(
            "/rest/asset/v1/staticLists.json",
            data={"name": "Same", "folder": '{"id":11,"type":"Folder"}'},
        )
    ).json()
    assert body["errors"] == [
        {"code": "709", "message": "Static List with the same name already exists"}
    ]


async def test_asset_unknown_folder_is_710(client: httpx.AsyncClient) -> None:
    body = (
        await client.post(
            "/rest/asset/v1/staticLists.json",
            data={"name": "X", "folder": '{"id":999,"type":"Folder"}'},
        )
    ).json()
    assert error_code(body) == "710"
    assert body["warnings"] == []


async def test_asset_by_name(client: httpx.AsyncClient) -> None:
    list_id = await create_list(client, "Found")
    found = await client.get("/rest/asset/v1/staticList/byName.json", params={"name": "Found"})
    assert found.json()["result"][0]["id"] == list_id
    missing = (
        await client.get("/rest/asset/v1/staticList/byName.json", params={"name": "found"})
    ).json()
    assert missing == {
        "requestId": missing["requestId"],
        "success": True,
        "errors": [],
        "warnings": ["No assets found for the given search criteria."],
    }


async def test_asset_by_id_update_browse_delete(client: httpx.AsyncClient) -> None:
    list_id = await create_list(client, "One")
    got = (await client.get(f"/rest/asset/v1/staticList/{list_id}.json")).json()
    assert got["result"][0]["name"] == "One"
    renamed = (
        await client.post(f"/rest/asset/v1/staticList/{list_id}.json", data={"name": "Two"})
    ).json()
    assert renamed["result"][0]["name"] == "Two"
    browse = (await client.get("/rest/asset/v1/staticLists.json")).json()
    assert [r["name"] for r in browse["result"]] == ["Two"]
    deleted = (await client.post(f"/rest/asset/v1/staticList/{list_id}/delete.json")).json()
    assert deleted["result"] == [{"id": list_id}]
    gone = (await client.get(f"/rest/asset/v1/staticList/{list_id}.json")).json()
    assert "result" not in gone


async def test_folders_by_name_and_create(client: httpx.AsyncClient) -> None:
    body = (
        await client.get(
            "/rest/asset/v1/folder/byName.json", params={"name": "Group Lists", "workSpace": "EMEA"}
        )
    ).json()
    [folder] = body["result"]
    assert folder["path"] == "/Lead Database/EMEA/Group Lists"
    assert folder["workspace"] == "EMEA"
    assert folder["folderId"] == {"id": folder["id"], "type": "Folder"}
    created = (
        await client.post(
            "/rest/asset/v1/folders.json",
            data={"name": "CDP", "parent": f'{{"id":{folder["id"]},"type":"Folder"}}'},
        )
    ).json()
    assert created["result"][0]["path"] == "/Lead Database/EMEA/Group Lists/CDP"
    list_id = await create_list(client, "In CDP", folder_id=created["result"][0]["id"])
    asset = (await client.get(f"/rest/asset/v1/staticList/{list_id}.json")).json()
    assert asset["result"][0]["workspace"] == "EMEA"
    none = (await client.get("/rest/asset/v1/folder/byName.json", params={"name": "Zz"})).json()
    assert none["warnings"] == ["No assets found for the given search criteria."]


async def test_deleting_a_lead_removes_membership(client: httpx.AsyncClient) -> None:
    await seed(client, {"email": "a@example.com"})
    list_id = await create_list(client, "L")
    await client.post(f"/rest/v1/lists/{list_id}/leads.json", params={"id": "1"})
    await client.post("/rest/v1/leads/delete.json", params={"id": "1"})
    assert (await client.get("/_sandbox/lists")).json()["lists"][0]["members"] == []
