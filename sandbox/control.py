"""The `/_sandbox/*` control API (not part of Marketo): reset, seed, dump, counters, faults,
schema changes."""

from __future__ import annotations

import json
from datetime import date
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox import extract
from sandbox.clock import ManualClock
from sandbox.faults import Fault
from sandbox.limits import quota_day
from sandbox.schema import InvalidValue, iso_z, parse_time
from sandbox.settings import parse_field

if TYPE_CHECKING:
    from sandbox.app import Sandbox


def _bad(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


async def _json(request: Request) -> Any:
    body = await request.body()
    return json.loads(body) if body.strip() else {}


def routes(sandbox: Sandbox) -> list[Route]:
    """The control endpoints bound to one sandbox."""

    async def reset(request: Request) -> Response:
        try:
            body = await _json(request)
            if not isinstance(body, dict):
                raise ValueError("the body must be an object")
            sandbox.reset(sandbox.base_settings.with_overrides(body))
        except ValueError as error:
            return _bad(str(error))
        return JSONResponse({"ok": True})

    async def seed_leads(request: Request) -> Response:
        try:
            body = await _json(request)
        except ValueError:
            return _bad("invalid JSON")
        raw_leads = body.get("leads") if isinstance(body, dict) else None
        if not isinstance(raw_leads, list):
            return _bad("expected {leads: [...]}")
        state = sandbox.state
        now = sandbox.clock.now()
        prepared = []
        for number, raw in enumerate(raw_leads):
            if not isinstance(raw, dict):
                return _bad(f"lead {number} is not an object")
            fields = dict(raw)
            partition = fields.pop("partition", None) or state.default_partition.name
            partition_id = state.partition_ids.get(partition)
            if partition_id is None:
                return _bad(f"lead {number}: unknown partition {partition!r}")
            try:
                updated = parse_time(fields.pop("updatedAt")) if "updatedAt" in fields else now
                created = parse_time(fields.pop("createdAt")) if "createdAt" in fields else updated
            except (ValueError, TypeError):
                return _bad(f"lead {number}: createdAt/updatedAt must be ISO-8601")
            # Seeding may set fields Sync Leads cannot (CRM ids, cookies...).
            values = {}
            for name, value in fields.items():
                if name not in state.schema.fields or name in ("id", "leadPartitionId"):
                    return _bad(f"lead {number}: unknown or system field {name!r}")
                try:
                    values[name] = state.schema.coerce(name, value)
                except InvalidValue:
                    return _bad(f"lead {number}: invalid value for {name!r}")
            prepared.append((values, partition_id, created, updated))
        ids = []
        for values, partition_id, created, updated in prepared:
            lead = state.leads.add(values, partition_id, created)
            lead.updated_at = updated
            ids.append(lead.id)
        return JSONResponse({"ids": ids})

    async def dump_leads(request: Request) -> Response:
        state = sandbox.state
        return JSONResponse(
            {
                "leads": [
                    {
                        "id": lead.id,
                        "partition": state.partitions[lead.partition_id].name,
                        "createdAt": iso_z(lead.created_at),
                        "updatedAt": iso_z(lead.updated_at),
                        "fields": {k: v for k, v in lead.fields.items() if v is not None},
                    }
                    for lead in state.leads.leads.values()
                ]
            }
        )

    async def dump_lists(request: Request) -> Response:
        return JSONResponse(
            {
                "lists": [
                    {
                        "id": item.id,
                        "name": item.name,
                        "workspace": item.workspace,
                        "folderId": item.folder_id,
                        "members": list(item.members),
                    }
                    for item in sandbox.state.lists.values()
                ]
            }
        )

    async def calls(request: Request) -> Response:
        return JSONResponse(sandbox.stats.as_json(sandbox.limiter))

    async def call_log(request: Request) -> Response:
        return JSONResponse({"calls": sandbox.stats.log})

    async def add_faults(request: Request) -> Response:
        try:
            body = await _json(request)
            items = body.get("faults", body) if isinstance(body, dict) else body
            if not isinstance(items, list):
                items = [items]
            faults = [Fault.parse(item) for item in items]
        except ValueError as error:
            return _bad(str(error))
        sandbox.faults.rules.extend(faults)
        return JSONResponse({"active": len(sandbox.faults.rules)})

    async def clear_faults(request: Request) -> Response:
        sandbox.faults.rules.clear()
        return JSONResponse({"active": 0})

    async def advance_clock(request: Request) -> Response:
        if not isinstance(sandbox.clock, ManualClock):
            return JSONResponse({"error": "the sandbox runs on the real clock"}, status_code=409)
        try:
            body = await _json(request)
            seconds = float(body["advance_seconds"])
            sandbox.clock.advance(seconds)
        except (ValueError, KeyError, TypeError) as error:
            return _bad(f"expected {{advance_seconds: number}}: {error}")
        return JSONResponse({"now": sandbox.clock.now()})

    async def add_fields(request: Request) -> Response:
        try:
            body = await _json(request)
            items = body.get("fields") if isinstance(body, dict) else None
            if not isinstance(items, list):
                raise ValueError("expected {fields: [...]}")
            specs = [parse_field(item) for item in items]
            for spec in specs:
                sandbox.state.schema.add(spec)
        except ValueError as error:
            return _bad(str(error))
        return JSONResponse({"fields": [spec.name for spec in specs]})

    async def delete_field(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            sandbox.state.schema.delete(name)
        except ValueError as error:
            return _bad(str(error))
        for lead in sandbox.state.leads.leads.values():
            lead.fields.pop(name, None)
        return JSONResponse({"deleted": name})

    async def seed_usage(request: Request) -> Response:
        """Calls another integration (API user) made on a day; today's also spend the quota."""
        try:
            body = await _json(request)
            user = body["userId"]
            count = body["count"]
            endpoint = body.get("endpoint", "GET /rest/v1/leads.json")
            now = sandbox.clock.now()
            day = body.get("date", quota_day(now))
            if not isinstance(user, str) or not user:
                raise ValueError("userId must be a non-empty string")
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise ValueError("count must be a non-negative integer")
            if not isinstance(endpoint, str) or not isinstance(day, str):
                raise ValueError("endpoint and date must be strings")
            date.fromisoformat(day)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            return _bad(f"expected {{userId, count, date?, endpoint?}}: {error}")
        sandbox.state.usage.count(day, user, endpoint, count)
        if day == quota_day(now):
            sandbox.limiter.spend(now, count)
        return JSONResponse({"date": day, "users": sandbox.state.usage.day(day).users()})

    async def dump_usage(request: Request) -> Response:
        return JSONResponse(
            {
                day: {
                    "calls": {user: dict(endpoints) for user, endpoints in usage.calls.items()},
                    "errors": dict(usage.errors),
                }
                for day, usage in sorted(sandbox.state.usage.days.items())
            }
        )

    async def export_limit(request: Request) -> Response:
        """Shrink (or grow) today's export allowance without resetting anything."""
        try:
            body = await _json(request)
            limit = body["daily_limit_bytes"]
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
                raise ValueError("daily_limit_bytes must be a non-negative integer")
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            return _bad(f"expected {{daily_limit_bytes}}: {error}")
        sandbox.state.export_daily_limit = limit
        now = sandbox.clock.now()
        extract.advance(sandbox.state, now)
        return JSONResponse(
            {"daily_limit_bytes": limit, "used_bytes": extract.exported_today(sandbox.state, now)}
        )

    return [
        Route("/_sandbox/reset", reset, methods=["POST"]),
        Route("/_sandbox/bulk-export", export_limit, methods=["POST"]),
        Route("/_sandbox/usage", seed_usage, methods=["POST"]),
        Route("/_sandbox/usage", dump_usage, methods=["GET"]),
        Route("/_sandbox/leads", seed_leads, methods=["POST"]),
        Route("/_sandbox/leads", dump_leads, methods=["GET"]),
        Route("/_sandbox/lists", dump_lists, methods=["GET"]),
        Route("/_sandbox/calls", calls, methods=["GET"]),
        Route("/_sandbox/call-log", call_log, methods=["GET"]),
        Route("/_sandbox/faults", add_faults, methods=["POST"]),
        Route("/_sandbox/faults", clear_faults, methods=["DELETE"]),
        Route("/_sandbox/clock", advance_clock, methods=["POST"]),
        Route("/_sandbox/fields", add_fields, methods=["POST"]),
        Route("/_sandbox/fields/{name}", delete_field, methods=["DELETE"]),
    ]
