"""Bulk Lead Extract: create / enqueue / status / file / cancel, filters, queue and daily limits.

Sources:
https://experienceleague.adobe.com/en/docs/marketo-developer/marketo/rest/bulk-extract/bulk-extract
(2 jobs processing, 10 queued including those processing, 1029 "Too many jobs in queue",
500 MB a day shared by all exports, 1029 "Export daily quota exceeded" until the day resets,
files kept seven days, a file is written whole with a SHA-256 checksum in the status), and
https://experienceleague.adobe.com/en/docs/marketo-developer/marketo/rest/bulk-extract/bulk-lead-extract
(filters createdAt / updatedAt of 31 days at most, staticListId, staticListName; fields,
columnHeaderNames, format). "Job already queued" is the newer 1029 reason (reference S3).
"""

from __future__ import annotations

import csv
import hashlib
import io
from typing import Any

import httpx

from sandbox import ManualClock

from .conftest import create_list, error_code, fetch_token, seed


async def _create(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    body.setdefault("fields", ["id", "email"])
    data: dict[str, Any] = (
        await client.post("/bulk/v1/leads/export/create.json", json=body)
    ).json()
    return data


async def _call(client: httpx.AsyncClient, job: str, action: str) -> dict[str, Any]:
    method = "GET" if action == "status" else "POST"
    data: dict[str, Any] = (
        await client.request(method, f"/bulk/v1/leads/export/{job}/{action}.json")
    ).json()
    return data


async def _list_job(client: httpx.AsyncClient, list_id: int) -> str:
    created = await _create(client, filter={"staticListId": list_id})
    assert created["success"] is True, created
    job: str = created["result"][0]["exportId"]
    return job


async def test_static_list_extract_lifecycle(client: httpx.AsyncClient, clock: ManualClock) -> None:
    ids = await seed(
        client,
        {"email": "a@example.com", "firstName": "Ann", "isVip": True},
        {"email": "b@example.com"},
        {"email": "c@example.com", "firstName": "Cy, Jr."},
    )
    list_id = await create_list(client, "Export me")
    await client.post(
        f"/rest/v1/lists/{list_id}/leads.json", json={"input": [{"id": ids[2]}, {"id": ids[0]}]}
    )
    created = await _create(
        client,
        fields=["id", "email", "firstName", "isVip"],
        columnHeaderNames={"firstName": "First Name"},
        filter={"staticListId": list_id},
    )
    job = created["result"][0]
    assert set(job) == {"exportId", "format", "status", "createdAt"}
    assert (job["format"], job["status"]) == ("CSV", "Created")
    job_id = job["exportId"]
    assert (await _call(client, job_id, "status"))["result"][0]["status"] == "Created"
    queued = await _call(client, job_id, "enqueue")
    assert queued["result"][0]["status"] == "Queued"
    not_ready = (await client.get(f"/bulk/v1/leads/export/{job_id}/file.json")).json()
    assert error_code(not_ready) == "1003"
    clock.advance(1)
    assert (await _call(client, job_id, "status"))["result"][0]["status"] == "Processing"
    # Membership changes after processing started do not reach the file.
    await client.post(f"/rest/v1/lists/{list_id}/leads.json", json={"input": [{"id": ids[1]}]})
    clock.advance(2)
    status = (await _call(client, job_id, "status"))["result"][0]
    assert status["status"] == "Completed"
    file = await client.get(
        f"/bulk/v1/leads/export/{job_id}/file.json", headers={"Accept-Encoding": "gzip"}
    )
    assert "content-encoding" not in file.headers
    rows = list(csv.reader(io.StringIO(file.text)))
    assert rows == [
        ["id", "email", "First Name", "isVip"],
        [str(ids[2]), "c@example.com", "Cy, Jr.", "false"],
        [str(ids[0]), "a@example.com", "Ann", "true"],
    ]
    assert status["numberOfRecords"] == 2
    assert status["fileSize"] == len(file.content)
    assert status["fileChecksum"] == "sha256:" + hashlib.sha256(file.content).hexdigest()


async def test_date_filters(client: httpx.AsyncClient, clock: ManualClock) -> None:
    await seed(
        client,
        {"email": "old@example.com", "updatedAt": "2025-11-01T00:00:00Z"},
        {"email": "new@example.com", "updatedAt": "2025-12-20T00:00:00Z"},
        {
            "email": "touched@example.com",
            "createdAt": "2025-10-01T00:00:00Z",
            "updatedAt": "2025-12-21T00:00:00Z",
        },
    )
    window = {"startAt": "2025-12-15T00:00:00Z", "endAt": "2025-12-31T00:00:00Z"}
    jobs = {}
    for name in ("createdAt", "updatedAt"):
        created = await _create(client, fields=["email"], format="TSV", filter={name: window})
        jobs[name] = created["result"][0]["exportId"]
        await _call(client, jobs[name], "enqueue")
    clock.advance(3)
    created_file = (await client.get(f"/bulk/v1/leads/export/{jobs['createdAt']}/file.json")).text
    updated_file = (await client.get(f"/bulk/v1/leads/export/{jobs['updatedAt']}/file.json")).text
    assert created_file == "email\nnew@example.com\n"
    assert updated_file == "email\nnew@example.com\ntouched@example.com\n"


async def test_create_refusals(client: httpx.AsyncClient) -> None:
    too_long = {"startAt": "2025-10-01T00:00:00Z", "endAt": "2025-12-01T00:00:00Z"}
    assert error_code(await _create(client, filter={"createdAt": too_long})) == "1003"
    assert error_code(await _create(client, filter={"staticListId": 424242})) == "1003"
    both = {"staticListId": 1, "createdAt": too_long}
    assert error_code(await _create(client, filter=both)) == "1003"
    assert error_code(await _create(client, filter={"smartListId": 1})) == "1003"
    list_id = await create_list(client, "L")
    assert error_code(await _create(client, fields=[], filter={"staticListId": list_id})) == "701"
    bad_field = await _create(client, fields=["nope"], filter={"staticListId": list_id})
    assert error_code(bad_field) == "1006"
    by_name = await _create(client, filter={"staticListName": "L"})
    assert by_name["success"] is True


async def test_queue_rules(client: httpx.AsyncClient, clock: ManualClock) -> None:
    list_id = await create_list(client, "Q")
    jobs = [await _list_job(client, list_id) for _ in range(11)]
    for job in jobs[:10]:
        assert (await _call(client, job, "enqueue"))["success"] is True
    assert (await _call(client, jobs[0], "enqueue"))["errors"][0] == {
        "code": "1029",
        "message": "Job already queued",
    }
    full = await _call(client, jobs[10], "enqueue")
    assert full["errors"][0] == {"code": "1029", "message": "Too many jobs in queue"}
    cancelled = await _call(client, jobs[9], "cancel")
    assert cancelled["result"][0]["status"] == "Cancelled"
    assert error_code(await _call(client, jobs[9], "cancel")) == "1003"
    assert (await _call(client, jobs[10], "enqueue"))["result"][0]["status"] == "Queued"
    clock.advance(1)
    statuses = [(await _call(client, job, "status"))["result"][0]["status"] for job in jobs]
    assert statuses.count("Processing") == 2
    assert statuses.count("Queued") == 8
    clock.advance(2)
    listed = (await client.get("/bulk/v1/leads/export.json", params={"status": "Completed"})).json()
    assert sorted(item["exportId"] for item in listed["result"]) == sorted(jobs[:2])


async def test_daily_export_limit_and_its_control(
    client: httpx.AsyncClient, raw: httpx.AsyncClient, clock: ManualClock
) -> None:
    ids = await seed(client, *({"email": f"user{n}@example.com"} for n in range(20)))
    list_id = await create_list(client, "Big")
    await client.post(
        f"/rest/v1/lists/{list_id}/leads.json", json={"input": [{"id": i} for i in ids]}
    )
    shrunk = await raw.post("/_sandbox/bulk-export", json={"daily_limit_bytes": 300})
    assert shrunk.json() == {"daily_limit_bytes": 300, "used_bytes": 0}
    first, second = await _list_job(client, list_id), await _list_job(client, list_id)
    await _call(client, first, "enqueue")
    clock.advance(3)
    size = (await _call(client, first, "status"))["result"][0]["fileSize"]
    assert size > 300
    spent = {"code": "1029", "message": "Export daily quota exceeded"}
    assert (await _call(client, second, "enqueue"))["errors"][0] == spent
    assert (await _create(client, filter={"staticListId": list_id}))["errors"][0] == spent
    assert (
        await raw.post("/_sandbox/bulk-export", json={"daily_limit_bytes": -1})
    ).status_code == 400
    # The allowance comes back at midnight US Central (06:00 UTC in winter).
    clock.advance(6 * 3600)
    client.headers["Authorization"] = f"Bearer {await fetch_token(raw)}"
    assert (await _call(client, second, "enqueue"))["result"][0]["status"] == "Queued"


async def test_files_kept_seven_days(
    client: httpx.AsyncClient, raw: httpx.AsyncClient, clock: ManualClock
) -> None:
    await seed(client, {"email": "a@example.com"})
    list_id = await create_list(client, "Kept")
    job = await _list_job(client, list_id)
    await _call(client, job, "enqueue")
    clock.advance(3 + 6 * 86_400)
    client.headers["Authorization"] = f"Bearer {await fetch_token(raw)}"
    assert (await client.get(f"/bulk/v1/leads/export/{job}/file.json")).status_code == 200
    clock.advance(86_400)
    client.headers["Authorization"] = f"Bearer {await fetch_token(raw)}"
    gone = (await client.get(f"/bulk/v1/leads/export/{job}/file.json")).json()
    assert error_code(gone) == "1013"
    assert (await client.get("/bulk/v1/leads/export.json")).json()["result"] == []
