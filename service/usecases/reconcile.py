"""Reconcile: read each managed list's real members back from Marketo, compare them with the
desired state and repair the drift (issue 23).

**Reading a list.** Get Leads by List (ids only) costs one call per 300 members; a Bulk Lead
Extract by `staticListId` costs a fixed handful (create, enqueue, a few status polls, the file)
whatever the size, but waits for Marketo's export queue and spends the instance's daily export
allowance. The line is `EXTRACT_ABOVE` = 3,000 desired members: below it paging costs at most
10 calls, about what an extract costs, with no queue to wait for; above it the extract is
cheaper (a 100,000-member list: 334 pages against about 6 calls). A page token Marketo gave
before ends the paging with an error (the run fails, Reconcile answers FAILED_PRECONDITION):
pages going round in a circle would otherwise be read, and counted, for ever. So does an
extract file with an id that is no lead id, or that the csv module cannot read.

**Comparing.** Desired members are the audience's profiles whose membership is current, whose
consent is not refused (`Store.desired_members`). `missing`: a desired member none of whose
leads is in the list, among those delivery exported (a member that never held a lead nor was
bound to one, e.g. unmatched where no lead may be created, and that its dedupe value still
finds in no lead, is not drift: no list can hold it); `unexpected`: a list member that no desired
membership holds. Missing members are first resolved again by their dedupe value (one Get
Leads call per 300): a bound lead that was deleted or merged is replaced by the lead the value
finds now (the most recently updated, as delivery chooses), and the profile is re-bound. A
member whose new lead is already in the list (a merge moved the membership to the winner) is
not drift: only its holder is recorded.

**Repairing** (unless `dry_run`): the missing are added and the unexpected removed, in steps
of 300 ids, and the holders and re-bindings recorded. In a list the service did not create (a
linked list) unexpected members are reported but never removed: other people manage that list.
A list deleted in Marketo is created again in the destination's list folder, recorded on the
activation and filled with every desired member.

**Delivery constraints.** The list is read with no lease or turn held: an extract may queue
for minutes, and live delivery goes on meanwhile; its calls go through the instance's shared
limits (the same window, concurrency and daily budget as the drainer's). The comparison and each
repair step then run inside the instance's delivery turn (`Dispatcher.exclusive`: between two
batches of the drainer, under the instance's lease), each with the desired members read again:
everything delivery wrote before is recorded by then, so a lead it has just added is never
taken for unexpected, and the holders a step makes are recorded before the next batch can exit
them. A step is one batch's worth of work (at most 300 adds and 300 removals, plus the look-ups
of the members found absent), so live updates wait for one step at most; the drainer's next
batch goes before the next step (turns are taken in order). A live change made between two
steps is at worst repeated (a lead added or removed twice), never undone: the list snapshot
is only used to find what to write, the desired members always come fresh.

**A list deleted in Marketo found by delivery** (its 1013, `list_gone`) is created again and
filled the same way, in the background, while delivery defers the updates that needed it.

**A destination that keeps lists again** (Configure turned Profile only into a sync type that
keeps lists) has its lists reconciled at once, in the background: the exits and entries
delivered while it kept none were recorded, not written.

**Periodically**, every `interval` seconds, each destination that keeps lists is reconciled,
provided its estimated calls stay within `budget_share` of the instance's daily quota counted
with what reconciliation already spent there today, and within what is left of the instance's
daily budget (`service.marketo.limits`, other integrations included); a destination over budget
waits for the next interval.

Dry runs are not recorded; real runs record per list the time, the drift found and repaired
(GetDataflow shows them) and raise the `DRIFT` alert when a list's drift exceeds 1 % of its size
(resolved by the next run of the destination that covers every list and finds none above it; a
run of some audiences' lists never resolves it, since the lists it did not read may still drift).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime

import httpx

from service.api.access import current_principal
from service.delivery.engine.executor import most_recent
from service.domain import DesiredMember, ListDrift, ListReconciliation, dedupe_key
from service.errors import FailedPrecondition, NotFound, Unavailable
from service.marketo.client import MarketoClient
from service.marketo.clock import Clock, SystemClock
from service.marketo.errors import MarketoError
from service.marketo.limits import marketo_day
from service.marketo.types import Lead
from service.settings import ExtractPolling
from service.store.base import (
    ActivationRecord,
    DestinationRecord,
    DestinationState,
    MembershipHolder,
)
from service.store.sql import Store
from service.usecases.activation import list_folder
from service.usecases.alerts import AlertMonitor
from service.usecases.connections import MarketoConnections
from service.usecases.destinations import marketo_failure

__all__ = [
    "DRIFT_ALERT_SHARE",
    "EXTRACT_ABOVE",
    "ListRepair",
    "Reconciliation",
    "read_members",
    "reconcile_list",
]

log = logging.getLogger(__name__)

PER_CALL = 300
"""Ids per Get Leads by List page and per list add or remove call."""
EXTRACT_ABOVE = 3_000
"""Lists with more desired members than this are read by one Bulk Lead Extract."""
EXTRACT_CALLS = 6
"""About what an extract costs: create, enqueue, status polls, file (the budget's estimate)."""
DRIFT_ALERT_SHARE = 0.01
"""A list whose drift found exceeds this share of its size raises the DRIFT alert."""
EXTRACT_POLLING = ExtractPolling()
"""How extracts are polled unless a caller says otherwise (tests and benchmarks poll faster)."""


@dataclass(slots=True)
class ListRepair:
    """What reconciling one list found and did, and what it cost."""

    drift: ListDrift
    members: int
    """Leads in the list when it was read."""
    desired: int = 0
    """Desired members of the audience."""
    calls: int = 0
    """Marketo calls made."""


MAX_LEAD_ID_DIGITS = 18
"""Digits of the longest lead id read from an extract file (a positive int64 holds 18 in full)."""


class ExtractFailed(MarketoError):
    """A list extract ended Failed or Cancelled, or did not finish in time."""


async def read_members(
    client: MarketoClient,
    list_id: int,
    *,
    expected: int,
    clock: Clock,
    polling: ExtractPolling = EXTRACT_POLLING,
    extract_above: int = EXTRACT_ABOVE,
) -> tuple[set[int], int]:
    """The ids of the list's members and the calls it took: pages of Get Leads by List when
    `expected` members are at most `extract_above`, else one Bulk Lead Extract."""
    if expected <= extract_above:
        ids: set[int] = set()
        calls = 0
        token: str | None = None
        given: set[str] = set()
        while True:
            page = await client.list_members_page(list_id, ["id"], page_token=token)
            calls += 1
            ids.update(lead.id for lead in page.leads)
            token = page.next_page_token
            if token is None:
                return ids, calls
            if token in given:
                # Pages going round in a circle would be read (and counted against the
                # instance's daily quota) for ever.
                raise MarketoError(
                    f"reading list {list_id} page by page, Marketo answered a page token it "
                    f"had given before (after {calls} pages)",
                    code=None,
                )
            given.add(token)
    job = await client.create_export(["id"], static_list_id=list_id)
    job = await client.enqueue_export(job.export_id)
    calls = 2
    polls, waited = 0, 0.0
    while job.status != "Completed":
        if job.status in ("Cancelled", "Failed") or waited >= polling.timeout:
            if job.status not in ("Cancelled", "Failed"):
                with contextlib.suppress(MarketoError, httpx.HTTPError):
                    await client.cancel_export(job.export_id)
            raise ExtractFailed(
                f"the extract of list {list_id} ended {job.status} after {waited:.0f} s",
                code=None,
            )
        polls += 1
        delay = polling.delay(polls)
        await clock.sleep(delay)
        waited += delay
        job = await client.export_status(job.export_id)
        calls += 1
    text = await client.export_file(job.export_id)
    calls += 1
    # a list of millions is seconds of parsing: off the event loop (leases, health, RPCs)
    return await asyncio.to_thread(_extracted_ids, text, list_id), calls


def _extracted_ids(text: str, list_id: int) -> set[int]:
    """The lead ids of an extract file; MarketoError when a row's id is no lead id."""
    ids: set[int] = set()
    row = 0
    try:
        for row, record in enumerate(csv.DictReader(io.StringIO(text)), start=1):
            raw = record.get("id")
            if not raw:
                continue
            if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_LEAD_ID_DIGITS):
                raise MarketoError(
                    f"list {list_id}: the extract file holds an id that is no lead id (row {row})",
                    code=None,
                )
            ids.add(int(raw))
    except csv.Error:
        raise MarketoError(
            f"list {list_id}: the extract file cannot be read (row {row + 1})", code=None
        ) from None
    return ids


Turn = Callable[[], AbstractAsyncContextManager[object]]
"""Enters the instance's delivery turn: no batch of the instance is in flight while it is held
(`Dispatcher.exclusive`)."""
Load = Callable[[], Awaitable[Sequence[DesiredMember]]]
"""Reads the audience's desired members (`Store.desired_members`)."""
Record = Callable[[dict[str, int], dict[str, int]], Awaitable[None]]
"""Records holders and bindings (profile id -> lead id; `Store.record_repairs`)."""


async def reconcile_list(
    client: MarketoClient,
    audience_id: str,
    list_id: int,
    load: Load,
    *,
    dedupe_field: str,
    dry_run: bool,
    remove_unexpected: bool,
    clock: Clock,
    in_list: set[int] | None = None,
    turn: Turn = contextlib.nullcontext,
    record: Record | None = None,
    polling: ExtractPolling = EXTRACT_POLLING,
    extract_above: int = EXTRACT_ABOVE,
) -> ListRepair:
    """Read the list (unless `in_list` is given), compare it with the desired members and,
    unless `dry_run`, repair it.

    The list is read outside the instance's delivery turn; the comparison and each repair step
    (at most 300 adds and 300 removals, the holders they make recorded) run inside it, each
    with the desired members read again: every membership delivery wrote before is recorded by
    then, so a lead live delivery just added is never taken for unexpected, and live updates
    wait for one step at most.
    """
    calls = 0
    if in_list is None:
        expected = len(await load())
        in_list, calls = await read_members(
            client,
            list_id,
            expected=expected,
            clock=clock,
            polling=polling,
            extract_above=extract_above,
        )
    members = len(in_list)
    resolved: dict[str, int | None] = {}
    refused: set[int] = set()
    added: set[int] = set()
    removed = 0
    first: tuple[int, int, int] | None = None
    while True:
        async with turn():
            desired = await load()
            absent = [
                m
                for m in desired
                if (m.lead is None or m.lead not in in_list) and m.profile_id not in resolved
            ]
            targets, lookups = await _resolve(client, dedupe_field, absent)
            calls += lookups
            resolved.update(targets)
            diff = _Difference.of(desired, resolved, in_list)
            if first is None:
                first = (len(diff.missing), len(diff.unexpected), len(desired))
            if dry_run:
                break
            to_add = [lead for lead in diff.to_add if lead not in refused][:PER_CALL]
            to_remove = diff.unexpected[:PER_CALL] if remove_unexpected else []
            if to_add:
                results = await client.add_to_list(list_id, to_add)
                calls += 1
                now_in = {r.id for r in results if r.status in ("added", "memberof")}
                added |= now_in
                in_list |= now_in
                refused |= set(to_add) - now_in
            if to_remove:
                results = await client.remove_from_list(list_id, to_remove)
                calls += 1
                removed += sum(r.status == "removed" for r in results)
                in_list.difference_update(to_remove)  # removed, or not a member after all
            holders = {p: lead for p, lead in diff.holders.items() if lead in in_list}
            bindings = {p: lead for p, lead in diff.bindings.items() if lead in in_list}
            if record is not None and (holders or bindings):
                await record(holders, bindings)
            if not to_add and not to_remove:
                break
    missing, unexpected, desired_count = first
    drift = ListDrift(audience_id, list_id, missing, unexpected, added=len(added), removed=removed)
    return ListRepair(drift, members, desired_count, calls=calls)


@dataclass(frozen=True, slots=True)
class _Difference:
    """The list against the desired members, their absent ones resolved again."""

    missing: list[DesiredMember]
    to_add: list[int]
    unexpected: list[int]
    holders: dict[str, int]
    """Profile -> the lead that should hold its membership, where it is not the stored one."""
    bindings: dict[str, int]
    """Profile -> its new lead, for bound profiles resolved to another lead."""

    @classmethod
    def of(
        cls,
        desired: Sequence[DesiredMember],
        resolved: Mapping[str, int | None],
        in_list: set[int],
    ) -> _Difference:
        wanted: set[int] = set()
        holders: dict[str, int] = {}
        bindings: dict[str, int] = {}
        missing: list[DesiredMember] = []
        to_add: set[int] = set()
        for member in desired:
            lead = resolved.get(member.profile_id, member.lead)
            if lead is None and member.holder is None and member.bound_lead is None:
                continue  # never exported (no lead matched it): no list can hold it
            if lead is None or lead not in in_list:
                missing.append(member)
            if lead is None:
                continue
            wanted.add(lead)
            if lead not in in_list:
                to_add.add(lead)
            if lead != member.holder:
                holders[member.profile_id] = lead
            if member.bound_lead is not None and lead != member.bound_lead:
                bindings[member.profile_id] = lead
        return cls(missing, sorted(to_add), sorted(in_list - wanted), holders, bindings)


async def _resolve(
    client: MarketoClient, dedupe_field: str, absent: Sequence[DesiredMember]
) -> tuple[dict[str, int | None], int]:
    """The lead each absent member's dedupe value finds now (its current lead when that one
    is still found; None when nothing is), with the calls it took. Members without a stored
    dedupe value keep their lead."""
    values = sorted({m.dedupe_value for m in absent if m.dedupe_value})
    if not values:
        return {}, 0
    leads: list[Lead] = await client.find_leads(
        dedupe_field, values, fields=[dedupe_field, "updatedAt"]
    )
    found: dict[str, list[Lead]] = {}
    for lead in leads:
        value = lead.fields.get(dedupe_field)
        if isinstance(value, str):
            found.setdefault(dedupe_key(value), []).append(lead)
    targets: dict[str, int | None] = {}
    for member in absent:
        if not member.dedupe_value:
            continue
        matches = found.get(dedupe_key(member.dedupe_value), [])
        if member.lead is not None and any(lead.id == member.lead for lead in matches):
            targets[member.profile_id] = member.lead
        else:
            targets[member.profile_id] = most_recent(matches).id if matches else None
    return targets, math.ceil(len(values) / PER_CALL)


class Reconciliation:
    """The Reconcile use case and the periodic reconciliation of every destination."""

    def __init__(
        self,
        store: Store,
        connections: MarketoConnections,
        alerts: AlertMonitor,
        *,
        list_folder: str,
        interval: float,
        budget_share: float,
        daily_quota: int,
        clock: Clock | None = None,
        polling: ExtractPolling = EXTRACT_POLLING,
        extract_above: int = EXTRACT_ABOVE,
        notify: Callable[[str], None] | None = None,
        exclusive: Callable[[str], AbstractAsyncContextManager[object]] | None = None,
    ) -> None:
        """`list_folder`, `interval`, `budget_share` and `daily_quota` are the settings
        `list_folder`, `reconcile_interval_seconds`, `reconcile_budget_share` and
        `marketo_daily_quota`; `interval` 0 turns the periodic reconciliation off.
        `notify(instance_key)` wakes delivery once a deleted list was created again;
        `exclusive(instance_key)` holds the instance's delivery turn (`Dispatcher.exclusive`;
        none: nothing else delivers)."""
        self._store = store
        self._connections = connections
        self._alerts = alerts
        self._clock: Clock = clock or SystemClock()
        self._list_folder = list_folder
        self._interval = interval
        self._budget = budget_share * daily_quota
        self._polling = polling
        self._extract_above = extract_above
        self._notify = notify
        self._exclusive: Callable[[str], AbstractAsyncContextManager[object]] = exclusive or (
            lambda _: contextlib.nullcontext()
        )
        self._spent: dict[tuple[str, date], int] = {}
        """Calls reconciliation made per (instance, Marketo day)."""
        self._locks: dict[str, asyncio.Lock] = {}
        self._task: asyncio.Task[None] | None = None
        self._repairs: dict[str, asyncio.Task[None]] = {}

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the periodic reconciliation (unless the interval is 0)."""
        if self._task is None and self._interval > 0:
            self._task = asyncio.create_task(self._periodically(), name="reconciliation")

    async def stop(self) -> None:
        """Stop the periodic reconciliation and the re-creation of deleted lists (runs in
        progress are cancelled)."""
        tasks = [*self._repairs.values(), *([self._task] if self._task is not None else [])]
        self._task = None
        self._repairs.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- the RPC --------------------------------------------------------------------------------

    async def reconcile(
        self, destination_id: str, audience_ids: Sequence[str], *, dry_run: bool
    ) -> list[ListDrift]:
        """Reconcile the lists of the given active audiences (all when empty)."""
        record = await self._store.get_destination(
            destination_id, tenant=current_principal().tenant
        )
        if not record.spec.rules().manages_lists:
            raise FailedPrecondition(
                "the destination keeps no Marketo lists (sync type Profile only): "
                "there is nothing to reconcile"
            )
        active = {
            a.audience_id
            for a in await self._store.activations(destination_id)
            if a.active and a.marketo_list_id
        }
        unknown = sorted(set(audience_ids) - active)
        if unknown:
            raise NotFound(f"audiences without an active list here: {', '.join(unknown)}")
        try:
            return await self.reconcile_destination(record, audience_ids, dry_run=dry_run)
        except (MarketoError, httpx.HTTPError) as error:
            raise marketo_failure(error, "reconciling the lists") from None

    def list_gone(self, destination_id: str) -> None:
        """Delivery found a list of the destination gone from Marketo (1013): create the lists
        that are gone again and fill them, in the background (once at a time per destination)."""
        running = self._repairs.get(destination_id)
        if running is not None and not running.done():
            return
        self._repairs[destination_id] = asyncio.create_task(
            self._recreate_gone(destination_id), name=f"recreate lists of {destination_id}"
        )

    def lists_kept_again(self, destination_id: str) -> None:
        """The destination keeps lists again (its sync type was Profile only): its lists missed
        the membership changes delivered meanwhile; reconcile them all, in the background."""
        key = f"kept again:{destination_id}"
        running = self._repairs.get(key)
        if running is not None and not running.done():
            return
        self._repairs[key] = asyncio.create_task(
            self._reconcile_kept_again(destination_id), name=f"reconcile lists of {destination_id}"
        )

    async def _reconcile_kept_again(self, destination_id: str) -> None:
        try:
            record = await self._store.get_destination(destination_id, tenant=None)
            await self.reconcile_destination(record, dry_run=False)
        except Exception:
            log.exception("reconciling the lists of %s kept again failed", destination_id)

    async def _recreate_gone(self, destination_id: str) -> None:
        try:
            record = await self._store.get_destination(destination_id, tenant=None)
            if await self.reconcile_destination(record, dry_run=False, gone_only=True):
                # The updates deferred for the missing list go to the new one now.
                await self._store.release_deferred(destination_id)
                if self._notify is not None:
                    self._notify(record.instance_key)
        except Exception:
            log.exception("creating the deleted lists of %s again failed", destination_id)

    # -- the work -------------------------------------------------------------------------------

    async def reconcile_destination(
        self,
        record: DestinationRecord,
        audience_ids: Sequence[str] = (),
        *,
        dry_run: bool,
        gone_only: bool = False,
    ) -> list[ListDrift]:
        """Reconcile the destination's active lists (those of `audience_ids`, or all; with
        `gone_only`, only those deleted in Marketo); one run per destination at a time."""
        lock = self._locks.setdefault(record.id, asyncio.Lock())
        async with lock:
            client = self._connections.client(record.spec.connection)
            wanted = set(audience_ids)
            managed = [
                a
                for a in await self._store.activations(record.id)
                if a.active and a.marketo_list_id
            ]
            activations = [a for a in managed if not wanted or a.audience_id in wanted]
            drifts: list[ListDrift] = []
            above: list[str] = []
            for activation in activations:
                repair = await self._reconcile_activation(
                    record, client, activation, dry_run, gone_only
                )
                if repair is None:
                    continue
                drifts.append(repair.drift)
                self._count(record.instance_key, repair.calls)
                size = max(repair.members, repair.desired, 1)
                if repair.drift.found > DRIFT_ALERT_SHARE * size:
                    above.append(
                        f"list {repair.drift.marketo_list_id} of audience "
                        f"{activation.audience_id!r}: {repair.drift.found} of {size}"
                    )
                if not dry_run:
                    await self._store.record_reconciliation(
                        record.id,
                        ListReconciliation(
                            activation.audience_id,
                            repair.drift.marketo_list_id,
                            datetime.fromtimestamp(self._clock.now(), UTC),
                            repair.drift.found,
                            repair.drift.repaired,
                        ),
                    )
            # A run of some lists that finds none above the threshold says nothing of the
            # others: only a run that covered every list resolves the alert.
            if not dry_run and not gone_only and (above or len(activations) == len(managed)):
                await self._alerts.drift(record.id, above)
            return drifts

    async def _reconcile_activation(
        self,
        record: DestinationRecord,
        client: MarketoClient,
        activation: ActivationRecord,
        dry_run: bool,
        gone_only: bool = False,
    ) -> ListRepair | None:
        list_id = activation.marketo_list_id
        in_list: set[int] | None = None
        recreated = False
        calls = 0
        if await client.static_list(list_id) is None:
            calls, recreated, in_list = 1, True, set()
            if not dry_run:
                list_id = await self._recreate(record, client, activation)
                calls += 3
        elif gone_only:
            self._count(record.instance_key, 1)
            return None

        async def load() -> list[DesiredMember]:
            return await self._store.desired_members(record.id, activation.audience_id)

        async def store_repairs(holders: dict[str, int], bindings: dict[str, int]) -> None:
            await self._store.record_repairs(
                record.id,
                [
                    MembershipHolder(record.id, profile, activation.audience_id, lead)
                    for profile, lead in sorted(holders.items())
                ],
                dict(bindings),
            )

        repair = await reconcile_list(
            client,
            activation.audience_id,
            list_id,
            load,
            dedupe_field=record.spec.dedupe_field,
            dry_run=dry_run,
            remove_unexpected=activation.created_by_service or recreated,
            clock=self._clock,
            in_list=in_list,
            turn=lambda: self._exclusive(record.instance_key),
            record=store_repairs,
            polling=self._polling,
            extract_above=self._extract_above,
        )
        repair.drift = replace(repair.drift, recreated=recreated)
        repair.calls += calls
        return repair

    async def _recreate(
        self, record: DestinationRecord, client: MarketoClient, activation: ActivationRecord
    ) -> int:
        """Create the audience's list again (same name) and record it on the activation."""
        folder = await list_folder(client, self._list_folder, record.spec.workspace_name)
        name = activation.list_name or activation.audience_name
        created = await client.create_static_list(name, folder.id)
        await self._store.upsert_activations(
            record.id,
            [
                replace(
                    activation,
                    marketo_list_id=created.id,
                    list_name=created.name,
                    created_by_service=True,
                    holders_tracked=True,
                )
            ],
        )
        log.warning(
            "list %s of audience %r of %s was gone from Marketo; created again as %s",
            activation.marketo_list_id,
            activation.audience_id,
            record.id,
            created.id,
        )
        return created.id

    # -- periodic -------------------------------------------------------------------------------

    async def reconcile_due(self) -> int:
        """Reconcile every active destination that keeps lists and fits in its instance's
        reconciliation budget today; returns how many were reconciled."""
        done = 0
        for backlog in await self._store.backlogs():
            try:
                record = await self._store.get_destination(backlog.destination_id, tenant=None)
            except NotFound:
                continue
            if record.state is not DestinationState.ACTIVE or not record.spec.rules().manages_lists:
                continue
            estimate = await self._estimate(record)
            spent = self._spent.get((record.instance_key, self._today()), 0)
            remaining = self._connections.calls_today(record.spec.connection).remaining
            if spent + estimate > self._budget or estimate > remaining:
                log.info(
                    "reconciliation of %s waits: %d calls estimated, %d of its %.0f spent "
                    "today, %d left in the instance's daily budget",
                    record.id,
                    estimate,
                    spent,
                    self._budget,
                    remaining,
                )
                continue
            try:
                await self.reconcile_destination(record, dry_run=False)
                done += 1
            except Unavailable as error:
                log.info("reconciliation of %s waits for the next turn: %s", record.id, error)
            except Exception:
                log.exception("periodic reconciliation of %s failed", record.id)
        return done

    async def _estimate(self, record: DestinationRecord) -> int:
        """Calls to read the destination's lists (repairs of a 1 % drift are a few more)."""
        total = 0
        for activation in await self._store.activations(record.id):
            if activation.active and activation.marketo_list_id:
                members = len(await self._store.desired_members(record.id, activation.audience_id))
                reads = (
                    EXTRACT_CALLS
                    if members > self._extract_above
                    else max(1, math.ceil(members / PER_CALL))
                )
                total += 1 + reads + math.ceil(members * 0.02 / PER_CALL)
        return total

    async def _periodically(self) -> None:
        while True:
            await self._clock.sleep(self._interval)
            try:
                await self.reconcile_due()
            except Exception:
                log.exception("periodic reconciliation failed")

    def _count(self, instance_key: str, calls: int) -> None:
        key = (instance_key, self._today())
        self._spent = {k: v for k, v in self._spent.items() if k[1] == key[1]}
        self._spent[key] = self._spent.get(key, 0) + calls

    def _today(self) -> date:
        return marketo_day(self._clock.now())
