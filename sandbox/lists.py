"""Lead Database static list endpoints: membership, members and `/rest/v1/lists.json`."""

from __future__ import annotations

from typing import Any

from sandbox.http import Call, MarketoError, Reply, lead_ok, paginate, positive_int, skipped
from sandbox.leads import MAX_BATCH, input_ids, read_fields
from sandbox.schema import iso_z
from sandbox.state import StaticList


def _list(call: Call) -> StaticList:
    try:
        list_id = int(call.path["list_id"])
    except ValueError:
        list_id = -1
    static_list = call.state.lists.get(list_id)
    if static_list is None:
        raise MarketoError("1013", "Object not found")
    return static_list


def _ids(call: Call) -> list[int | None]:
    out: list[int | None] = []
    for raw in input_ids(call):
        try:
            out.append(int(raw))
        except (TypeError, ValueError):
            out.append(None)
    return out


def _membership(call: Call, apply: str) -> Reply:
    static_list = _list(call)
    leads = call.state.leads.leads
    result: list[dict[str, Any]] = []
    for lead_id in _ids(call):
        if lead_id is None or lead_id not in leads:
            result.append({"id": lead_id, **skipped("1004", "Lead not found")})
        elif apply == "add":
            # Adding an existing member answers "added" again, as recorded from a real instance.
            static_list.members[lead_id] = None
            result.append({"id": lead_id, "status": "added"})
        elif apply == "remove":
            if lead_id in static_list.members:
                del static_list.members[lead_id]
                result.append({"id": lead_id, "status": "removed"})
            else:
                result.append({"id": lead_id, **skipped("1015", "Lead not in list")})
        else:
            status = "memberof" if lead_id in static_list.members else "notmemberof"
            result.append({"id": lead_id, "status": status})
    if apply != "check":
        static_list.updated_at = call.now
    return lead_ok(result)


async def add_members(call: Call) -> Reply:
    return _membership(call, "add")


async def remove_members(call: Call) -> Reply:
    return _membership(call, "remove")


async def is_member(call: Call) -> Reply:
    return _membership(call, "check")


async def get_members(call: Call) -> Reply:
    static_list = _list(call)
    fields = read_fields(call)
    batch_size = positive_int(call, "batchSize", MAX_BATCH, MAX_BATCH)
    leads = call.state.leads
    page, extra = paginate(call, list(static_list.members), batch_size)
    return lead_ok([leads.record(leads.leads[i], fields) for i in page], **extra)


def list_record(static_list: StaticList) -> dict[str, Any]:
    """A list as `/rest/v1/lists.json` shows it."""
    return {
        "id": static_list.id,
        "name": static_list.name,
        "description": static_list.description,
        "workspaceName": static_list.workspace,
        "createdAt": iso_z(static_list.created_at),
        "updatedAt": iso_z(static_list.updated_at),
    }


async def get_lists(call: Call) -> Reply:
    ids = {value for value in call.values("id")}
    names = set(call.params.get("name", []))
    workspaces = set(call.params.get("workspaceName", []))
    batch_size = positive_int(call, "batchSize", MAX_BATCH, MAX_BATCH)
    matches = [
        static_list
        for static_list in call.state.lists.values()
        if (not ids or str(static_list.id) in ids)
        and (not names or static_list.name in names)
        and (not workspaces or static_list.workspace in workspaces)
        # Static lists in the sandbox live in folders, never in programs.
        and not call.params.get("programName")
    ]
    page, extra = paginate(call, matches, batch_size)
    return lead_ok([list_record(item) for item in page], **extra)


async def get_list(call: Call) -> Reply:
    return lead_ok([list_record(_list(call))])
