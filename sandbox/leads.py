"""Lead Database lead endpoints: Sync, Get by filter, Get by id, Delete, Describe, Partitions."""

from __future__ import annotations

from typing import Any

from sandbox.http import (
    Call,
    MarketoError,
    Reply,
    lead_ok,
    paginate,
    positive_int,
    skipped,
)
from sandbox.schema import DEFAULT_READ_FIELDS, InvalidValue, LeadValue, asset_time
from sandbox.state import DeletedLead, Lead, SandboxState

MAX_BATCH = 300
MAX_FILTER_MATCHES = 1000
ACTIONS = ("createOnly", "updateOnly", "createOrUpdate", "createDuplicate")


def check_lookup_field(state: SandboxState, name: str) -> None:
    """1006 for an unknown field, 1011 for one that is not searchable (response-level)."""
    if name not in state.schema.fields:
        raise MarketoError("1006", f"Lookup field '{name}' not found")
    if name not in state.schema.searchable:
        raise MarketoError("1011", f"Lookup field '{name}' not supported")


def resolve_partition(state: SandboxState, name: str | None) -> int | tuple[str, str]:
    """The partition new leads go to, or the (code, message) refusing it."""
    if name is None:
        default = state.default_partition
        if not state.api_can_use(default.id):
            return ("1009", "Partition name must be specified")
        return default.id
    partition_id = state.partition_ids.get(name)
    if partition_id is None or not state.api_can_use(partition_id):
        return ("1008", f"Access denied to partition '{name}'")
    return partition_id


def validate_record(
    state: SandboxState, record: dict[str, Any]
) -> dict[str, LeadValue] | tuple[str, str]:
    """Validated field values of one input record, or the (code, message) skipping it."""
    values: dict[str, LeadValue] = {}
    for name, raw in record.items():
        spec = state.schema.fields.get(name)
        if spec is None:
            return ("1006", f"Field '{name}' not found")
        if name == "id":
            continue
        if spec.read_only:
            return ("1003", f"Field '{name}' is not updateable")
        try:
            values[name] = state.schema.coerce(name, raw)
        except InvalidValue:
            return ("1003", f"Invalid value for field '{name}' and value '{_text(raw)}'")
    return values


def _text(raw: Any) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    return str(raw)


def sync_record(
    state: SandboxState,
    action: str,
    lookup_field: str,
    partition_name: str | None,
    record: Any,
    now: float,
) -> dict[str, Any]:
    """Apply one Sync Leads input record and return its result entry."""
    if not isinstance(record, dict):
        return skipped("1003", "Invalid data")
    if "id" in record and action != "updateOnly":
        return skipped("1003", f"Field 'id' is only allowed with updateOnly, not {action}")
    values = validate_record(state, record)
    if isinstance(values, tuple):
        return skipped(*values)
    key: LeadValue = None
    if lookup_field == "id":
        raw_id = record.get("id")
        key = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else None
        if key is None and raw_id is not None:
            return skipped("1003", f"Invalid value for field 'id' and value '{_text(raw_id)}'")
    else:
        key = values.get(lookup_field)
    matches = state.leads.find(lookup_field, key) if key is not None else []
    if action == "createDuplicate":
        return _create(state, values, partition_name, now)
    if action == "createOnly":
        if matches:
            return skipped("1005", "Lead already exists")
        return _create(state, values, partition_name, now)
    if len(matches) > 1:
        return skipped("1007", "Multiple lead match lookup criteria")
    if not matches:
        if action == "updateOnly":
            return skipped("1004", "Lead not found")
        return _create(state, values, partition_name, now)
    lead = state.leads.leads[matches[0]]
    if not state.api_can_use(lead.partition_id):
        return skipped("1008", f"Access denied to partition '{_partition_name(state, lead)}'")
    # partitionName is honoured only by the create actions; on createOrUpdate it must name
    # the partition the match already lives in (open question 2, see docs/sandbox.md).
    if action == "createOrUpdate" and partition_name is not None:
        target = resolve_partition(state, partition_name)
        if isinstance(target, tuple):
            return skipped(*target)
        if target != lead.partition_id:
            return skipped(
                "1010", "Partition update not allowed, record exists in a separate partition"
            )
    state.leads.update(lead, values, now)
    return {"id": lead.id, "status": "updated"}


def _partition_name(state: SandboxState, lead: Lead) -> str:
    return state.partitions[lead.partition_id].name


def _create(
    state: SandboxState, values: dict[str, LeadValue], partition_name: str | None, now: float
) -> dict[str, Any]:
    target = resolve_partition(state, partition_name)
    if isinstance(target, tuple):
        return skipped(*target)
    lead = state.leads.add(values, target, now)
    return {"id": lead.id, "status": "created"}


async def sync_leads(call: Call) -> Reply:
    body = call.json_object()
    records = body.get("input")
    if not isinstance(records, list) or not records:
        raise MarketoError("701", "input cannot be blank")
    if len(records) > MAX_BATCH:
        raise MarketoError("1003", f"Input exceeds the maximum of {MAX_BATCH} records")
    action = body.get("action", "createOrUpdate")
    if action not in ACTIONS:
        raise MarketoError("1003", f"Invalid action '{action}'")
    lookup_field = body.get("lookupField") or "email"
    if not isinstance(lookup_field, str):
        raise MarketoError("1003", "Invalid lookupField")
    check_lookup_field(call.state, lookup_field)
    partition_name = body.get("partitionName") or None
    if partition_name is not None and not isinstance(partition_name, str):
        raise MarketoError("1003", "Invalid partitionName")
    if action == "updateOnly":
        partition_name = None
    if call.state.settings.unknown_field_rejects_request:
        for record in records:
            for name in record if isinstance(record, dict) else ():
                if name not in call.state.schema.fields:
                    raise MarketoError("1006", f"Field '{name}' not found")
    result = [
        sync_record(call.state, action, lookup_field, partition_name, record, call.now)
        for record in records
    ]
    return lead_ok(result)


def read_fields(call: Call) -> tuple[str, ...]:
    """The `fields` parameter, checked against the schema (1006 for unknown names)."""
    names = call.values("fields")
    if not names:
        return DEFAULT_READ_FIELDS
    for name in names:
        if name not in call.state.schema.fields:
            raise MarketoError("1006", f"Field '{name}' not found")
    return tuple(names)


async def get_leads(call: Call) -> Reply:
    filter_type = call.param("filterType")
    if not filter_type:
        raise MarketoError("701", "filterType cannot be blank")
    check_lookup_field(call.state, filter_type)
    raw_values = call.values("filterValues")
    if not raw_values:
        raise MarketoError("701", "filterValues cannot be blank")
    if len(raw_values) > MAX_BATCH:
        raise MarketoError("1003", f"filterValues exceeds the maximum of {MAX_BATCH} values")
    fields = read_fields(call)
    batch_size = positive_int(call, "batchSize", MAX_BATCH, MAX_BATCH)
    schema = call.state.schema
    ids: dict[int, None] = {}
    for raw in raw_values:
        try:
            value = schema.coerce(filter_type, raw)
        except InvalidValue:
            continue
        for lead_id in call.state.leads.find(filter_type, value):
            ids[lead_id] = None
    if len(ids) > MAX_FILTER_MATCHES:
        raise MarketoError("1003", "Too many results match the filter")
    leads = call.state.leads
    page, extra = paginate(call, list(ids), batch_size)
    return lead_ok([leads.record(leads.leads[i], fields) for i in page], **extra)


async def get_lead(call: Call) -> Reply:
    fields = read_fields(call)
    leads = call.state.leads
    lead = leads.leads.get(_int(call.path["id"]))
    return lead_ok([] if lead is None else [leads.record(lead, fields)])


def _int(raw: Any) -> int:
    try:
        return int(raw)
    except (TypeError, ValueError):
        return -1


def input_ids(call: Call) -> list[Any]:
    """Ids from a JSON `{input: [{id}]}` body, else from `id` query parameters."""
    items = call.json_input()
    if items is None:
        ids: list[Any] = call.values("id")
    else:
        ids = [item.get("id") if isinstance(item, dict) else None for item in items]
    if not ids:
        raise MarketoError("701", "id cannot be blank")
    if len(ids) > MAX_BATCH:
        raise MarketoError("1003", f"Input exceeds the maximum of {MAX_BATCH} records")
    return ids


def _name(lead: Lead) -> str:
    """The name activities show for a lead: "First Last", else the e-mail address."""
    parts = [lead.fields.get("firstName"), lead.fields.get("lastName")]
    name = " ".join(str(part) for part in parts if part)
    return name or str(lead.fields.get("email") or "")


async def delete_leads(call: Call) -> Reply:
    state = call.state
    result: list[dict[str, Any]] = []
    for raw in input_ids(call):
        lead_id = _int(raw)
        lead = state.leads.leads.get(lead_id)
        if lead is None:
            result.append({"id": lead_id, **skipped("1004", "Lead not found")})
            continue
        state.deleted.append(DeletedLead(lead_id, _name(lead), call.now))
        state.leads.delete(lead_id)
        for static_list in state.lists.values():
            static_list.members.pop(lead_id, None)
        result.append({"id": lead_id, "status": "deleted"})
    return lead_ok(result)


MAX_LOSERS = 25


async def merge_leads(call: Call) -> Reply:
    """The winner keeps its values, takes blank ones from the losers (first listed first) and
    their list memberships; the losers cease to exist."""
    state = call.state
    winner = state.leads.leads.get(_int(call.path["id"]))
    if winner is None:
        raise MarketoError("1004", "Lead not found")
    raw_ids = call.values("leadIds") or call.values("leadId")
    if not raw_ids:
        raise MarketoError("701", "leadIds cannot be blank")
    if len(raw_ids) > MAX_LOSERS:
        raise MarketoError("1080", f"Number of losing leads exceeds the limit of {MAX_LOSERS}")
    losers: list[Lead] = []
    for raw in raw_ids:
        loser = state.leads.leads.get(_int(raw))
        if loser is None:
            raise MarketoError("1004", "Lead not found")
        if loser.id == winner.id:
            raise MarketoError("1003", "The winning lead cannot also be a losing lead")
        if loser not in losers:
            losers.append(loser)
    filled: dict[str, LeadValue] = {}
    for loser in losers:
        for name, value in loser.fields.items():
            if value is not None and winner.fields.get(name) is None and name not in filled:
                filled[name] = value
    for loser in losers:
        state.leads.delete(loser.id)
        for static_list in state.lists.values():
            if loser.id in static_list.members:
                del static_list.members[loser.id]
                static_list.members.setdefault(winner.id, None)
    state.leads.update(winner, filled, call.now)
    return Reply({"success": True})


async def describe(call: Call) -> Reply:
    return lead_ok(call.state.schema.describe())


async def describe2(call: Call) -> Reply:
    return lead_ok(call.state.schema.describe2())


async def get_partitions(call: Call) -> Reply:
    return lead_ok(
        [
            {"id": p.id, "name": p.name, "description": p.description}
            for p in call.state.partitions.values()
        ]
    )


async def update_partitions(call: Call) -> Reply:
    items = call.json_input()
    if not items:
        raise MarketoError("701", "input cannot be blank")
    if len(items) > MAX_BATCH:
        raise MarketoError("1003", f"Input exceeds the maximum of {MAX_BATCH} records")
    state = call.state
    result: list[dict[str, Any]] = []
    for item in items:
        item = item if isinstance(item, dict) else {}
        lead_id = _int(item.get("id"))
        lead = state.leads.leads.get(lead_id)
        if lead is None:
            result.append({"id": lead_id, **skipped("1004", "Lead not found")})
            continue
        name = item.get("partitionName")
        target = resolve_partition(state, name if isinstance(name, str) else "")
        if isinstance(target, tuple):
            result.append({"id": lead_id, **skipped(*target)})
            continue
        state.leads.move(lead, target, call.now)
        result.append({"id": lead_id, "status": "updated"})
    return lead_ok(result)


async def get_workspaces(call: Call) -> Reply:
    """User Management API: a bare array, not the usual envelope."""
    state = call.state
    return Reply(
        [
            {
                "id": ws.id,
                "name": ws.name,
                "description": ws.description,
                "globalViz": "Full",
                "status": "Active",
                "currencyInfo": {"currencyCode": "USD", "currencySymbol": "$"},
                "createdAt": asset_time(state.created_at),
                "updatedAt": asset_time(state.created_at),
            }
            for ws in state.workspaces.values()
        ]
    )
