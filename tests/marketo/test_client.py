"""Typed operations over a scripted Marketo: chunking, paging, retries, outcome-unknown."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from service.marketo.client import MarketoClient
from service.marketo.errors import (
    ConfigurationError,
    MarketoError,
    OutcomeUnknownError,
    QuotaExhaustedError,
    RejectedError,
    UnavailableError,
)
from service.marketo.limits import next_reset
from service.marketo.types import SyncAction
from service.settings import RetryPolicy
from tests.marketo.conftest import FakeClock, FakeMarketo, Seen, error, ok

LEADS = "/rest/v1/leads.json"
Make = Callable[..., MarketoClient]


def lead(i: int, **fields: Any) -> dict[str, Any]:
    return {"id": i, "email": f"p{i}@example.com", "updatedAt": "2026-01-02T03:04:05Z", **fields}


def query(seen: Seen) -> dict[str, list[str]]:
    """Parameters of a lookup, whether sent in the URL or as a `_method=GET` form body."""
    if seen.params.get("_method") == ["GET"]:
        return seen.form()
    return seen.params


# ------------------------------------------------------------------ lookups


async def test_find_leads_chunks_300_values_and_follows_pages(
    marketo: FakeMarketo, make_client: Make
) -> None:
    def handler(seen: Seen) -> dict[str, Any]:
        q = query(seen)
        values = q["filterValues"][0].split(",")
        assert len(values) <= 300
        ids = [int(v.removeprefix("p").split("@")[0]) for v in values]
        if "nextPageToken" not in q:
            return ok([lead(i) for i in ids[:2]], moreResult=True, nextPageToken="PAGE2")
        assert q["nextPageToken"] == ["PAGE2"]
        return ok([lead(i) for i in ids[2:]], moreResult=False)

    marketo.route("GET", LEADS, handler)
    marketo.route("POST", LEADS, handler)
    emails = [f"p{i}@example.com" for i in range(650)]
    leads = await make_client().find_leads("email", emails, ["email", "updatedAt"])
    assert sorted(ld.id for ld in leads) == list(range(650))
    assert len(marketo.calls(LEADS)) == 6  # 3 chunks x 2 pages
    assert leads[0].fields["email"] == "p0@example.com"
    assert leads[0].updated_at is not None and leads[0].updated_at.year == 2026


async def test_long_lookups_use_post_with_method_get(
    marketo: FakeMarketo, make_client: Make
) -> None:
    marketo.route("POST", LEADS, lambda s: ok([]))
    marketo.route("GET", LEADS, lambda s: ok([]))
    client = make_client()
    await client.find_leads("email", ["short@example.com"])
    long_values = [f"a-rather-long-address-number-{i:04d}@example-company.com" for i in range(300)]
    await client.find_leads("email", long_values)
    short, long = marketo.calls(LEADS)
    assert short.method == "GET"
    assert long.method == "POST"
    assert long.params == {"_method": ["GET"]}
    assert long.headers["content-type"] == "application/x-www-form-urlencoded"
    assert long.form()["filterValues"][0].split(",") == long_values


async def test_get_lead_not_found_is_none(marketo: FakeMarketo, make_client: Make) -> None:
    marketo.route("GET", "/rest/v1/lead/5.json", lambda s: ok([lead(5, leadPartitionId=2)]))
    marketo.route("GET", "/rest/v1/lead/6.json", lambda s: ok([]))
    client = make_client()
    found = await client.get_lead(5, ["email", "leadPartitionId"])
    assert found is not None and found.partition_id == 2
    assert await client.get_lead(6) is None


async def test_describe2_and_describe(marketo: FakeMarketo, make_client: Make) -> None:
    marketo.route(
        "GET",
        "/rest/v1/leads/describe2.json",
        lambda s: ok(
            [
                {
                    "name": "API Lead",
                    "searchableFields": [["email"], ["id"], ["customerId"]],
                    "fields": [
                        {
                            "name": "email",
                            "displayName": "Email Address",
                            "dataType": "email",
                            "length": 255,
                            "updateable": True,
                            "crmManaged": False,
                        }
                    ],
                }
            ]
        ),
    )
    marketo.route(
        "GET",
        "/rest/v1/leads/describe.json",
        lambda s: ok(
            [
                {
                    "id": 2,
                    "displayName": "Company Name",
                    "dataType": "string",
                    "length": 255,
                    "rest": {"name": "company", "readOnly": False},
                    "soap": {"name": "Company", "readOnly": False},
                }
            ]
        ),
    )
    client = make_client()
    schema = await client.describe2()
    assert ("email",) in schema.searchable_fields
    assert schema.fields[0].updateable
    (company,) = await client.describe()
    assert company.rest_name == "company" and company.soap_name == "Company"


async def test_workspaces_are_a_bare_array(marketo: FakeMarketo, make_client: Make) -> None:
    marketo.route(
        "GET",
        "/userservice/management/v1/users/workspaces.json",
        lambda s: [{"id": 0, "name": "Default", "description": "", "status": "active"}],
    )
    assert [w.name for w in await make_client().workspaces()] == ["Default"]


# ------------------------------------------------------------- sync leads


async def test_sync_leads_chunks_and_keeps_input_order(
    marketo: FakeMarketo, make_client: Make
) -> None:
    def handler(seen: Seen) -> dict[str, Any]:
        body = seen.json()
        assert body["action"] == "createOnly"
        assert body["partitionName"] == "Mexico"
        assert len(body["input"]) <= 300
        out = []
        for rec in body["input"]:
            n = int(rec["email"].split("@")[0])
            if n % 100 == 7:
                out.append(
                    {
                        "status": "skipped",
                        "reasons": [{"code": "1005", "message": "Lead already exists"}],
                    }
                )
            else:
                out.append({"id": 10_000 + n, "status": "created"})
        return ok(out)

    marketo.route("POST", LEADS, handler)
    records = [{"email": f"{i}@example.com"} for i in range(700)]
    results = await make_client().sync_leads(
        records, action=SyncAction.CREATE_ONLY, partition_name="Mexico"
    )
    assert len(results) == 700
    assert len(marketo.calls(LEADS)) == 3
    assert results[0].id == 10_000 and results[0].status == "created"
    assert results[107].status == "skipped" and results[107].id is None
    assert results[107].reasons[0].code == "1005"


@pytest.mark.parametrize(
    "failure",
    [
        lambda s: httpx.Response(502),
        lambda s: error("604", "Request time-out"),
        lambda s: error("611", "System error"),
        lambda s: error("999", "Something new"),
    ],
)
@pytest.mark.parametrize(
    "action", [SyncAction.CREATE_ONLY, SyncAction.CREATE_OR_UPDATE, SyncAction.CREATE_DUPLICATE]
)
async def test_creating_writes_are_not_retried_blindly(
    marketo: FakeMarketo, make_client: Make, failure: Callable[[Seen], Any], action: SyncAction
) -> None:
    marketo.route("POST", LEADS, failure)
    with pytest.raises(OutcomeUnknownError):
        await make_client().sync_leads([{"email": "a@example.com"}], action=action)
    assert len(marketo.calls(LEADS)) == 1


async def test_read_timeout_on_create_is_outcome_unknown_with_earlier_chunks(
    marketo: FakeMarketo, make_client: Make
) -> None:
    def handler(seen: Seen) -> dict[str, Any]:
        body = seen.json()
        if body["input"][0]["email"] == "300@example.com":
            raise httpx.ReadTimeout("no answer")
        return ok([{"id": 1, "status": "created"} for _ in body["input"]])

    marketo.route("POST", LEADS, handler)
    records = [{"email": f"{i}@example.com"} for i in range(400)]
    with pytest.raises(OutcomeUnknownError) as caught:
        await make_client().sync_leads(records, action=SyncAction.CREATE_OR_UPDATE)
    assert caught.value.first_unknown_index == 300
    assert len(caught.value.completed) == 300


async def test_never_sent_creates_are_retried(marketo: FakeMarketo, make_client: Make) -> None:
    attempts: list[int] = []

    def handler(seen: Seen) -> dict[str, Any]:
        attempts.append(1)
        if len(attempts) == 1:
            raise httpx.ConnectError("refused")
        if len(attempts) == 2:
            return error("606", "Max rate limit '100' exceeded with in '20' secs")
        if len(attempts) == 3:
            return error("608", "API Temporarily Unavailable")
        return ok([{"id": 1, "status": "created"}])

    marketo.route("POST", LEADS, handler)
    results = await make_client().sync_leads([{"email": "a@x.com"}], action=SyncAction.CREATE_ONLY)
    assert results[0].status == "created"
    assert len(attempts) == 4


async def test_update_only_is_retried_after_5xx(marketo: FakeMarketo, make_client: Make) -> None:
    answers = [httpx.Response(503), error("611", "System error")]
    marketo.route(
        "POST",
        LEADS,
        lambda s: answers.pop(0) if answers else ok([{"id": 4, "status": "updated"}]),
    )
    results = await make_client().sync_leads(
        [{"id": 4, "firstName": "A"}], action=SyncAction.UPDATE_ONLY, lookup_field="id"
    )
    assert results[0].status == "updated"
    body = marketo.calls(LEADS)[-1].json()
    assert body["lookupField"] == "id" and body["action"] == "updateOnly"


async def test_transient_failures_are_bounded_by_attempts(
    marketo: FakeMarketo, make_client: Make, clock: FakeClock
) -> None:
    marketo.route("GET", "/rest/v1/lead/1.json", lambda s: httpx.Response(502))
    client = make_client(retry=RetryPolicy(max_attempts=5, base_delay=1, max_delay=8))
    with pytest.raises(UnavailableError) as caught:
        await client.get_lead(1)
    assert caught.value.attempts == 5
    assert len(marketo.calls("/rest/v1/lead/1.json")) == 5
    # Exponential with jitter: each delay between half and all of 1, 2, 4, 8.
    for slept, nominal in zip(clock.slept, [1, 2, 4, 8], strict=True):
        assert nominal / 2 <= slept <= nominal


async def test_transient_failures_are_bounded_by_the_deadline(
    marketo: FakeMarketo, make_client: Make, clock: FakeClock
) -> None:
    marketo.route("GET", "/rest/v1/lead/1.json", lambda s: error("608", "Unavailable"))
    start = clock.now()
    client = make_client(retry=RetryPolicy(max_attempts=100, deadline=60, max_delay=30))
    with pytest.raises(UnavailableError):
        await client.get_lead(1)
    assert clock.now() - start <= 60


async def test_rejected_codes_are_raised_with_the_code(
    marketo: FakeMarketo, make_client: Make
) -> None:
    marketo.route("GET", LEADS, lambda s: error("603", "Access denied"))
    with pytest.raises(RejectedError) as caught:
        await make_client().find_leads("email", ["a@x.com"])
    assert caught.value.code == "603"
    assert "Access denied" in str(caught.value)
    assert len(marketo.calls(LEADS)) == 1


async def test_response_level_1xxx_is_rejected(marketo: FakeMarketo, make_client: Make) -> None:
    marketo.route("GET", LEADS, lambda s: error("1011", "Lookup field 'createdAt' not supported"))
    with pytest.raises(RejectedError) as caught:
        await make_client().find_leads("createdAt", ["x"])
    assert caught.value.code == "1011"


async def test_a_field_missing_from_the_schema_is_a_configuration_error(
    marketo: FakeMarketo, make_client: Make
) -> None:
    marketo.route("POST", LEADS, lambda s: error("1006", "Field 'loyaltyTier' not found"))
    with pytest.raises(ConfigurationError) as caught:
        await make_client().sync_leads(
            [{"email": "a@x.com", "loyaltyTier": "gold"}], action=SyncAction.UPDATE_ONLY
        )
    assert caught.value.code == "1006"
    assert "loyaltyTier" in str(caught.value)
    assert len(marketo.calls(LEADS)) == 1, "never retried"


async def test_607_pauses_until_midnight_chicago(
    marketo: FakeMarketo, make_client: Make, clock: FakeClock
) -> None:
    marketo.route("GET", LEADS, lambda s: error("607", "Daily quota reached"))
    client = make_client()
    with pytest.raises(QuotaExhaustedError) as caught:
        await client.find_leads("email", ["a@x.com"])
    assert client.limits.paused_until == caught.value.paused_until
    assert caught.value.paused_until > clock.now()
    with pytest.raises(QuotaExhaustedError):
        await client.find_leads("email", ["a@x.com"])
    assert len(marketo.calls(LEADS)) == 1  # the pause is local: no call while paused


async def test_606_is_retried_after_a_shared_cooldown(
    marketo: FakeMarketo, make_client: Make, clock: FakeClock
) -> None:
    answers = [error("606", "Max rate limit '100' exceeded with in '20' secs")] * 2
    marketo.route("GET", LEADS, lambda s: answers.pop() if answers else ok([]))
    start = clock.now()
    assert await make_client().find_leads("email", ["a@x.com"]) == []
    assert len(marketo.calls(LEADS)) == 3
    assert clock.now() - start >= 1  # waited (2 s nominal, jittered, then 4 s)


# ------------------------------------------------------------------- lists


async def test_membership_chunks_ids(marketo: FakeMarketo, make_client: Make) -> None:
    path = "/rest/v1/lists/42/leads.json"

    def add(seen: Seen) -> dict[str, Any]:
        ids = [r["id"] for r in seen.json()["input"]]
        assert len(ids) <= 300
        return ok([{"id": i, "status": "added"} for i in ids])

    def remove(seen: Seen) -> dict[str, Any]:
        ids = [r["id"] for r in seen.json()["input"]]
        return ok(
            [
                {
                    "id": i,
                    "status": "skipped",
                    "reasons": [{"code": "1015", "message": "Lead not in list"}],
                }
                if i == 3
                else {"id": i, "status": "removed"}
                for i in ids
            ]
        )

    def ismember(seen: Seen) -> dict[str, Any]:
        return ok([{"id": int(i), "status": "memberof"} for i in seen.params["id"]])

    marketo.route("POST", path, add)
    marketo.route("DELETE", path, remove)
    marketo.route("GET", "/rest/v1/lists/42/leads/ismember.json", ismember)
    client = make_client()
    added = await client.add_to_list(42, list(range(1, 651)))
    assert len(added) == 650 and {r.status for r in added} == {"added"}
    assert len([s for s in marketo.calls(path) if s.method == "POST"]) == 3
    removed = await client.remove_from_list(42, [1, 2, 3])
    assert removed[2].reasons[0].code == "1015"
    assert [m.status for m in await client.is_member(42, [5, 6])] == ["memberof"] * 2


async def test_list_members_pages(marketo: FakeMarketo, make_client: Make) -> None:
    def handler(seen: Seen) -> dict[str, Any]:
        if "nextPageToken" in seen.params:
            return ok([lead(3)])
        return ok([lead(1), lead(2)], moreResult=True, nextPageToken="T")

    marketo.route("GET", "/rest/v1/lists/9/leads.json", handler)
    assert [m.id for m in await make_client().list_members(9, ["email"])] == [1, 2, 3]


async def test_static_lists_and_folders(marketo: FakeMarketo, make_client: Make) -> None:
    record = {
        "id": 1159,
        "name": "Audience A",
        "folder": {"id": 12, "type": "Folder"},
        "workspace": "Default",
        "createdAt": "2021-11-23T22:57:24Z+0000",
        "updatedAt": "2021-11-23T22:57:24Z+0000",
        "computedUrl": "https://x/#ST1159A1",
    }
    not_found = {
        "success": True,
        "errors": [],
        "requestId": "1#2",
        "warnings": ["No assets found for the given search criteria."],
    }

    def by_name(seen: Seen) -> dict[str, Any]:
        return ok([record]) if seen.params["name"] == ["Audience A"] else not_found

    marketo.route("GET", "/rest/asset/v1/staticList/byName.json", by_name)
    marketo.route("POST", "/rest/asset/v1/staticLists.json", lambda s: ok([record]))
    marketo.route("GET", "/rest/asset/v1/staticList/1159.json", lambda s: ok([record]))
    marketo.route(
        "POST", "/rest/asset/v1/staticList/1159/delete.json", lambda s: ok([{"id": 1159}])
    )
    marketo.route(
        "GET",
        "/rest/asset/v1/folder/byName.json",
        lambda s: ok(
            [
                {
                    "id": 12,
                    "name": "Group Lists",
                    "folderId": {"id": 12, "type": "Folder"},
                    "path": "/Lead Database/Default/Group Lists",
                    "folderType": "List",
                }
            ]
        ),
    )
    client = make_client()
    found = await client.static_list_by_name("Audience A")
    assert found is not None and found.id == 1159 and found.folder_id == 12
    assert found.created_at is not None
    assert await client.static_list_by_name("Nope") is None
    created = await client.create_static_list("Audience A", 12, description="d")
    assert created.id == 1159
    sent = marketo.calls("/rest/asset/v1/staticLists.json")[0].form()
    assert json.loads(sent["folder"][0]) == {"id": 12, "type": "Folder"}
    assert (await client.static_list(1159)) == found
    await client.delete_static_list(1159)
    folder = await client.folder_by_name("Group Lists", workspace="Default")
    assert folder is not None and folder.id == 12 and folder.type == "Folder"


async def test_duplicate_list_name_is_rejected_709(marketo: FakeMarketo, make_client: Make) -> None:
    marketo.route(
        "POST",
        "/rest/asset/v1/staticLists.json",
        lambda s: error("709", "Static List with the same name already exists"),
    )
    with pytest.raises(RejectedError) as caught:
        await make_client().create_static_list("A", 12)
    assert caught.value.code == "709"


async def test_create_static_list_dropped_is_outcome_unknown(
    marketo: FakeMarketo, make_client: Make
) -> None:
    def drop(seen: Seen) -> dict[str, Any]:
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    marketo.route("POST", "/rest/asset/v1/staticLists.json", drop)
    with pytest.raises(OutcomeUnknownError):
        await make_client().create_static_list("A", 12)
    assert len(marketo.calls("/rest/asset/v1/staticLists.json")) == 1


# -------------------------------------------------------------- bulk import


async def test_bulk_import(marketo: FakeMarketo, make_client: Make) -> None:
    def create(seen: Seen) -> dict[str, Any]:
        assert seen.headers["content-type"].startswith("multipart/form-data")
        assert b"email\r\na@x.com" in seen.body or b"email\na@x.com" in seen.body
        assert b'name="listId"' in seen.body
        return ok([{"batchId": 1023, "importId": "1023", "status": "Queued"}])

    marketo.route("POST", "/bulk/v1/leads.json", create)
    marketo.route(
        "GET",
        "/bulk/v1/leads/batch/1023.json",
        lambda s: ok(
            [
                {
                    "batchId": 1023,
                    "importId": "1023",
                    "status": "Complete",
                    "numOfLeadsProcessed": 2,
                    "numOfRowsFailed": 1,
                    "numOfRowsWithWarning": 0,
                    "message": "Import completed with errors",
                }
            ]
        ),
    )
    failures = "email,Import Failure Reason\nbad,Invalid email\n"
    marketo.route(
        "GET",
        "/bulk/v1/leads/batch/1023/failures.json",
        lambda s: httpx.Response(200, text=failures, headers={"content-type": "text/csv"}),
    )
    marketo.route(
        "GET",
        "/bulk/v1/leads/batch/1023/warnings.json",
        lambda s: httpx.Response(200, text="", headers={"content-type": "text/csv"}),
    )
    client = make_client()
    job = await client.create_import(b"email\na@x.com\n", list_id=7, lookup_field="email")
    assert job.batch_id == 1023 and job.status == "Queued"
    status = await client.import_status(1023)
    assert status.status == "Complete" and status.rows_failed == 1
    assert await client.import_failures(1023) == failures
    assert await client.import_warnings(1023) == ""


async def test_create_import_5xx_is_outcome_unknown(
    marketo: FakeMarketo, make_client: Make
) -> None:
    marketo.route("POST", "/bulk/v1/leads.json", lambda s: httpx.Response(503))
    with pytest.raises(OutcomeUnknownError):
        await make_client().create_import(b"email\na@x.com\n")


async def test_create_import_queue_full_is_retried(marketo: FakeMarketo, make_client: Make) -> None:
    answers = [error("1016", "Too many imports")]
    marketo.route(
        "POST",
        "/bulk/v1/leads.json",
        lambda s: answers.pop() if answers else ok([{"batchId": 1, "status": "Queued"}]),
    )
    assert (await make_client().create_import(b"email\n")).batch_id == 1


async def test_1029_by_reason(
    marketo: FakeMarketo, make_client: Callable[..., MarketoClient], clock: FakeClock
) -> None:
    answers = iter(
        [
            error("1029", "Too many jobs in queue"),
            ok([{"id": 1, "name": "Default", "description": ""}]),
            error("1029", "Job already queued"),
            error("1029", "Export daily quota exceeded"),
            ok([{"id": 1, "name": "Default", "description": ""}]),
        ]
    )
    path = "/rest/v1/leads/partitions.json"
    marketo.route("GET", path, lambda s: next(answers))
    client = make_client()
    assert [p.name for p in await client.partitions()] == ["Default"]  # a full queue: retried
    assert len(marketo.calls(path)) == 2
    with pytest.raises(RejectedError) as queued:  # already queued: not retried
        await client.partitions()
    assert queued.value.code == "1029"
    assert len(marketo.calls(path)) == 3
    with pytest.raises(QuotaExhaustedError) as spent:  # export allowance spent: until reset
        await client.partitions()
    assert spent.value.code == "1029"
    assert spent.value.paused_until == next_reset(clock.now())
    assert client.limits.paused_until is None  # the instance's other calls go on
    assert [p.name for p in await client.partitions()] == ["Default"]
    assert len(marketo.calls(path)) == 5


async def test_pages_whose_token_comes_back_end_with_an_error(
    marketo: FakeMarketo, make_client: Make
) -> None:
    def handler(seen: Seen) -> dict[str, Any]:
        assert len(marketo.calls(LEADS)) <= 1_000, "the client never stops asking"
        token = query(seen).get("nextPageToken", [""])[0]
        following = {"": "A", "A": "B", "B": "A"}[token]
        return ok([lead(1)], moreResult=True, nextPageToken=following)

    marketo.route("GET", LEADS, handler)
    marketo.route("POST", LEADS, handler)
    with pytest.raises(MarketoError, match="page token it had given before"):
        await make_client().find_leads("email", ["p1@example.com"])
    assert len(marketo.calls(LEADS)) == 3  # each page once, then the token seen again
