"""Bulk lead import: upload, clock-driven states, counters, messages, files and limits."""

from __future__ import annotations

from typing import Any

import httpx

from sandbox import ManualClock

from .conftest import create_list, error_code, seed


async def _upload(client: httpx.AsyncClient, content: str, **params: str) -> dict[str, Any]:
    response = await client.post(
        "/bulk/v1/leads.json",
        params=params,
        files={"file": ("leads.csv", content.encode(), "text/csv")},
        data={"format": params.pop("format", "csv")},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _status(client: httpx.AsyncClient, batch_id: int) -> dict[str, Any]:
    body = (await client.get(f"/bulk/v1/leads/batch/{batch_id}.json")).json()
    result: dict[str, Any] = body["result"][0]
    return result


async def test_import_lifecycle_with_list(client: httpx.AsyncClient, clock: ManualClock) -> None:
    await seed(client, {"email": "old@example.com", "firstName": "Old"})
    list_id = await create_list(client, "Imported")
    csv = "email,firstName,accountScore\nold@example.com,New,1\nnew@example.com,N,2\n"
    created = await _upload(client, csv, listId=str(list_id))
    assert created["result"] == [{"batchId": 1, "importId": "1", "status": "Queued"}]
    assert (await _status(client, 1))["status"] == "Queued"
    clock.advance(1)
    assert (await _status(client, 1))["status"] == "Importing"
    clock.advance(2)
    status = await _status(client, 1)
    assert status == {
        "batchId": 1,
        "importId": "1",
        "status": "Complete",
        "numOfLeadsProcessed": 2,
        "numOfRowsFailed": 0,
        "numOfRowsWithWarning": 0,
        "message": "Import succeeded, 2 records imported (2 members)",
    }
    leads = (await client.get("/_sandbox/leads")).json()["leads"]
    assert leads[0]["fields"]["firstName"] == "New"
    assert (await client.get("/_sandbox/lists")).json()["lists"][0]["members"] == [1, 2]


async def test_failures_and_warnings_files(client: httpx.AsyncClient, clock: ManualClock) -> None:
    long_name = "x" * 300
    csv = f"email,accountScore,firstName\na@example.com,1.5,A\nb@example.com,2,{long_name}\n"
    await _upload(client, csv)
    clock.advance(3)
    status = await _status(client, 1)
    assert status["numOfRowsFailed"] == 1
    assert status["numOfRowsWithWarning"] == 1
    assert status["message"] == "Import completed with errors, 1 records imported, 1 failed"
    failures = (await client.get("/bulk/v1/leads/batch/1/failures.json")).text
    lines = failures.splitlines()
    assert lines[0] == "email,accountScore,firstName,Import Failure Reason"
    assert lines[1].startswith("a@example.com,1.5,A,Invalid value for field 'accountScore'")
    warnings = (await client.get("/bulk/v1/leads/batch/1/warnings.json")).text
    assert warnings.splitlines()[0].endswith(",Import Warning Reason")


async def test_unknown_column_fails_job(client: httpx.AsyncClient, clock: ManualClock) -> None:
    await _upload(client, "email,shoeSize\na@example.com,4\n")
    clock.advance(3)
    status = await _status(client, 1)
    assert status["status"] == "Failed"
    assert "shoeSize" in status["message"]


async def test_tsv_with_partition_and_lookup(client: httpx.AsyncClient, clock: ManualClock) -> None:
    await _upload(
        client,
        "customerId\temail\nC1\ta@example.com\n",
        format="tsv",
        lookupField="customerId",
        partitionName="EMEA",
    )
    clock.advance(3)
    assert (await _status(client, 1))["status"] == "Complete"
    leads = (await client.get("/_sandbox/leads")).json()["leads"]
    assert leads[0]["partition"] == "EMEA"
    assert leads[0]["fields"]["customerId"] == "C1"


async def test_two_running_ten_queued_then_1016(
    client: httpx.AsyncClient, clock: ManualClock
) -> None:
    for _ in range(10):
        await _upload(client, "email\na@example.com\n")
    response = await client.post(
        "/bulk/v1/leads.json", files={"file": ("f.csv", b"email\nx@example.com\n", "text/csv")}
    )
    assert response.json()["errors"] == [{"code": "1016", "message": "Too many imports"}]
    clock.advance(1)
    statuses = [(await _status(client, i))["status"] for i in range(1, 11)]
    assert statuses.count("Importing") == 2
    assert statuses.count("Queued") == 8


async def test_file_over_10mb_is_413(client: httpx.AsyncClient) -> None:
    content = b"email\n" + b"a@example.com\n" * 800_000
    response = await client.post(
        "/bulk/v1/leads.json", files={"file": ("big.csv", content, "text/csv")}
    )
    assert response.status_code == 413


async def test_bulk_above_rest_body_limit_is_accepted(client: httpx.AsyncClient) -> None:
    content = b"email\n" + b"".join(f"u{i}@example.com\n".encode() for i in range(80_000))
    assert len(content) > 1_000_000
    response = await client.post(
        "/bulk/v1/leads.json", files={"file": ("mid.csv", content, "text/csv")}
    )
    assert response.json()["success"] is True


async def test_unknown_batch_and_bad_options(client: httpx.AsyncClient) -> None:
    assert error_code((await client.get("/bulk/v1/leads/batch/77.json")).json()) == "1013"
    bad_lookup = await client.post(
        "/bulk/v1/leads.json",
        params={"lookupField": "firstName"},
        files={"file": ("f.csv", b"email\n", "text/csv")},
    )
    assert error_code(bad_lookup.json()) == "1011"


async def test_jobs_run_two_at_a_time_fifo(client: httpx.AsyncClient, clock: ManualClock) -> None:
    for _ in range(3):
        await _upload(client, "email\na@example.com\n")
    clock.advance(3)  # jobs 1 and 2 ran from t=1 to t=3; job 3 starts at t=3
    statuses = [(await _status(client, i))["status"] for i in (1, 2, 3)]
    assert statuses == ["Complete", "Complete", "Importing"]
    clock.advance(2)
    assert (await _status(client, 3))["status"] == "Complete"


async def test_list_being_imported_to(client: httpx.AsyncClient) -> None:
    list_id = await create_list(client, "Busy")
    await _upload(client, "email\na@example.com\n", listId=str(list_id))
    second = await client.post(
        "/bulk/v1/leads.json",
        params={"listId": str(list_id)},
        files={"file": ("f.csv", b"email\nb@example.com\n", "text/csv")},
    )
    assert second.json()["errors"] == [{"code": "1019", "message": "Import in progress"}]
    deleted = (await client.post(f"/rest/asset/v1/staticList/{list_id}/delete.json")).json()
    assert error_code(deleted) == "709"


async def test_failed_rows_are_not_list_members(
    client: httpx.AsyncClient, clock: ManualClock
) -> None:
    list_id = await create_list(client, "Partial")
    await _upload(client, "email\ngood@example.com\nbad-address\n", listId=str(list_id))
    clock.advance(3)
    status = await _status(client, 1)
    assert status["message"] == (
        "Import completed with errors, 1 records imported (1 members), 1 failed"
    )
    assert (await client.get("/_sandbox/lists")).json()["lists"][0]["members"] == [1]


async def test_broken_multipart_is_613(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/bulk/v1/leads.json",
        content=b"--x\r\nContent-Disposition: form-data\r\n\r\nnope",
        headers={"Content-Type": "multipart/form-data"},
    )
    assert error_code(response.json()) == "613"
