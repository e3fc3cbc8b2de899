"""Large backlogs through Marketo's bulk lead import, with the REST path's final state.

`BulkSyncEngine` is a `SyncEngine` whose write step goes through bulk import; planning
(supersede, exclusions, coalescing), resolving (REST look-ups, 300 per call, the most recently
updated of several matches) and the choice between update, create and exclude are the executor's,
unchanged. Then, wave after wave of resolved persons (look-ups of the next wave overlap the
imports of the previous one):

1. matched persons are written by id: a CSV of `id` + the fields the executor settles (write
   policies applied, no dedupe field), `lookupField=id` (Marketo
   updates only with it, so an import can never create a lead here);
2. unmatched persons that the rules allow to create are written with `lookupField=<dedupe
   field>` and `partitionName`: an insert-or-update on the dedupe field, so a lead created
   meanwhile by someone else is updated, not duplicated (or, with several matches, its row
   fails and goes to the REST path, which picks the most recent one);
3. each row carries the person's first joined audience through the import's `listId` (failed
   rows join no list); further joins use REST list adds by id, or an id-only import when that
   spends fewer calls; exits always use REST removals. A lead an import created is looked up
   only for such a further join: otherwise the lead its profile resolves to
   (`HOLDER_RESOLVED`) holds its membership and its next update binds it. A join is held as
   soon as its import completed, so a batch that stops later (a look-up, the REST fall-back)
   still records it with its deferred updates, like the executor's confirmed list changes. An
   import whose status is unknown when the batch stops (queued, or its creation unanswered)
   may still join its rows' leads: they are held unconfirmed, like a REST add of unknown
   outcome (removed by an exit before the retry, added again by the retry).

Files are CSV (csv module quoting) under `BulkPolicy.max_file_bytes`, one column set per file
(a missing column leaves a field alone, which an empty cell may not); rows holding an empty
value (REST clears the field, an import may not) go through REST. Jobs are polled with backoff,
at most `BulkPolicy.max_jobs` of ours queued or running and one at a time per list (Marketo
answers 1019 otherwise; 1016 and 1019 are waited out by the client). Failures and warnings
files are mapped back to persons by the key column: a failed row is FAILED with its reason,
except the rows whose lead changed under us (1004 on update, 1005/1007/1010 on create), which
the REST path resolves again; a warning ends up in the outcome's reason. A job that fails as a
whole, or whose failures file cannot be mapped, is redone through REST (every import is
idempotent: by id, or insert-or-update on the dedupe field).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal, Protocol

from service.delivery.engine.executor import (
    BATCH_SIZE,
    CODE_LEAD_NOT_FOUND,
    CoHolderReader,
    SyncEngine,
    _chunks,
    _Person,
    _Stop,
    may_have_applied,
)
from service.delivery.engine.locks import KeyedLocks
from service.delivery.engine.ports import MarketoPort
from service.domain import (
    HOLDER_RESOLVED,
    Action,
    ActionType,
    ProfileMapper,
    SyncRules,
    WritePolicy,
    dedupe_key,
)
from service.marketo.clock import Clock
from service.marketo.errors import RejectedError, UnavailableError
from service.marketo.types import ImportJob, Lead

__all__ = ["BulkImportPort", "BulkPolicy", "BulkSyncEngine", "reason_code"]

log = logging.getLogger(__name__)

FAILURE_COLUMN = "Import Failure Reason"
WARNING_COLUMN = "Import Warning Reason"

_REASON_CODES = (
    ("Lead not found", "1004"),
    ("Lead already exists", "1005"),
    ("Multiple lead match", "1007"),
    ("Access denied to partition", "1008"),
    ("Partition name must be specified", "1009"),
    ("Partition update not allowed", "1010"),
    ("Invalid value for field", "1003"),
    ("is not updateable", "1003"),
    ("is only allowed", "1003"),
    ("not found", "1006"),
)
"""Failures files carry Marketo's message only; the code each message stands for."""

RESOLVE_AGAIN_ON_UPDATE = frozenset({CODE_LEAD_NOT_FOUND})
RESOLVE_AGAIN_ON_CREATE = frozenset({"1005", "1007", "1010"})
"""Row failures meaning the lead changed since the look-up: the REST path resolves them again."""

JobKind = Literal["update", "create", "members"]


def reason_code(message: str) -> str:
    """The Marketo code behind a failures-file reason ("" when unknown)."""
    for fragment, code in _REASON_CODES:
        if fragment.lower() in message.lower():
            return code
    return ""


class BulkImportPort(MarketoPort, Protocol):
    """The Marketo operations of the bulk path (the real client satisfies it)."""

    async def create_import(
        self,
        csv_bytes: bytes,
        *,
        lookup_field: str | None = None,
        list_id: int | None = None,
        partition_name: str | None = None,
    ) -> ImportJob:
        """Queue a bulk lead import of a CSV file."""
        ...

    async def import_status(self, batch_id: int) -> ImportJob:
        """The status of an import job."""
        ...

    async def import_failures(self, batch_id: int) -> str:
        """The failures file of a finished job."""
        ...

    async def import_warnings(self, batch_id: int) -> str:
        """The warnings file of a finished job."""
        ...


@dataclass(frozen=True, slots=True)
class BulkPolicy:
    """How the bulk path sizes, queues and polls its imports."""

    wave_size: int = 100_000
    """Persons resolved before their imports are queued (the next wave's look-ups overlap)."""
    max_file_bytes: int = 9_500_000
    """Largest CSV file (Marketo refuses 10 MB and more, multipart overhead included)."""
    min_import_rows: int = 1_500
    """Rows below which a group of rows goes through REST (an import costs about 5 calls and
    minutes of latency; REST writes 300 rows a call)."""
    membership_import_min: int = 2_400
    """Members of one list to add after the writes from which an id-only import is used
    instead of REST adds (300 ids a call)."""
    lookup_concurrency: int = 4
    """Look-up calls in flight at once (each of 300 values; the client's limits still apply)."""
    max_jobs: int = 8
    """Our imports queued or running at once (Marketo: 10 queued including 2 running, shared
    with other integrations)."""
    poll_initial: float = 5.0
    """Seconds before the first status poll of a job."""
    poll_max: float = 30.0
    """Longest wait between two polls."""
    poll_multiplier: float = 1.5
    job_timeout: float = 6 * 3600.0
    """A job not finished after this long is given up on: its persons are deferred."""


@dataclass(slots=True)
class _Job:
    kind: JobKind
    content: bytes
    persons: list[_Person]
    lookup_field: str
    key_column: str
    list_id: int | None = None
    audience: str | None = None
    partition: str | None = None
    queued: bool = False
    """Marketo accepted the import: it runs to its end whatever happens to this batch."""


@dataclass(slots=True)
class _JobResult:
    redo: bool = False
    """Redo every person of the job through REST (job failed or could not be read back)."""
    failures: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Run:
    """What one bulk batch collects while its jobs run."""

    rest: list[_Person] = field(default_factory=list)
    written: list[_Person] = field(default_factory=list)
    joined: dict[str, set[str]] = field(default_factory=dict)
    """Person key -> audiences already joined through an import's listId."""


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _expressible(fields: Mapping[str, Any]) -> bool:
    """Whether an import row can carry these values exactly (an empty cell is not "null")."""
    return all(v is not None and not (isinstance(v, str) and v == "") for v in fields.values())


class _CsvFiles:
    """Rows appended to CSV files that stay under a size bound, each starting with the header."""

    def __init__(self, columns: Sequence[str], max_bytes: int) -> None:
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\n")
        self._header = self._line(columns)
        self._max = max_bytes
        self.files: list[tuple[bytes, list[_Person]]] = []
        self._parts: list[bytes] = []
        self._size = 0
        self._persons: list[_Person] = []

    def _line(self, cells: Sequence[str]) -> bytes:
        self._buffer.seek(0)
        self._buffer.truncate()
        self._writer.writerow(cells)
        return self._buffer.getvalue().encode("utf-8")

    def add(self, person: _Person, cells: Sequence[str]) -> None:
        line = self._line(cells)
        if self._persons and self._size + len(line) > self._max:
            self.close()
        if not self._persons:
            self._parts = [self._header]
            self._size = len(self._header)
        self._parts.append(line)
        self._size += len(line)
        self._persons.append(person)

    def close(self) -> None:
        if self._persons:
            self.files.append((b"".join(self._parts), self._persons))
        self._parts, self._persons, self._size = [], [], 0


def _parse(text: str, reason_column: str, key_column: str) -> list[tuple[str, str]]:
    """(key cell, reason) of each row of a failures or warnings file."""
    if not text.strip():
        return []
    rows = list(csv.reader(io.StringIO(text)))
    header = [name.strip() for name in rows[0]]
    if reason_column not in header or key_column not in header:
        return []
    key_at, reason_at = header.index(key_column), header.index(reason_column)
    return [
        (row[key_at], row[reason_at])
        for row in rows[1:]
        if len(row) > max(key_at, reason_at) and any(cell.strip() for cell in row)
    ]


class BulkSyncEngine(SyncEngine):
    """A `SyncEngine` that writes through bulk import; same `sync` contract (`BatchResult`).

    `client` must also offer the bulk import calls; `clock` paces the status polls.
    """

    def __init__(
        self,
        client: BulkImportPort,
        rules: SyncRules,
        mapper: ProfileMapper,
        *,
        clock: Clock,
        policy: BulkPolicy | None = None,
        audience_lists: Mapping[str, int] | None = None,
        locks: KeyedLocks | None = None,
        batch_size: int = BATCH_SIZE,
        max_rounds: int = 3,
        planning_scope: Callable[[int], AbstractContextManager[object]] | None = None,
        write_policies: Mapping[str, WritePolicy] | None = None,
        tracked_lists: Collection[str] = (),
        co_holders: CoHolderReader | None = None,
    ) -> None:
        super().__init__(
            client,
            rules,
            mapper,
            audience_lists=audience_lists,
            locks=locks,
            batch_size=batch_size,
            max_rounds=max_rounds,
            planning_scope=planning_scope,
            write_policies=write_policies,
            tracked_lists=tracked_lists,
            co_holders=co_holders,
        )
        self._bulk = client
        self._clock = clock
        self._policy = policy or BulkPolicy()
        self._slots = asyncio.Semaphore(self._policy.max_jobs)
        self._list_locks: dict[int, asyncio.Lock] = {}
        self.jobs: list[ImportJob] = []
        """Every finished import job of this engine (for reports and tests)."""

    async def _execute(self, persons: list[_Person]) -> None:
        run = _Run()
        tasks: list[asyncio.Task[None]] = []
        stop: _Stop | None = None
        try:
            for person in persons:
                if not self._needs_lookup(person):
                    # bound and nothing to write: only its lists may change
                    person.lead_id = person.plan.bound_lead
                    person.bound = True
                    run.written.append(person)
            persons = [p for p in persons if p not in run.written]
            for wave in _chunks(persons, self._policy.wave_size):
                log.debug("resolving %d persons", len(wave))
                found = await self._resolve(wave)
                log.debug("resolved %d persons", len(wave))
                for job in self._wave_jobs(wave, found, run):
                    tasks.append(asyncio.create_task(self._write_job(job, run)))
        except _Stop as error:
            stop = error
        finally:
            # the imports already queued run to their end whatever stopped the look-ups
            ended = await asyncio.gather(*tasks, return_exceptions=True)
        for end in ended:
            if isinstance(end, BaseException):
                raise end
        if stop is not None:
            raise stop
        if run.rest:
            for person in run.rest:
                person.lead_id = None
            await super()._execute(run.rest)
        await self._finish_lists(run)

    async def _resolve(self, wave: Sequence[_Person]) -> dict[str, Lead]:
        """The executor's look-up, several calls in flight."""
        streams = max(self._policy.lookup_concurrency, 1)
        per_call = self._batch_size
        size = -(-len(wave) // (streams * per_call)) * per_call
        parts = _chunks(wave, max(size, per_call))
        answers = await asyncio.gather(*(self._lookup(p) for p in parts), return_exceptions=True)
        found: dict[str, Lead] = {}
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
            found.update(answer)
        return found

    # -- building jobs ------------------------------------------------------------------------

    def _wave_jobs(
        self, wave: Sequence[_Person], found: Mapping[str, Lead], run: _Run
    ) -> list[_Job]:
        rules = self._rules
        groups: dict[tuple[JobKind, str | None, frozenset[str]], list[_Person]] = {}
        for person in wave:
            if person.final:
                continue
            lead = found.get(person.plan.key)
            if lead is not None:
                if not self._matched(person, lead):
                    run.written.append(person)  # no attributes: memberships come later
                    continue
                kind: JobKind = "update"
            elif self._leaves_unresolved(person):
                run.written.append(person)  # no lead to resolve to: the known holders leave
                continue
            else:
                self._decide_unmatched(person)
                if person.final:
                    continue
                self._settle(person, None)
                kind = "create"
            fields = person.fields
            if not _expressible(fields) or (kind == "create" and rules.dedupe_field not in fields):
                run.rest.append(person)
                continue
            joins = sorted(self._joins(person)) if rules.manages_lists else []
            audience = joins[0] if joins else None
            groups.setdefault((kind, audience, frozenset(fields)), []).append(person)
        jobs: list[_Job] = []
        for (kind, audience, columns), members in groups.items():
            if len(members) < self._policy.min_import_rows:
                run.rest.extend(members)
                continue
            jobs.extend(self._jobs(kind, audience, sorted(columns), members))
        return jobs

    def _jobs(
        self, kind: JobKind, audience: str | None, columns: list[str], persons: list[_Person]
    ) -> list[_Job]:
        dedupe = self._rules.dedupe_field
        key = "id" if kind in ("update", "members") else dedupe
        header = [key, *(c for c in columns if c != key)]
        files = _CsvFiles(header, self._policy.max_file_bytes)
        for person in persons:
            if kind == "create":
                cells = [_cell(person.fields[c]) for c in header]
            else:
                values = person.fields
                cells = [str(person.lead_id), *(_cell(values[c]) for c in header[1:])]
            files.add(person, cells)
        files.close()
        return [
            _Job(
                kind=kind,
                content=content,
                persons=members,
                lookup_field=key,
                key_column=key,
                list_id=self._lists[audience] if audience is not None else None,
                audience=audience,
                partition=self._rules.create_partition if kind == "create" else None,
            )
            for content, members in files.files
        ]

    # -- running jobs -------------------------------------------------------------------------

    async def _run_job(self, job: _Job) -> _JobResult | _Stop:
        """Import, wait, read the files back. A rejection of the whole request redoes the job
        through REST; a deferring error comes back as `_Stop` (its persons are deferred)."""
        try:
            async with contextlib.AsyncExitStack() as stack:
                if job.list_id is not None:
                    # Marketo refuses (1019) a second import into a list that is being imported to
                    lock = self._list_locks.setdefault(job.list_id, asyncio.Lock())
                    await stack.enter_async_context(lock)
                await stack.enter_async_context(self._slots)
                done = await self._import(job)
            self.jobs.append(done)
            if done.status != "Complete":
                return _JobResult(redo=True)
            result = _JobResult()
            if done.rows_failed:
                text = await self._call(self._bulk.import_failures(done.batch_id))
                result.failures = self._by_key(job, text, FAILURE_COLUMN)
                if len(result.failures) < done.rows_failed:
                    return _JobResult(redo=True)
            if done.rows_with_warning:
                text = await self._call(self._bulk.import_warnings(done.batch_id))
                result.warnings = self._by_key(job, text, WARNING_COLUMN)
            return result
        except RejectedError:
            return _JobResult(redo=True)
        except _Stop as stop:
            return stop

    async def _import(self, job: _Job) -> ImportJob:
        queued = await self._call(
            self._bulk.create_import(
                job.content,
                lookup_field=job.lookup_field,
                list_id=job.list_id,
                partition_name=job.partition,
            )
        )
        job.queued = True
        log.debug(
            "import %s queued: %s rows, %d bytes, lookupField=%s, listId=%s",
            queued.batch_id,
            len(job.persons),
            len(job.content),
            job.lookup_field,
            job.list_id,
        )
        policy = self._policy
        delay, waited = policy.poll_initial, 0.0
        while True:
            await self._clock.sleep(delay)
            waited += delay
            status = await self._call(self._bulk.import_status(queued.batch_id))
            if status.status in ("Complete", "Failed"):
                log.debug("import %s %s: %s", queued.batch_id, status.status, status.message)
                return status
            if waited >= policy.job_timeout:
                raise _Stop(
                    UnavailableError(
                        f"import {queued.batch_id} still {status.status} after {waited:.0f} s",
                        code=None,
                        attempts=1,
                        endpoint="bulk/leads/batch",
                    )
                )
            delay = min(delay * policy.poll_multiplier, policy.poll_max)

    def _by_key(self, job: _Job, text: str, column: str) -> dict[str, str]:
        keys = {self._row_key(job, p) for p in job.persons}
        out: dict[str, str] = {}
        for cell, reason in _parse(text, column, job.key_column):
            key = cell.strip() if job.key_column == "id" else dedupe_key(cell)
            if key in keys:
                out[key] = reason
        return out

    def _row_key(self, job: _Job, person: _Person) -> str:
        if job.key_column == "id":
            return str(person.lead_id)
        return person.plan.key

    async def _write_job(self, job: _Job, run: _Run) -> None:
        outcome = await self._run_job(job)
        if isinstance(outcome, _Stop):
            for person in job.persons:
                person.unknown = outcome.error
            self._joined_unsure(job, outcome)
            return
        if outcome.redo:
            run.rest.extend(job.persons)
            return
        again = RESOLVE_AGAIN_ON_CREATE if job.kind == "create" else RESOLVE_AGAIN_ON_UPDATE
        for person in job.persons:
            key = self._row_key(job, person)
            failure = outcome.failures.get(key)
            if failure is not None:
                code = reason_code(failure)
                if code in again:
                    run.rest.append(person)
                else:
                    person.fail(code, failure)
                continue
            if job.kind == "create":
                person.created = True
                person.actions.append(Action(ActionType.CREATED))
            else:
                person.actions.append(Action(ActionType.UPDATED))
            if job.audience is not None:
                person.actions.append(Action(ActionType.ADDED, job.audience))
                run.joined.setdefault(person.plan.key, set()).add(job.audience)
                # held at once: a stop before the lists are finished still records the join
                person.join(job.audience)
            self._warn(person, outcome.warnings.get(key))
            run.written.append(person)

    @staticmethod
    def _joined_unsure(job: _Job, stop: _Stop) -> None:
        """An import into a list whose status is unknown (queued, or its creation unanswered)
        may join its persons' leads to the list: they count as held, unconfirmed, so that an
        exit before the retry removes them and the retry adds them again."""
        if job.audience is None or not (job.queued or may_have_applied(stop.error)):
            return
        for person in job.persons:
            person.join(job.audience, unsure=True)

    @staticmethod
    def _warn(person: _Person, warning: str | None) -> None:
        if warning:
            note = f"import warning: {warning}"
            person.reason = f"{person.reason}; {note}" if person.reason else note

    # -- list changes left after the writes ---------------------------------------------------

    def _joins(self, person: _Person) -> list[str]:
        """The audiences the person's lead (resolved, or created when `lead_id` is None) joins
        that it does not hold yet."""
        plan = person.plan
        lead = person.lead_id
        return [
            audience
            for audience, want in plan.desired.items()
            if want
            and (
                lead is None
                or not {lead if h == HOLDER_RESOLVED else h for h in plan.holders.get(audience, ())}
                & {lead}
            )
        ]

    async def _finish_lists(self, run: _Run) -> None:
        persons = [p for p in run.written if not p.final and p.unknown is None]
        # Created by an import, which names no ids: the lead the profile resolves to holds the
        # memberships the import's list joined (HOLDER_RESOLVED) and the next update of the
        # profile binds it. Only a person with a further join (a REST add by id) is looked up.
        unknown_ids = [
            p
            for p in persons
            if p.lead_id is None and p.created and self._joins_left(p, run.joined)
        ]
        if unknown_ids:
            found = await self._lookup(unknown_ids)
            for person in unknown_ids:
                lead = found.get(person.plan.key)
                if lead is None:
                    person.fail(CODE_LEAD_NOT_FOUND, "Lead not found")
                else:
                    person.lead_id = lead.id
        if self._rules.manages_lists:
            await self._write_lists(persons, run.joined)
            await self._resolve_stale(persons)
        self._finish([p for p in persons if p.unknown is None])

    def _joins_left(self, person: _Person, joined: Mapping[str, set[str]]) -> bool:
        """Whether the person's lead joins a list beyond those its import joined."""
        done = joined.get(person.plan.key, set())
        return self._rules.manages_lists and any(a not in done for a in self._joins(person))

    async def _add_members(self, audience: str, list_id: int, persons: list[_Person]) -> None:
        """REST adds, or an id-only import for many members."""
        if len(persons) >= self._policy.membership_import_min:
            await self._members_import(audience, list_id, persons)
        else:
            await super()._add_members(audience, list_id, persons)

    async def _members_import(self, audience: str, list_id: int, persons: list[_Person]) -> None:
        files = _CsvFiles(["id"], self._policy.max_file_bytes)
        for person in persons:
            files.add(person, [str(person.lead_id)])
        files.close()
        jobs = [
            _Job("members", content, members, "id", "id", list_id=list_id, audience=audience)
            for content, members in files.files
        ]
        outcomes = await asyncio.gather(*(self._run_job(job) for job in jobs))
        stop: _Stop | None = None
        for job, outcome in zip(jobs, outcomes, strict=True):
            if isinstance(outcome, _Stop):
                stop = stop or outcome
                self._joined_unsure(job, outcome)
                continue
            if outcome.redo:
                await super()._add_members(audience, list_id, job.persons)
                continue
            for person in job.persons:
                failure = outcome.failures.get(str(person.lead_id))
                if failure is not None:
                    person.fail(reason_code(failure), failure)
                else:
                    assert person.lead_id is not None
                    person.actions.append(Action(ActionType.ADDED, audience))
                    person.join(audience)
                    self._warn(person, outcome.warnings.get(str(person.lead_id)))
        if stop is not None:
            raise stop
