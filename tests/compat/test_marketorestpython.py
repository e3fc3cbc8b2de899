"""marketorestpython 0.5.25, unchanged from PyPI, against the sandbox on a real loopback port.

The client is synchronous (requests) and builds its base URL as `https://<munchkin>.mktorest.com`;
the only thing the test changes is that attribute, `host`, to the sandbox's loopback address.
Each step asserts what the client returns, as its documentation describes it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import sandbox_process

marketorestpython = pytest.importorskip("marketorestpython.client")
exceptions = pytest.importorskip("marketorestpython.helper.exceptions")


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with sandbox_process() as url:
        # Bulk jobs run in a tenth of a second so the import and extract steps stay short.
        reset = httpx.post(
            f"{url}/_sandbox/reset",
            json={
                "bulk_queue_seconds": 0.1,
                "bulk_import_seconds": 0.1,
                "bulk_export_seconds": 0.1,
            },
        )
        assert reset.status_code == 200
        yield url


@pytest.fixture(scope="module")
def mc(base_url: str) -> Any:
    client = marketorestpython.MarketoClient(
        "123-ABC-456", "sandbox-client-id", "sandbox-client-secret", max_retry_time=5
    )
    client.host = base_url
    return client


def _wait(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_everyday_steps(mc: Any, base_url: str, tmp_path: Path) -> None:
    # authenticate: the four identity fields, header-only calls after it
    mc.authenticate()
    assert mc.token.endswith(":sb")
    assert 3590 <= mc.expires_in <= 3600
    assert mc.scope == "sandbox-api-user@example.com"

    # upsert
    created = mc.create_update_leads(
        [
            {"email": "ada@example.com", "firstName": "Ada", "lastName": "Lovelace"},
            {"email": "alan@example.com", "firstName": "Alan"},
        ],
        action="createOrUpdate",
        lookupField="email",
    )
    assert [item["status"] for item in created] == ["created", "created"]
    ada, alan = (item["id"] for item in created)

    # look up by e-mail with fields
    found = mc.get_multiple_leads_by_filter_type(
        "email", ["ada@example.com"], fields=["email", "firstName", "lastName"]
    )
    assert found == [
        {"id": ada, "email": "ada@example.com", "firstName": "Ada", "lastName": "Lovelace"}
    ]

    # describe, describe2, partitions
    described = {field["rest"]["name"] for field in mc.describe()}
    assert {"email", "firstName", "customerId"} <= described
    (schema,) = mc.describe2()
    assert ["email"] in schema["searchableFields"]
    assert [p["name"] for p in mc.get_lead_partitions()] == ["Default", "EMEA", "Partners"]

    # a static list in a folder found by name
    folders = mc.get_folder_by_name("Group Lists", workSpace="Default")
    assert [folder["id"] for folder in folders] == [11]
    (new_list,) = mc.create_list("Compat list", folders[0]["id"], "Folder", description="py")
    list_id = new_list["id"]
    assert new_list["folder"] == {"id": 11, "type": "Folder"}

    # add / check / list / remove members
    added = mc.add_leads_to_list(list_id, [ada, alan])
    assert added == [{"id": ada, "status": "added"}, {"id": alan, "status": "added"}]
    checked = mc.member_of_list(list_id, [ada, 999])
    assert [item["status"] for item in checked] == ["memberof", "skipped"]
    members = mc.get_multiple_leads_by_list_id(list_id, fields=["email"], batchSize=1)
    assert members == [
        {"id": ada, "email": "ada@example.com"},
        {"id": alan, "email": "alan@example.com"},
    ]
    assert mc.remove_leads_from_list(list_id, [alan]) == [{"id": alan, "status": "removed"}]

    # 709 on a duplicate list name
    with pytest.raises(exceptions.MarketoException) as duplicate:
        mc.create_list("Compat list", 11, "Folder")
    assert duplicate.value.code == "709"

    # a bulk import with its status and failure file
    upload = tmp_path / "leads.csv"
    upload.write_text("email,firstName\ngrace@example.com,Grace\nnot-an-email,Bad\n")
    (batch,) = mc.import_lead("csv", str(upload), lookupField="email", listId=list_id)
    assert batch["status"] == "Queued"

    def complete() -> dict[str, Any] | None:
        (status,) = mc.get_import_lead_status(batch["batchId"])
        return status if status["status"] == "Complete" else None

    status = _wait(complete)
    assert status is not None
    assert (status["numOfLeadsProcessed"], status["numOfRowsFailed"]) == (1, 1)
    failures = mc.get_import_failure_file(batch["batchId"])
    assert failures.splitlines()[0] == "email,firstName,Import Failure Reason"
    assert failures.splitlines()[1].startswith("not-an-email,Bad,")

    # merged leads and a bulk extract of the list (the steps the service's next work needs)
    grace = mc.get_multiple_leads_by_filter_type("email", ["grace@example.com"])[0]["id"]
    assert mc.merge_lead(ada, [grace]) is True
    assert mc.get_multiple_leads_by_filter_type("email", ["grace@example.com"]) == []
    (job,) = mc.create_leads_export_job(fields=["id", "email"], filters={"staticListId": list_id})
    assert mc.enqueue_leads_export_job(job["exportId"])[0]["status"] == "Queued"
    done = _wait(
        lambda: mc.get_leads_export_job_status(job["exportId"])[0]["status"] == "Completed"
    )
    assert done
    exported = mc.get_leads_export_job_file(job["exportId"]).decode()
    assert exported == f"id,email\n{ada},ada@example.com\n"
    assert [item["exportId"] for item in mc.get_leads_export_jobs_list()] == [job["exportId"]]

    # daily usage: every call above, counted for our API user
    (today,) = mc.get_daily_usage()
    assert today["users"][0]["userId"] == "sandbox-api-user@example.com"
    assert today["total"] == today["users"][0]["count"] >= 20
    assert len(mc.get_last_7_days_usage()) == 7
    (errors,) = mc.get_daily_errors()
    assert {"errorCode": "709", "count": 1} in errors["errors"]

    # delete a lead, then find it among the deleted leads
    assert mc.delete_lead([alan]) == [{"id": alan, "status": "deleted"}]
    deleted = mc.get_deleted_leads(sinceDatetime="2000-01-01T00:00:00Z")
    assert [item["leadId"] for item in deleted] == [alan]
    assert mc.get_multiple_leads_by_filter_type("email", ["alan@example.com"]) == []

    # browse folders
    assert [folder["id"] for folder in mc.browse_folders(workSpace="Default")] == [10, 11]

    # and nothing the client sent carried the token in the URL
    calls = httpx.get(f"{base_url}/_sandbox/calls").json()
    assert "601" not in calls["by_code"] and "603" not in calls["by_code"]
