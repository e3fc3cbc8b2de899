"""Lead endpoints third-party clients use: DELETE leads, Get Deleted Leads with paging tokens,
Merge Leads, Get Leads by List, browse folders.

Sources:
https://experienceleague.adobe.com/en/docs/marketo-developer/marketo/rest/lead-database/leads
(Delete Leads by POST and DELETE, Merge Leads: winner keeps its values, memberships move, at most
25 losing ids, 1080 beyond),
https://experienceleague.adobe.com/en/docs/experience-cloud-kcs/kbarticles/ka-28666
(blank winner fields take the first listed loser's value),
https://experienceleague.adobe.com/en/docs/marketo-developer/marketo/rest/paging-tokens
(date-based token from Get Paging Token; Get Deleted Leads pages with it),
https://experienceleague.adobe.com/en/docs/marketo-developer/marketo/rest/lead-database/list-membership
(Get Leads by List: fields, batchSize, nextPageToken),
https://experienceleague.adobe.com/en/docs/marketo-developer/marketo/rest/assets/folders
(browse folders: root, maxDepth, maxReturn, offset, workSpace).
"""

from __future__ import annotations

from typing import Any

import httpx

from sandbox import ManualClock

from .conftest import create_list, error_code, seed


async def test_delete_verb_beside_post_delete(client: httpx.AsyncClient) -> None:
    ids = await seed(client, {"email": "a@example.com"}, {"email": "b@example.com"})
    body = (
        await client.request("DELETE", "/rest/v1/leads.json", json={"input": [{"id": ids[0]}]})
    ).json()
    assert body["result"] == [{"id": ids[0], "status": "deleted"}]
    again = (
        await client.post("/rest/v1/leads/delete.json", json={"input": [{"id": ids[0]}]})
    ).json()
    assert again["result"][0]["reasons"][0]["code"] == "1004"
    remaining = (await client.get("/_sandbox/leads")).json()["leads"]
    assert [lead["id"] for lead in remaining] == [ids[1]]


async def test_deleted_leads_through_a_date_paging_token(
    client: httpx.AsyncClient, clock: ManualClock
) -> None:
    ids = await seed(
        client,
        {"email": "old@example.com", "firstName": "Old", "lastName": "One"},
        *({"email": f"p{n}@example.com"} for n in range(3)),
    )
    await client.post("/rest/v1/leads/delete.json", json={"input": [{"id": ids[0]}]})
    clock.advance(1800)
    token = (
        await client.get(
            "/rest/v1/activities/pagingtoken.json", params={"sinceDatetime": "2026-01-01T00:15:00Z"}
        )
    ).json()
    assert token["success"] is True and set(token) == {"requestId", "success", "nextPageToken"}
    await client.post("/rest/v1/leads/delete.json", json={"input": [{"id": i} for i in ids[1:]]})
    first = (
        await client.get(
            "/rest/v1/activities/deletedleads.json",
            params={"nextPageToken": token["nextPageToken"], "batchSize": 2},
        )
    ).json()
    assert [item["leadId"] for item in first["result"]] == ids[1:3]
    assert first["moreResult"] is True
    assert first["result"][0]["activityTypeId"] == 37
    assert first["result"][0]["activityDate"] == "2026-01-01T00:30:00Z"
    second = (
        await client.get(
            "/rest/v1/activities/deletedleads.json",
            params={"nextPageToken": first["nextPageToken"]},
        )
    ).json()
    assert [item["leadId"] for item in second["result"]] == [ids[3]]
    assert second["moreResult"] is False
    # The last token keeps its place: later deletions show up with it, earlier ones never.
    empty = (
        await client.get(
            "/rest/v1/activities/deletedleads.json",
            params={"nextPageToken": second["nextPageToken"]},
        )
    ).json()
    assert "result" not in empty and empty["moreResult"] is False
    since_start = (
        await client.get(
            "/rest/v1/activities/pagingtoken.json", params={"sinceDatetime": "2025-12-31T00:00:00Z"}
        )
    ).json()["nextPageToken"]
    everything = (
        await client.get(
            "/rest/v1/activities/deletedleads.json", params={"nextPageToken": since_start}
        )
    ).json()
    assert everything["result"][0]["primaryAttributeValue"] == "Old One"
    assert len(everything["result"]) == 4


async def test_paging_token_errors(client: httpx.AsyncClient) -> None:
    blank = (await client.get("/rest/v1/activities/pagingtoken.json")).json()
    assert error_code(blank) == "701"
    bad = (
        await client.get("/rest/v1/activities/deletedleads.json", params={"nextPageToken": "zz!"})
    ).json()
    assert error_code(bad) == "1003"


async def _merge(client: httpx.AsyncClient, winner: int, **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = (
        await client.post(f"/rest/v1/leads/{winner}/merge.json", params=params)
    ).json()
    return body


async def test_merge_moves_memberships_and_fills_blanks(client: httpx.AsyncClient) -> None:
    winner, first, second = await seed(
        client,
        {"email": "w@example.com", "firstName": "Win"},
        {"email": "l1@example.com", "firstName": "Lose", "title": "Electrician"},
        {"email": "l2@example.com", "title": "Plumber", "city": "Lyon"},
    )
    members = await create_list(client, "Members")
    await client.post(f"/rest/v1/lists/{members}/leads.json", json={"input": [{"id": second}]})
    body = await _merge(client, winner, leadIds=f"{first},{second}", mergeInCRM="false")
    assert set(body) == {"requestId", "success"} and body["success"] is True
    leads = (await client.get("/_sandbox/leads")).json()["leads"]
    assert [lead["id"] for lead in leads] == [winner]
    assert leads[0]["fields"] == {
        "email": "w@example.com",
        "firstName": "Win",
        "title": "Electrician",
        "city": "Lyon",
    }
    lists = (await client.get("/_sandbox/lists")).json()["lists"]
    assert lists[0]["members"] == [winner]
    # The losers' e-mail addresses no longer find anyone.
    found = (
        await client.get(
            "/rest/v1/leads.json", params={"filterType": "email", "filterValues": "l1@example.com"}
        )
    ).json()
    assert found["result"] == []


async def test_merge_errors(client: httpx.AsyncClient) -> None:
    ids = await seed(client, *({"email": f"m{n}@example.com"} for n in range(27)))
    assert error_code(await _merge(client, 999, leadId=str(ids[1]))) == "1004"
    assert error_code(await _merge(client, ids[0], leadId="999")) == "1004"
    assert error_code(await _merge(client, ids[0])) == "701"
    assert error_code(await _merge(client, ids[0], leadIds=str(ids[0]))) == "1003"
    too_many = ",".join(str(i) for i in ids[1:27])
    assert error_code(await _merge(client, ids[0], leadIds=too_many)) == "1080"
    assert len((await client.get("/_sandbox/leads")).json()["leads"]) == 27


async def test_leads_by_list_with_fields_and_paging(client: httpx.AsyncClient) -> None:
    ids = await seed(client, *({"email": f"l{n}@example.com", "city": f"C{n}"} for n in range(5)))
    list_id = await create_list(client, "Paged")
    await client.post(
        f"/rest/v1/lists/{list_id}/leads.json", json={"input": [{"id": i} for i in ids]}
    )
    seen: list[dict[str, Any]] = []
    params = {"fields": "email,city", "batchSize": "2"}
    while True:
        page = (await client.get(f"/rest/v1/lists/{list_id}/leads.json", params=params)).json()
        seen.extend(page["result"])
        if "nextPageToken" not in page:
            break
        assert page["moreResult"] is True
        params["nextPageToken"] = page["nextPageToken"]
    assert seen == [
        {"id": i, "email": f"l{n}@example.com", "city": f"C{n}"} for n, i in enumerate(ids)
    ]


async def test_browse_folders(client: httpx.AsyncClient) -> None:
    every = (await client.get("/rest/asset/v1/folders.json")).json()
    assert every["errors"] == [] and every["warnings"] == []
    assert [f["id"] for f in every["result"]] == [10, 11, 12, 13]
    created = (
        await client.post(
            "/rest/asset/v1/folders.json",
            data={"name": "Deep", "parent": '{"id":11,"type":"Folder"}'},
        )
    ).json()["result"][0]["id"]
    shallow = (
        await client.get(
            "/rest/asset/v1/folders.json",
            params={"root": '{"id":10,"type":"Folder"}', "maxDepth": "1"},
        )
    ).json()
    assert [f["id"] for f in shallow["result"]] == [10, 11]
    deep = (
        await client.get(
            "/rest/asset/v1/folders.json", params={"root": '{"id":10,"type":"Folder"}'}
        )
    ).json()
    assert [f["id"] for f in deep["result"]] == [10, 11, created]
    emea = (await client.get("/rest/asset/v1/folders.json", params={"workSpace": "EMEA"})).json()
    assert [f["name"] for f in emea["result"]] == ["Lead Database", "Group Lists"]
    paged = (
        await client.get("/rest/asset/v1/folders.json", params={"offset": "4", "maxReturn": "2"})
    ).json()
    assert [f["id"] for f in paged["result"]] == [created]
    beyond = (await client.get("/rest/asset/v1/folders.json", params={"offset": "50"})).json()
    assert beyond["warnings"] == ["No assets found for the given search criteria."]
