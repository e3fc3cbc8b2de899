"""Bulk lead import: upload, the clock-driven Queued -> Importing -> Complete cycle, files."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

from sandbox.http import Call, MarketoError, Reply, lead_ok
from sandbox.leads import check_lookup_field, resolve_partition, sync_record
from sandbox.state import ImportJob, SandboxState

MAX_RUNNING = 2
MAX_QUEUED = 10  # including the running ones
DELIMITERS = {"csv": ",", "tsv": "\t", "ssv": ";"}


class QueuedJob(Protocol):
    """What the queue machinery needs of a bulk job (import or export)."""

    status: str
    queued_at: float
    started_at: float | None


Job = TypeVar("Job", bound=QueuedJob)


def advance_queue(
    jobs: Iterable[Job],
    now: float,
    *,
    running: str,
    queue_seconds: float,
    run_seconds: float,
    start: Callable[[Job, float], None],
    finish: Callable[[Job, float], None],
) -> None:
    """Replay, in time order, every job start and finish the clock has passed since last time.

    At most MAX_RUNNING jobs are `running` at once; "Queued" ones start first in first out, at
    least `queue_seconds` after they were queued, and finish `run_seconds` after they started.
    `start` and `finish` set the job's new status themselves (with whatever else they do).
    """
    jobs = list(jobs)
    freed_at = 0.0
    while True:
        active = [job for job in jobs if job.status == running]
        finishing = min(active, key=lambda job: job.started_at or 0.0, default=None)
        finish_at = math.inf
        if finishing is not None and finishing.started_at is not None:
            finish_at = finishing.started_at + run_seconds
        waiting = next((job for job in jobs if job.status == "Queued"), None)
        start_at = math.inf
        if waiting is not None and len(active) < MAX_RUNNING:
            start_at = max(waiting.queued_at + queue_seconds, freed_at)
        if min(finish_at, start_at) > now:
            return
        if finish_at <= start_at and finishing is not None:
            finish(finishing, finish_at)
            freed_at = finish_at
        elif waiting is not None:
            waiting.started_at = start_at
            start(waiting, start_at)


def advance(state: SandboxState, now: float) -> None:
    """Bring the bulk imports up to `now`."""

    def start(job: ImportJob, at: float) -> None:
        job.status = "Importing"
        job.message = "Import in progress"

    def finish(job: ImportJob, at: float) -> None:
        _run(state, job, at)

    settings = state.settings
    advance_queue(
        state.imports.values(),
        now,
        running="Importing",
        queue_seconds=settings.bulk_queue_seconds,
        run_seconds=settings.bulk_import_seconds,
        start=start,
        finish=finish,
    )


def _run(state: SandboxState, job: ImportJob, now: float) -> None:
    delimiter = DELIMITERS[job.format]
    rows = list(csv.reader(io.StringIO(job.content), delimiter=delimiter))
    header = [name.strip() for name in rows[0]] if rows else []
    unknown = [name for name in header if name not in state.schema.fields]
    if not header or unknown:
        job.status = "Failed"
        job.message = (
            "Import failed: the file is empty"
            if not header
            else f"Import failed: field '{unknown[0]}' not found"
        )
        return
    failures: list[list[str]] = []
    warnings: list[list[str]] = []
    imported = 0
    static_list = state.lists.get(job.list_id) if job.list_id is not None else None
    # A lookup by id can only update; any other key inserts or updates.
    action = "updateOnly" if job.lookup_field == "id" else "createOrUpdate"
    for row in rows[1:]:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            failures.append([*row, "Row has a different number of columns than the header"])
            continue
        record: dict[str, Any] = {}
        for name, cell in zip(header, row, strict=True):
            if name == "id":
                record[name] = int(cell) if cell.strip().isdigit() else cell
            elif cell != "":
                record[name] = cell
        truncated = _truncate(state, record)
        outcome = sync_record(state, action, job.lookup_field, job.partition_name, record, now)
        if outcome["status"] == "skipped":
            failures.append([*row, outcome["reasons"][0]["message"]])
            continue
        imported += 1
        if static_list is not None:
            static_list.members[outcome["id"]] = None
        if truncated:
            warnings.append(
                [*row, f"Value for field '{truncated}' was truncated to its maximum length"]
            )
    job.processed = imported
    job.failed = len(failures)
    job.warned = len(warnings)
    job.failures = _file(header, "Import Failure Reason", failures, delimiter)
    job.warnings = _file(header, "Import Warning Reason", warnings, delimiter)
    members = f" ({imported} members)" if static_list is not None else ""
    job.status = "Complete"
    if failures:
        job.message = (
            f"Import completed with errors, {imported} records imported{members}, "
            f"{len(failures)} failed"
        )
    else:
        job.message = f"Import succeeded, {imported} records imported{members}"


def _truncate(state: SandboxState, record: dict[str, Any]) -> str | None:
    """Shorten over-long strings as the importer does, naming the last field it cut."""
    cut = None
    for name, value in record.items():
        spec = state.schema.fields[name]
        if (
            spec.data_type in ("string", "text")
            and spec.length is not None
            and isinstance(value, str)
            and len(value) > spec.length
        ):
            record[name] = value[: spec.length]
            cut = name
    return cut


def _file(header: list[str], reason: str, rows: list[list[str]], delimiter: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    writer.writerow([*header, reason])
    writer.writerows(rows)
    return out.getvalue()


def status_record(job: ImportJob) -> dict[str, Any]:
    return {
        "batchId": job.id,
        "importId": str(job.id),
        "status": job.status,
        "numOfLeadsProcessed": job.processed,
        "numOfRowsFailed": job.failed,
        "numOfRowsWithWarning": job.warned,
        "message": job.message,
    }


async def create_import(call: Call) -> Reply:
    state = call.state
    form = call.form
    upload = form.get("file") if form is not None else None
    if upload is None or isinstance(upload, str):
        raise MarketoError("701", "file cannot be blank")
    raw = await upload.read()
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise MarketoError("1003", "File is not UTF-8 encoded") from None

    def option(name: str) -> str | None:
        value = form.get(name) if form is not None else None
        if isinstance(value, str) and value:
            return value
        return call.param(name) or None

    file_format = (option("format") or "csv").lower()
    if file_format not in DELIMITERS:
        raise MarketoError("1003", f"Invalid format '{file_format}'")
    lookup_field = option("lookupField") or "email"
    check_lookup_field(state, lookup_field)
    partition_name = option("partitionName")
    if partition_name is not None:
        target = resolve_partition(state, partition_name)
        if isinstance(target, tuple):
            raise MarketoError(*target)
    list_id: int | None = None
    raw_list = option("listId")
    if raw_list is not None:
        list_id = int(raw_list) if raw_list.isdigit() else -1
        if list_id not in state.lists:
            raise MarketoError("1013", "Object not found")
        if state.list_in_use(list_id):
            raise MarketoError("1019", "Import in progress")
    advance(state, call.now)
    active = sum(1 for job in state.imports.values() if job.status in ("Queued", "Importing"))
    if active >= MAX_QUEUED:
        raise MarketoError("1016", "Too many imports")
    job = ImportJob(
        id=len(state.imports) + 1,
        content=content,
        format=file_format,
        lookup_field=lookup_field,
        list_id=list_id,
        partition_name=partition_name,
        queued_at=call.now,
    )
    state.imports[job.id] = job
    return lead_ok([{"batchId": job.id, "importId": str(job.id), "status": job.status}])


def _job(call: Call) -> ImportJob:
    advance(call.state, call.now)
    try:
        job = call.state.imports.get(int(call.path["batch_id"]))
    except ValueError:
        job = None
    if job is None:
        raise MarketoError("1013", "Object not found")
    return job


async def import_status(call: Call) -> Reply:
    return lead_ok([status_record(_job(call))])


async def import_failures(call: Call) -> Reply:
    return Reply(_job(call).failures, media_type="text/csv;charset=UTF-8")


async def import_warnings(call: Call) -> Reply:
    return Reply(_job(call).warnings, media_type="text/csv;charset=UTF-8")
