"""Bulk Lead Extract: create, enqueue, status, file, cancel and the job list.

Jobs share the bulk queue machinery of `sandbox.bulk` (2 processing, 10 queued or processing).
A job's file is written from the leads as they are when it starts processing; its size counts
against the day's export allowance when it completes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import uuid
from typing import Any

from sandbox.bulk import MAX_QUEUED, advance_queue
from sandbox.http import Call, MarketoError, Reply, lead_ok
from sandbox.limits import quota_day
from sandbox.schema import iso_z, parse_time
from sandbox.state import ExportJob, Lead, SandboxState

FORMATS = {"CSV": ",", "TSV": "\t", "SSV": ";"}
DATE_FILTERS = ("createdAt", "updatedAt")
LIST_FILTERS = ("staticListId", "staticListName")
MAX_RANGE_SECONDS = 31 * 86_400
ACTIVE = ("Queued", "Processing")


def advance(state: SandboxState, now: float) -> None:
    """Bring the export jobs up to `now` and forget those past their retention."""
    settings = state.settings

    def start(job: ExportJob, at: float) -> None:
        job.status = "Processing"
        _write(state, job)

    def finish(job: ExportJob, at: float) -> None:
        job.status = "Completed"
        job.finished_at = at

    advance_queue(
        state.exports.values(),
        now,
        running="Processing",
        queue_seconds=state.settings.bulk_queue_seconds,
        run_seconds=settings.bulk_export_seconds,
        start=start,
        finish=finish,
    )
    horizon = now - settings.bulk_export_retention_seconds
    for job in list(state.exports.values()):
        last = job.finished_at if job.finished_at is not None else job.created_at
        if job.status not in ("Created", *ACTIVE) and last <= horizon:
            del state.exports[job.id]


def _members(state: SandboxState, job: ExportJob) -> list[Lead]:
    leads = state.leads.leads
    if job.filter_type in LIST_FILTERS:
        static_list = state.lists.get(job.filter_value)
        ids = list(static_list.members) if static_list is not None else []
        return [leads[i] for i in ids if i in leads]
    start, end = job.filter_value
    attribute = "created_at" if job.filter_type == "createdAt" else "updated_at"
    return [lead for lead in leads.values() if start <= getattr(lead, attribute) <= end]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _write(state: SandboxState, job: ExportJob) -> None:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=FORMATS[job.format], lineterminator="\n")
    writer.writerow(job.headers)
    members = _members(state, job)
    for lead in members:
        writer.writerow([_cell(state.leads.value(lead, name)) for name in job.fields])
    job.content = out.getvalue()
    job.records = len(members)


def exported_today(state: SandboxState, now: float) -> int:
    """Bytes of the export files completed this Marketo day."""
    today = quota_day(now)
    return sum(
        len(job.content.encode())
        for job in state.exports.values()
        if job.finished_at is not None and quota_day(job.finished_at) == today
    )


def _check_allowance(state: SandboxState, now: float) -> None:
    if exported_today(state, now) >= state.export_daily_limit:
        raise MarketoError("1029", "Export daily quota exceeded")


def status_record(job: ExportJob) -> dict[str, Any]:
    record: dict[str, Any] = {
        "exportId": job.id,
        "format": job.format,
        "status": job.status,
        "createdAt": iso_z(job.created_at),
    }
    if job.status != "Created":
        record["queuedAt"] = iso_z(job.queued_at)
    if job.started_at is not None:
        record["startedAt"] = iso_z(job.started_at)
    if job.status == "Completed" and job.finished_at is not None:
        data = job.content.encode()
        record["finishedAt"] = iso_z(job.finished_at)
        record["numberOfRecords"] = job.records
        record["fileSize"] = len(data)
        record["fileChecksum"] = "sha256:" + hashlib.sha256(data).hexdigest()
    return record


def _filter(call: Call, raw: Any) -> tuple[str, Any]:
    if not isinstance(raw, dict) or len(raw) != 1:
        raise MarketoError("1003", "Exactly one filter type is required")
    ((name, value),) = raw.items()
    state = call.state
    if name == "staticListId":
        if not isinstance(value, int) or value not in state.lists:
            raise MarketoError("1003", f"Static list '{value}' not found")
        return name, value
    if name == "staticListName":
        found = next((item.id for item in state.lists.values() if item.name == value), None)
        if found is None:
            raise MarketoError("1003", f"Static list '{value}' not found")
        return name, found
    if name in DATE_FILTERS:
        try:
            start = parse_time(value["startAt"])
            end = parse_time(value["endAt"])
        except (KeyError, TypeError, ValueError):
            raise MarketoError("1003", f"Invalid {name} filter: startAt and endAt needed") from None
        if end < start or end - start > MAX_RANGE_SECONDS:
            raise MarketoError("1003", f"Invalid {name} filter: the range must be 31 days or less")
        return name, (start, end)
    raise MarketoError("1003", f"Invalid filter type '{name}'")


async def create_export(call: Call) -> Reply:
    body = call.json_object()
    fields = body.get("fields")
    if not isinstance(fields, list) or not fields:
        raise MarketoError("701", "fields cannot be blank")
    for name in fields:
        if not isinstance(name, str) or name not in call.state.schema.fields:
            raise MarketoError("1006", f"Field '{name}' not found")
    file_format = str(body.get("format", "CSV")).upper()
    if file_format not in FORMATS:
        raise MarketoError("1003", f"Invalid format '{file_format}'")
    renames = body.get("columnHeaderNames") or {}
    if not isinstance(renames, dict):
        raise MarketoError("1003", "Invalid columnHeaderNames")
    filter_type, filter_value = _filter(call, body.get("filter"))
    advance(call.state, call.now)
    _check_allowance(call.state, call.now)
    job = ExportJob(
        id=str(uuid.uuid4()),
        fields=tuple(fields),
        headers=tuple(str(renames.get(name, name)) for name in fields),
        format=file_format,
        filter_type=filter_type,
        filter_value=filter_value,
        created_at=call.now,
    )
    call.state.exports[job.id] = job
    return lead_ok([status_record(job)])


def _job(call: Call) -> ExportJob:
    advance(call.state, call.now)
    job = call.state.exports.get(call.path["export_id"])
    if job is None:
        raise MarketoError("1013", "Object not found")
    return job


async def enqueue_export(call: Call) -> Reply:
    job = _job(call)
    state = call.state
    if job.status in ACTIVE:
        raise MarketoError("1029", "Job already queued")
    if job.status != "Created":
        raise MarketoError("1003", f"Job is {job.status}, not Created")
    if sum(1 for other in state.exports.values() if other.status in ACTIVE) >= MAX_QUEUED:
        raise MarketoError("1029", "Too many jobs in queue")
    _check_allowance(state, call.now)
    job.status = "Queued"
    job.queued_at = call.now
    return lead_ok([status_record(job)])


async def export_status(call: Call) -> Reply:
    return lead_ok([status_record(_job(call))])


async def cancel_export(call: Call) -> Reply:
    job = _job(call)
    if job.status not in ("Created", *ACTIVE):
        raise MarketoError("1003", f"Job is {job.status} and cannot be cancelled")
    job.status = "Cancelled"
    job.content = ""
    return lead_ok([status_record(job)])


async def export_file(call: Call) -> Reply:
    job = _job(call)
    if job.status != "Completed":
        raise MarketoError("1003", f"Job is {job.status}, the file is not ready")
    return Reply(job.content, media_type="text/csv;charset=UTF-8")


async def list_exports(call: Call) -> Reply:
    advance(call.state, call.now)
    wanted = set(call.values("status"))
    return lead_ok(
        [
            status_record(job)
            for job in call.state.exports.values()
            if not wanted or job.status in wanted
        ]
    )
