"""Executing a plan against Marketo: resolve, then write.

1. Look the dedupe values up (300 per call, every partition); of several matching leads the most
   recently updated one wins (`updatedAt`, ties by the highest id).
2. Update matched leads by id (`updateOnly`, `lookupField=id`, no partition): one write for every
   matched person, including the ones that also get list changes. The record never carries the
   dedupe field: the lead was found by it, and writing it back would only replace Marketo's
   spelling (case, white space) of the same value. Fields whose mapping row has a write policy
   are settled against the values the look-up read: `if_empty` keeps a non-empty Marketo value,
   `never_clear` never writes an empty value; the outcome lists the fields so kept.
3. Create unmatched leads (`createOnly` + `partitionName`) when the rules allow it (without
   empty values of `never_clear` fields). A `1005`
   (created meanwhile by someone else) or a create whose answer was lost is resolved again with a
   fresh look-up, then updated, never blindly retried.
4. Add and remove list members by lead id, per audience (300 per call). An exit for a lead
   that is not in the list (Marketo answers 1015, or the lead was created by this batch, which
   costs no call) is NOT_IN_LIST, not REMOVED. A list Marketo no longer has (1013, deleted by
   hand) stops the batch: its updates are deferred, not failed, while the list is created again.

The engine writes the difference between the person's target (planned from the stored state and
the batch) and what is applied:
- attributes are written only when their digest differs from the one last applied or the dedupe
  value is not the bound one; otherwise the bound lead is used without a look-up, unless the
  lists need the resolved lead and no lead is bound. An update with nothing to write makes no
  call: ACTIVATED, no actions, the bound lead, `REASON_NOTHING_TO_WRITE`.
- membership follows the person: per activated audience, a desired member held by the resolved
  lead costs nothing; not held, the resolved lead is added; a membership held by another lead
  (new dedupe value, another duplicate became the most recent, a deleted lead) loses that lead.
  A membership not desired (exit, refused consent) removes the lead that holds it, not the
  resolved one, unless another profile still wants that lead in the list (`PlannedPerson.kept`;
  for a lead a look-up resolved to, read before the list changes are sent: `co_holders`):
  then nothing is removed, no action is reported (the lead is in the list: not NOT_IN_LIST) and
  the person's profiles hold it no more; the same goes for a lead a move leaves behind. Where
  the person is a member, only its profiles that want the audience hold its lead (the others'
  holders are cleared). An exit with no holder costs no call and is NOT_IN_LIST (no action when
  the lead is kept for another profile), except on a list whose holders are not all known to the
  service (a linked list, or one created before holders were recorded: someone else may have
  added the lead): there the resolved lead is removed (one call; 1015 is NOT_IN_LIST). A
  removal answered 1004 (the holder was deleted) clears the holder; on an exit, since a merge
  moves the loser's memberships to the winner, the lead the person resolves to is then removed
  instead (a bound lead is looked up again first; 1015 or nothing found is NOT_IN_LIST), unless
  another profile wants it there. On a list the person stays in, the 1004 is NOT_IN_LIST.
- refused consent: the removals go out, the attributes do not; the outcome is EXCLUDED
  `consent_refused` and carries the REMOVED actions.
- a person that is a member of no activated audience: its removals and exits go out (ACTIVATED
  with those actions), its attributes do not and no lead is created for it; with no list action
  it is EXCLUDED `no_audience`. Either way, once its outcome is final, its watermarks move to its
  attributes, which are kept unapplied (`BatchResult.unapplied`): the newest attributes win.

Each update's outcome carries only the actions its own facts asked for (`own_actions`): the
lead write on the update whose attributes it carried, each list change on the update whose
membership it applied. So every write Marketo confirmed is on one outcome, and the dataflow,
which sums the outcomes' actions, counts it once.

A request rejected as a whole is split in halves until the record that caused it is isolated;
record-level reasons become FAILED outcomes with their code. A configuration error (the instance
refuses the request itself, e.g. it names a field deleted from the schema) is never split: no
record causes it. Transient, quota, authentication and configuration errors stop the batch:
unfinished updates come back as deferred, with the error, for the caller to decide (the
dispatcher re-reads the schema on a configuration error). The list changes Marketo confirmed for
them before the stop are kept all the same (holders, with the membership facts they applied): a
later update plans against the lists as they are, so an exit or a refused consent that comes
before the retry still removes a lead that joined. A list call whose outcome is unknown
(`may_have_applied`) leaves its leads held, unconfirmed (`BatchResult.unconfirmed`): they are
removed where they leave, and added again where the person is a member. An engine built with
`configuration_stops=False` instead fails the records of a request so refused, without splitting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from service.delivery.engine.locks import KeyedLocks
from service.delivery.engine.planner import (
    CONSENT_REFUSED,
    NO_AUDIENCE,
    REASON_ATTRIBUTES_STALE,
    Plan,
    PlannedPerson,
    plan_batch,
)
from service.delivery.engine.ports import MarketoPort
from service.domain import (
    HOLDER_RESOLVED,
    REQUIRED_FOR_CREATE,
    Action,
    ActionType,
    AudienceChanges,
    DesiredState,
    Exclusion,
    ExclusionCode,
    MembershipMark,
    Outcome,
    OutcomeKind,
    ProfileMapper,
    ProfileState,
    ProfileUpdate,
    SyncRules,
    UnappliedAttributes,
    WritePolicy,
    dedupe_key,
    is_empty,
)
from service.marketo.errors import (
    ConfigurationError,
    MarketoError,
    OutcomeUnknownError,
    RejectedError,
    UnavailableError,
)
from service.marketo.types import Lead, MembershipResult, Reason, RecordResult, SyncAction

BATCH_SIZE = 300
"""Records per Marketo call (look-ups, Sync Leads, list membership)."""

REASON_NO_MATCHING_LEAD = "no matching lead"
REASON_MISSING_REQUIRED = "missing required attributes"
REASON_UNRESOLVED = "lead could not be resolved after repeated look-ups"
REASON_NOTHING_TO_WRITE = "nothing needed writing: Marketo already holds this state"

_NO_MATCHING_LEAD = Exclusion(ExclusionCode.NO_MATCHING_LEAD, "", REASON_NO_MATCHING_LEAD)

NOT_RECORD_CODES = frozenset({"603", "610", "1013"})
"""Whole-request rejections that no record causes: splitting the request would not help."""

LOOKUP_FIELDS = ("updatedAt", "leadPartitionId")
"""Fields asked for besides the dedupe field and the fields with a write policy: what choosing
among duplicates needs."""

CODE_LEAD_NOT_FOUND = "1004"
CODE_LEAD_EXISTS = "1005"
CODE_NOT_IN_LIST = "1015"
CODE_LIST_NOT_FOUND = "1013"
"""A list call answered "object not found": the list was deleted in Marketo. The batch stops
(its updates deferred, never failed) so the list can be created again (see
`service.delivery.delivery`)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

T = TypeVar("T")
R = TypeVar("R")

CoHolderReader = Callable[
    [Sequence[int], Collection[str]], Awaitable[Mapping[tuple[str, int], frozenset[str]]]
]
"""Reads, per (audience id, lead id) of the given leads, the profiles (not among the given
profile ids) that want that lead in the audience's list (`Store.co_holders` for a
destination)."""


@dataclass(frozen=True, slots=True)
class Deferred:
    """An update left unfinished by a transient, quota, authentication or configuration error:
    retry it later."""

    update_id: str
    profile_id: str
    dedupe_value: str | None
    error: MarketoError

    @property
    def paused_until(self) -> float | None:
        """Epoch seconds before which retrying is pointless (daily quota), if known."""
        value = getattr(self.error, "paused_until", None)
        return float(value) if isinstance(value, int | float) else None


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What a batch did.

    `outcomes` are final (write them and retire their updates); `deferred` updates must be retried
    later; `watermarks` (profile id -> event time) are the new applied attribute event times of
    the profiles whose outcomes are final; `membership_marks` the memberships applied, per
    (profile id, audience id), by activated persons, and by deferred ones whose list change
    Marketo confirmed before the batch stopped.
    """

    outcomes: tuple[Outcome, ...]
    deferred: tuple[Deferred, ...] = ()
    watermarks: Mapping[str, datetime] = field(default_factory=dict)
    membership_marks: Mapping[tuple[str, str], MembershipMark] = field(default_factory=dict)
    holders: Mapping[tuple[str, str], int | None] = field(default_factory=dict)
    """The lead now holding each (profile id, audience id) membership the batch changed (None:
    no lead), as Marketo confirmed it, deferred updates' changes included."""
    unconfirmed: frozenset[tuple[str, str]] = frozenset()
    """The pairs of `holders` whose lead a list call of unknown outcome concerned (it may be in
    the list or not); the others are confirmed."""
    profiles: Mapping[str, ProfileState] = field(default_factory=dict)
    """The applied state of the profiles the batch wrote (or found already applied)."""
    unapplied: Mapping[str, UnappliedAttributes] = field(default_factory=dict)
    """The newest attributes, not written, of the profiles whose outcomes are final as members
    of no activated audience (excluded, or activated with their exits only)."""

    @property
    def error(self) -> MarketoError | None:
        """The error that stopped the batch, if any."""
        return self.deferred[0].error if self.deferred else None

    def folded(self, state: DesiredState) -> DesiredState:
        """`state` with this batch folded in, as `Store.retire` stores it: watermarks only move
        forward, a desired status is replaced by one not older, holders and profile states are
        set, unapplied attributes kept until an activated outcome of a later batch reaches them
        (for engines driven without a store: benchmarks, tests)."""
        watermarks = dict(state.watermarks)
        for profile_id, event_time in self.watermarks.items():
            seen = watermarks.get(profile_id)
            watermarks[profile_id] = event_time if seen is None else max(seen, event_time)
        marks = dict(state.marks)
        for pair, mark in self.membership_marks.items():
            seen_mark = marks.get(pair)
            if seen_mark is None or mark.event_time >= seen_mark.event_time:
                marks[pair] = mark
        holders = dict(state.holders)
        unconfirmed = set(state.unconfirmed)
        for pair, lead_id in self.holders.items():
            if lead_id is None:
                holders.pop(pair, None)
                unconfirmed.discard(pair)
            elif pair in marks:
                holders[pair] = lead_id
                if pair in self.unconfirmed:
                    unconfirmed.add(pair)
                else:
                    unconfirmed.discard(pair)
        unapplied = dict(state.unapplied)
        for outcome in self.outcomes:
            newest = unapplied.get(outcome.profile_id)
            reached = self.watermarks.get(outcome.profile_id)
            if (
                outcome.kind is OutcomeKind.ACTIVATED
                and newest is not None
                and reached is not None
                and reached >= newest.event_time
            ):
                del unapplied[outcome.profile_id]
        # an activated outcome that wrote no attributes (an exit) keeps the ones it brought
        unapplied.update(self.unapplied)
        profiles = {**state.profiles, **self.profiles}
        # As retire stores them: a lead the batch stored digests for holds one of them only; a
        # profile bound to it with another digest (or any, when several) has its digest cleared.
        written: dict[int, set[str]] = {}
        for row in self.profiles.values():
            if row.lead_id is not None and row.digest is not None:
                written.setdefault(row.lead_id, set()).add(row.digest)
        stale = [
            (profile_id, replace(kept, digest=None))
            for profile_id, kept in profiles.items()
            if kept.lead_id is not None
            and kept.digest is not None
            and written.get(kept.lead_id, set()) - {kept.digest}
        ]
        profiles.update(stale)
        return DesiredState(
            watermarks,
            marks,
            holders,
            profiles,
            state.forgotten,
            unapplied=unapplied,
            unconfirmed=frozenset(unconfirmed),
        )


@dataclass(frozen=True, slots=True)
class PlannedUpdate:
    """A lead a dry run would update."""

    dedupe_value: str
    lead_id: int
    kept_fields: tuple[str, ...] = ()
    """Fields whose Marketo value the write policies would keep."""


@dataclass(frozen=True, slots=True)
class DryRunResult:
    """What a batch would do: leads created and updated, list changes per audience, and the
    outcomes decided without writing (excluded, superseded); `plan` is the plan it looked up
    (which updates share each person)."""

    plan: Plan
    create: tuple[str, ...]
    update: tuple[PlannedUpdate, ...]
    audiences: tuple[AudienceChanges, ...]
    outcomes: tuple[Outcome, ...]
    deferred: tuple[Deferred, ...] = ()
    uncalled: Mapping[str, tuple[Action, ...]] = field(default_factory=dict)
    """Per person (by its `speaker` update id), the actions that need no call: an exit whose
    lead holds no membership of a tracked list (or was created by this write) is NOT_IN_LIST."""


@dataclass(frozen=True, slots=True)
class _Unknown:
    """A create whose answer was lost."""

    error: MarketoError


class _Stop(Exception):
    """Internal: a deferring error interrupted the batch."""

    def __init__(self, error: MarketoError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(slots=True)
class _Person:
    plan: PlannedPerson
    lead_id: int | None = None
    created: bool = False
    fields: Mapping[str, Any] = field(default_factory=dict)
    """What the next write sends (set when the person is resolved)."""
    kept: tuple[str, ...] = ()
    actions: list[Action] = field(default_factory=list)
    kind: OutcomeKind | None = None
    reason: str = ""
    code: str = ""
    exclusion: Exclusion | None = None
    last_code: str = ""
    conflicted: bool = False
    unknown: MarketoError | None = None
    held: dict[str, set[int]] = field(default_factory=dict)
    """Per audience, the leads holding the membership (updated as Marketo confirms changes)."""
    unsure: dict[str, set[int]] = field(default_factory=dict)
    """Per audience, the leads of `held` a list call of unknown outcome concerned: they may be
    in the list or not (removed where they leave, added again where the person is a member)."""
    calls: bool = False
    """Whether any Marketo call was made for the person."""
    bound: bool = False
    """`lead_id` is the bound lead, taken without a look-up."""
    stale_binding: bool = False
    """Marketo answered that the bound lead does not exist (deleted or merged)."""
    gone: dict[str, set[int]] = field(default_factory=dict)
    """Per audience the person exits, the bound lead a removal found gone: once resolved again,
    the lead the person resolves to holds that membership (a merge moved it to the winner)."""

    def join(self, audience: str, *, unsure: bool = False) -> None:
        """Record that an import Marketo confirmed (`unsure`: one whose outcome is unknown) added
        the person's lead to `audience` (a lead an import created is known by its dedupe value
        only: `HOLDER_RESOLVED`)."""
        self.hold(audience, HOLDER_RESOLVED if self.lead_id is None else self.lead_id, unsure)

    def hold(self, audience: str, lead: int, unsure: bool) -> None:
        """Record that `lead` holds the membership of `audience`: answered by Marketo, or
        `unsure` (a call of unknown outcome concerned it: it may be in the list or not)."""
        self.held.setdefault(audience, set()).add(lead)
        if unsure:
            self.unsure.setdefault(audience, set()).add(lead)
        else:
            self.unsure.get(audience, set()).discard(lead)  # answered

    def rebind(self) -> None:
        """Forget the binding: the person is resolved again (and its attributes written)."""
        plan = self.plan
        holders = {
            audience: frozenset(
                HOLDER_RESOLVED if h in self.gone.get(audience, ()) else h for h in held
            )
            for audience, held in plan.holders.items()
        }
        self.plan = replace(
            plan, bound_lead=None, attributes_changed=plan.writes_attributes, holders=holders
        )
        self.lead_id = None
        self.bound = self.stale_binding = False

    @property
    def final(self) -> bool:
        return self.kind is not None

    def fail(self, code: str, message: str) -> None:
        self.kind = OutcomeKind.FAILED
        self.code = code
        self.reason = message

    def exclude(self, exclusion: Exclusion) -> None:
        self.kind = OutcomeKind.EXCLUDED
        self.reason = exclusion.description
        self.exclusion = exclusion

    def outcomes(self) -> list[Outcome]:
        assert self.kind is not None
        activated = self.kind is OutcomeKind.ACTIVATED
        idle = activated and not self.calls and not self.actions
        return [
            Outcome(
                update_id=u.update_id,
                profile_id=u.profile_id,
                dedupe_value=self.plan.dedupe_value,
                kind=self.kind,
                actions=own_actions(self.plan, u.update_id, self.actions),
                lead_id=self.lead_id,
                reason=self.reason or (REASON_NOTHING_TO_WRITE if idle else self._note(u)),
                marketo_code=self.code,
                exclusion_code=self.exclusion.code if self.exclusion else None,
                field=self.exclusion.field if self.exclusion else "",
                kept_fields=self.kept if activated and u.update_id == self.plan.writer else (),
            )
            for u in self.plan.updates
        ]

    def _note(self, update: ProfileUpdate) -> str:
        """An activated update's attributes that were stale, in words."""
        activated = self.kind is OutcomeKind.ACTIVATED
        return (
            REASON_ATTRIBUTES_STALE
            if activated and update.update_id in self.plan.stale_attributes
            else ""
        )


def own_actions(
    person: PlannedPerson, update_id: str, actions: Sequence[Action]
) -> tuple[Action, ...]:
    """The actions of `person` that update `update_id` asked for: the lead write (CREATED,
    UPDATED) when its attributes are the ones written, a list change when its membership is the
    one applied for that audience."""
    return tuple(
        action
        for action in actions
        if update_id
        == (
            person.writer
            if action.audience_id is None
            else person.sources.get(action.audience_id, person.speaker)
        )
    )


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _calls(records: int, size: int) -> int:
    """Calls that carry `records` records, `size` per call."""
    return -(-records // size)


def most_recent(leads: Sequence[Lead]) -> Lead:
    """The lead the seed updates when several match: latest `updatedAt`, then highest id."""

    def order(lead: Lead) -> tuple[bool, datetime, int]:
        updated = lead.updated_at
        if updated is not None and updated.tzinfo is None:
            updated = updated.replace(tzinfo=UTC)
        return (updated is not None, updated or _EPOCH, lead.id)

    return max(leads, key=order)


def _missing_for_create(fields: Mapping[str, Any]) -> list[str]:
    missing = []
    for name in REQUIRED_FOR_CREATE:
        value = fields.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            missing.append(name)
    return missing


def _first_reason(reasons: Sequence[Reason]) -> Reason:
    return reasons[0] if reasons else Reason(code="", message="skipped without a reason")


class SyncEngine:
    """Plans and executes batches for one destination.

    `audience_lists` maps each activated audience to its static list id. `locks` must be shared
    by every engine that writes to the same Marketo instance (or destination), so that one dedupe
    value never has two writes in flight. Batches may be of any size: calls are chunked here.
    """

    def __init__(
        self,
        client: MarketoPort,
        rules: SyncRules,
        mapper: ProfileMapper,
        *,
        audience_lists: Mapping[str, int] | None = None,
        locks: KeyedLocks | None = None,
        batch_size: int = BATCH_SIZE,
        max_rounds: int = 3,
        planning_scope: Callable[[int], AbstractContextManager[object]] | None = None,
        configuration_stops: bool = True,
        write_policies: Mapping[str, WritePolicy] | None = None,
        tracked_lists: Collection[str] = (),
        co_holders: CoHolderReader | None = None,
    ) -> None:
        """`planning_scope(n)` wraps the planning (mapping) of n updates, e.g. in a span;
        `configuration_stops`: a configuration error stops the batch (its unfinished updates are
        deferred) rather than failing the records of the refused request; `write_policies` maps
        Marketo fields to their mapping row's write policy (absent: always); `tracked_lists`:
        the audiences whose list only the service adds to since holders are recorded (an exit
        with no known holder costs no call there); `co_holders` reads the other profiles that
        want a lead a look-up resolved to (none: only the stored state's co-holders count)."""
        self._client = client
        self._co_holders = co_holders
        self._rules = rules
        self._mapper = mapper
        self._lists = dict(audience_lists or {})
        self._tracked = frozenset(tracked_lists)
        self._locks = locks if locks is not None else KeyedLocks()
        self._batch_size = batch_size
        self._max_rounds = max_rounds
        self._planning_scope = planning_scope or (lambda _: contextlib.nullcontext())
        self._configuration_stops = configuration_stops
        self._policies = {
            name: policy
            for name, policy in (write_policies or {}).items()
            if policy is not WritePolicy.ALWAYS and name != rules.dedupe_field
        }

    @property
    def rules(self) -> SyncRules:
        return self._rules

    def plan(self, updates: Sequence[ProfileUpdate], *, state: DesiredState | None = None) -> Plan:
        """Plan a batch without any Marketo call (on the calling thread); `state` is the
        destination's stored state of the batch's profiles (none: nothing applied yet)."""
        with self._planning_scope(len(updates)):
            return plan_batch(
                updates, self._rules, self._mapper, audience_lists=self._lists, state=state
            )

    async def _plan_in_thread(
        self, updates: Sequence[ProfileUpdate], state: DesiredState | None
    ) -> Plan:
        # Mapping runs every transform on every profile of the batch: CPU work that would hold
        # the event loop (health checks, lease renewals, other instances' delivery) for as long
        # as it lasts. A worker thread takes it; the context (the batch span) goes along.
        return await asyncio.to_thread(self.plan, updates, state=state)

    async def sync(
        self, updates: Sequence[ProfileUpdate], *, state: DesiredState | None = None
    ) -> BatchResult:
        """Plan and execute a batch; every update ends in `outcomes` or in `deferred`. `state`
        is the destination's stored state of the batch's profiles (see `DesiredState`)."""
        plan = await self._plan_in_thread(updates, state)
        persons = [_Person(p) for p in plan.persons]
        error: MarketoError | None = None
        async with self._locks.hold(self._lock_key(p.plan.key) for p in persons):
            try:
                await self._execute(persons)
            except _Stop as stop:
                error = stop.error
        outcomes = list(plan.outcomes)
        marks = dict(plan.watermarks)
        applied: dict[tuple[str, str], MembershipMark] = dict(plan.membership_marks)
        holders: dict[tuple[str, str], int | None] = {}
        unconfirmed: set[tuple[str, str]] = set()
        profiles: dict[str, ProfileState] = dict(plan.profiles)
        unapplied: dict[str, UnappliedAttributes] = dict(plan.unapplied)
        deferred: list[Deferred] = []
        for person in persons:
            if person.final:
                outcomes.extend(person.outcomes())
                marks.update(person.plan.watermarks)
                unapplied.update(person.plan.unapplied)
                applied.update(person.plan.membership_marks)
                changed, unsure = self._holders(person)
                holders.update(changed)
                unconfirmed.update(unsure)
                profiles.update(self._profile_state(person))
                continue
            # The list changes Marketo confirmed before the batch stopped, and those whose
            # outcome is unknown, are recorded with the membership facts they applied: a later
            # update of the person (an exit, a refused consent) must remove the lead that may
            # have joined, not plan against the lists as they were.
            confirmed, unsure = self._holders(person)
            holders.update(confirmed)
            unconfirmed.update(unsure)
            applied.update(
                (pair, mark)
                for pair, mark in person.plan.membership_marks.items()
                if pair in confirmed
            )
            cause = error or person.unknown
            assert cause is not None
            deferred.extend(
                Deferred(u.update_id, u.profile_id, person.plan.dedupe_value, cause)
                for u in person.plan.updates
            )
        return BatchResult(
            outcomes=tuple(outcomes),
            deferred=tuple(deferred),
            watermarks=marks,
            membership_marks=applied,
            holders=holders,
            unconfirmed=frozenset(unconfirmed),
            profiles=profiles,
            unapplied=unapplied,
        )

    @staticmethod
    def _holders(
        person: _Person,
    ) -> tuple[dict[tuple[str, str], int | None], set[tuple[str, str]]]:
        """The holder rows that changed for `person`'s profiles (in lead or in being confirmed):
        where the person is a member, the profiles that want the audience hold its lead and
        the others none; where it is not, every profile keeps what is left (a removal that
        failed); and which of those rows hold a lead a call of unknown outcome concerned."""
        plan = person.plan
        rows: dict[tuple[str, str], int | None] = {}
        unconfirmed: set[tuple[str, str]] = set()
        for audience, held in person.held.items():
            holder = person.lead_id if person.lead_id in held else min(held) if held else None
            unsure = holder is not None and holder in person.unsure.get(audience, ())
            wanting = plan.wanting.get(audience) if plan.desired.get(audience) else None
            for pid in plan.profile_ids:
                pair = (pid, audience)
                value = holder if wanting is None or pid in wanting else None
                settled = value is None or (pair in plan.unconfirmed) == unsure
                if plan.profile_holders.get(pair) != value or not settled:
                    rows[pair] = value
                    if value is not None and unsure:
                        unconfirmed.add(pair)
        return rows, unconfirmed

    @staticmethod
    def _profile_state(person: _Person) -> dict[str, ProfileState]:
        """The applied state of the profile whose attributes the person carries and, once they
        are applied, of every profile coalesced into the person: all are bound to the lead that
        holds those attributes now (else a later update of another of them, with its own older
        attributes, would find its stale digest equal and write nothing)."""
        plan = person.plan
        prior = plan.prior or ProfileState()
        head = next(
            (u.profile_id for u in plan.updates if u.update_id == plan.speaker),
            plan.profile_ids[0] if plan.profile_ids else "",
        )
        if plan.consent_refused:
            if prior.consent_refused:
                return {}
            return {head: replace(prior, consent_refused=True)}
        if person.kind is not OutcomeKind.ACTIVATED or (
            person.lead_id is None and not person.created
        ):
            # a lead an import created keeps its digest; its next update binds it
            return {}
        state = ProfileState(
            dedupe_value=plan.dedupe_value,
            lead_id=person.lead_id,
            digest=plan.digest if plan.writes_attributes else prior.digest,
            consent_refused=False,
        )
        states = {} if state == plan.prior else {head: state}
        if plan.writes_attributes:
            # the profiles whose updates share the outcome or were superseded by the writer's
            others = dict.fromkeys((*plan.profile_ids, *plan.watermarks))
            states.update((pid, state) for pid in others if pid != head)
        return states

    def estimate_calls(self, plan: Plan) -> int:
        """The Marketo calls executing `plan` makes, without making any: look-ups, lead writes
        and list changes, chunked as `sync` chunks them. Every looked-up person is taken to
        match one lead (its bound lead when it has one), so a person that turns out new, or
        resolves to another lead than the bound one, may cost a call more."""
        persons = [_Person(p) for p in plan.persons]
        lookups = writes = 0
        adds: dict[str, int] = {}
        removes: dict[str, set[int]] = {}
        for index, person in enumerate(persons):
            if self._needs_lookup(person):
                lookups += 1
                writes += self._writes(person)
            # a stand-in id for a person with no binding: never a real lead, nor HOLDER_RESOLVED
            person.lead_id = person.plan.bound_lead or -2 - index
            if not self._rules.manages_lists:
                continue
            joins, leaves = self._changes(person)
            for audience in joins:
                adds[audience] = adds.get(audience, 0) + 1
            for audience, lead in leaves:
                removes.setdefault(audience, set()).add(lead)
        size = self._batch_size
        return (
            _calls(lookups, size)
            + _calls(writes, size)
            + sum(_calls(n, size) for n in adds.values())
            + sum(_calls(len(leads), size) for leads in removes.values())
        )

    async def dry_run(
        self, updates: Sequence[ProfileUpdate], *, state: DesiredState | None = None
    ) -> DryRunResult:
        """Plan and look up like `sync`, write nothing; say what would be written."""
        plan = await self._plan_in_thread(updates, state)
        persons = [_Person(p) for p in plan.persons]
        outcomes = list(plan.outcomes)
        create: list[str] = []
        update: list[PlannedUpdate] = []
        joins: dict[str, list[str]] = {}
        exits: dict[str, list[str]] = {}
        uncalled: dict[str, tuple[Action, ...]] = {}
        try:
            found = await self._lookup([p for p in persons if self._needs_lookup(p)])
        except _Stop as stop:
            deferred = tuple(
                Deferred(u.update_id, u.profile_id, p.plan.dedupe_value, stop.error)
                for p in persons
                for u in p.plan.updates
            )
            return DryRunResult(plan, (), (), (), tuple(outcomes), deferred)
        listed: list[_Person] = []  # the persons whose list changes are shown
        for person in persons:
            if person.final:
                outcomes.extend(person.outcomes())
                continue
            lead = found.get(person.plan.key) if self._needs_lookup(person) else None
            if lead is not None:
                person.lead_id = lead.id
                if self._writes(person):
                    self._settle(person, lead)
                    update.append(PlannedUpdate(person.plan.dedupe_value, lead.id, person.kept))
            elif not self._needs_lookup(person):
                person.lead_id = person.plan.bound_lead
                person.bound = True
            elif not self._leaves_unresolved(person):
                self._decide_unmatched(person)
                if person.final:
                    outcomes.extend(person.outcomes())
                    continue
                create.append(person.plan.dedupe_value)
                person.created = True
            if self._rules.manages_lists:
                listed.append(person)
        await self._keep_for_others(listed)
        for person in listed:
            adds, leaves = self._changes(person)
            if person.actions:
                uncalled[person.plan.speaker] = tuple(person.actions)
            for audience in adds:
                joins.setdefault(audience, []).append(person.plan.dedupe_value)
            for audience, _ in leaves:
                exits.setdefault(audience, []).append(person.plan.dedupe_value)
        audiences = tuple(
            AudienceChanges(
                audience_id=a,
                list_id=self._lists[a],
                add=tuple(joins.get(a, ())),
                remove=tuple(exits.get(a, ())),
            )
            for a in sorted(set(joins) | set(exits))
        )
        return DryRunResult(
            plan, tuple(create), tuple(update), audiences, tuple(outcomes), uncalled=uncalled
        )

    # -- execution -------------------------------------------------------------------------

    def _lock_key(self, key: str) -> str:
        return f"{self._rules.dedupe_field}\x00{key}"

    async def _execute(self, persons: list[_Person]) -> None:
        pending: list[_Person] = []
        ready: list[_Person] = []
        for person in persons:
            if self._needs_lookup(person):
                pending.append(person)
            else:
                person.lead_id = person.plan.bound_lead
                person.bound = True
                ready.append(person)
        for _ in range(self._max_rounds):
            if not pending:
                break
            found = await self._lookup(pending)
            to_update: list[_Person] = []
            to_create: list[_Person] = []
            for person in pending:
                if person.final:
                    continue
                lead = found.get(person.plan.key)
                if lead is not None:
                    (to_update if self._matched(person, lead) else ready).append(person)
                    continue
                if self._leaves_unresolved(person):
                    ready.append(person)  # no lead to resolve to: only the known holders leave
                    continue
                if person.conflicted:
                    # Marketo says the lead exists, yet the dedupe value finds none: another
                    # lead holds the record's key (its e-mail); creating again cannot succeed
                    person.fail(CODE_LEAD_EXISTS, "Lead already exists")
                    continue
                self._decide_unmatched(person)
                if not person.final:
                    self._settle(person, None)
                    to_create.append(person)
            pending = []
            pending += await self._update(to_update, ready)
            pending += await self._create(to_create, ready)
        for person in pending:
            if person.unknown is None:
                person.fail(person.last_code, REASON_UNRESOLVED)
        if self._rules.manages_lists:
            await self._write_lists(ready)
            await self._resolve_stale(ready)
        self._finish(ready)

    async def _resolve_stale(self, persons: Sequence[_Person]) -> None:
        """Resolve again, through REST, the persons whose bound lead Marketo no longer has: the
        new lead gets the attributes and the memberships, the deleted holder's are cleared."""
        stale = [p for p in persons if p.stale_binding and not p.final]
        for person in stale:
            person.rebind()
        if stale:
            await SyncEngine._execute(self, stale)

    def _finish(self, persons: Sequence[_Person]) -> None:
        """End the persons whose writes are done: ACTIVATED, or EXCLUDED when consent is
        refused (with the removals made) or when a person of no activated audience had no exit
        to deliver."""
        for person in persons:
            if person.final:
                continue
            if person.plan.consent_refused:
                person.exclude(CONSENT_REFUSED)
            elif person.plan.no_audience and not person.actions:
                person.exclude(NO_AUDIENCE)
            else:
                person.kind = OutcomeKind.ACTIVATED

    @staticmethod
    def _leaves_unresolved(person: _Person) -> bool:
        """Whether a person no lead was found for still has writes: the removals of the leads
        holding its memberships (consent refused, or a member of no audience)."""
        plan = person.plan
        return plan.consent_refused or (plan.no_audience and bool(plan.holders))

    def _needs_lookup(self, person: _Person) -> bool:
        """Whether `person` must be resolved: attributes to write, or list changes that need the
        resolved lead while none is bound."""
        plan = person.plan
        if plan.removals_only:
            if plan.bound_lead is not None or not plan.key:
                return False
            # the resolved lead is removed where it holds a membership, or from an untracked
            # list an exit leaves with no known holder
            return any(HOLDER_RESOLVED in held for held in plan.holders.values()) or (
                plan.no_audience
                and any(a not in plan.holders and a not in self._tracked for a in plan.exits)
            )
        return self._writes(person) or plan.bound_lead is None

    def _writes(self, person: _Person) -> bool:
        """Whether `person`'s lead gets attributes: the sync type writes them and the person
        has some not older than what was applied, which differ from them."""
        plan = person.plan
        return self._rules.writes_attributes and plan.writes_attributes and plan.attributes_changed

    def _matched(self, person: _Person, lead: Lead) -> bool:
        """Bind `person` to the lead its dedupe value found and settle its write against it;
        whether that lead gets attributes (else only its memberships change)."""
        person.lead_id = lead.id
        self._settle(person, lead)
        return self._writes(person)

    def _settle(self, person: _Person, lead: Lead | None) -> None:
        """Set what `person`'s write sends to `lead` (None: a lead to create) under the write
        policies, and which fields keep Marketo's value."""
        fields: dict[str, Any] = {}
        kept: list[str] = []
        for name, value in person.plan.fields.items():
            if name == "id" or (lead is not None and name == self._rules.dedupe_field):
                continue
            policy = self._policies.get(name, WritePolicy.ALWAYS)
            current = None if lead is None else lead.fields.get(name)
            if policy is WritePolicy.IF_EMPTY and not is_empty(current):
                kept.append(name)
            elif policy is WritePolicy.NEVER_CLEAR and is_empty(value):
                if not is_empty(current):
                    kept.append(name)
            else:
                fields[name] = value
        person.fields = fields
        person.kept = tuple(sorted(kept))

    def _decide_unmatched(self, person: _Person) -> None:
        """Exclude an unmatched person unless a lead may and should be created."""
        rules = self._rules
        plan = person.plan
        if plan.no_audience:
            person.exclude(NO_AUDIENCE)
        elif not rules.creates_leads or not plan.writes_attributes:
            # creating a lead from attributes older than those applied would write them
            person.exclude(_NO_MATCHING_LEAD)
        else:
            missing = _missing_for_create(plan.fields)
            if missing:
                names = ", ".join(missing)
                person.exclude(
                    Exclusion(
                        ExclusionCode.MISSING_REQUIRED,
                        ",".join(missing),
                        f"{REASON_MISSING_REQUIRED}: {names}",
                    )
                )

    async def _lookup(self, persons: Sequence[_Person]) -> dict[str, Lead]:
        """Resolve each person's dedupe value to its lead (most recently updated of the matches)."""
        values: dict[str, str] = {}
        for person in persons:
            if not person.final and person.plan.key:
                person.calls = True
                values.setdefault(person.plan.key, person.plan.dedupe_value)
        matches: dict[str, list[Lead]] = {}
        failures: dict[str, RejectedError] = {}
        for chunk in _chunks(list(values.items()), self._batch_size):
            await self._lookup_chunk(chunk, matches, failures)
        for person in persons:
            error = failures.get(person.plan.key)
            if error is not None and not person.final:
                person.fail(error.code or "", error.reason)
        return {key: most_recent(leads) for key, leads in matches.items() if leads}

    async def _lookup_chunk(
        self,
        chunk: Sequence[tuple[str, str]],
        matches: dict[str, list[Lead]],
        failures: dict[str, RejectedError],
    ) -> None:
        field_name = self._rules.dedupe_field
        fields = [field_name, *LOOKUP_FIELDS, *sorted(self._policies)]
        try:
            leads = await self._call(
                self._client.find_leads(field_name, [value for _, value in chunk], fields)
            )
        except RejectedError as error:
            if len(chunk) == 1 or _not_a_record(error):
                failures.update((key, error) for key, _ in chunk)
                return
            middle = len(chunk) // 2
            await self._lookup_chunk(chunk[:middle], matches, failures)
            await self._lookup_chunk(chunk[middle:], matches, failures)
            return
        wanted = {key for key, _ in chunk}
        for lead in leads:
            value = lead.fields.get(field_name)
            if value is None:
                continue
            key = dedupe_key(str(value))
            if key in wanted:
                matches.setdefault(key, []).append(lead)

    async def _update(self, persons: list[_Person], ready: list[_Person]) -> list[_Person]:
        """Update matched leads by id; returns the persons whose lead vanished (resolve again)."""
        if not persons:
            return []
        records = [self._update_record(p) for p in persons]

        async def call(part: Sequence[Mapping[str, Any]]) -> list[RecordResult]:
            return await self._client.sync_leads(
                part, action=SyncAction.UPDATE_ONLY, lookup_field="id"
            )

        results = await self._split(records, call)
        again: list[_Person] = []
        for person, result in zip(persons, results, strict=True):
            if isinstance(result, RejectedError):
                person.fail(result.code or "", result.reason)
            elif result.status == "updated":
                person.actions.append(Action(ActionType.UPDATED))
                ready.append(person)
            else:
                reason = _first_reason(result.reasons)
                if reason.code == CODE_LEAD_NOT_FOUND:
                    person.lead_id = None
                    person.last_code = reason.code
                    again.append(person)
                else:
                    person.fail(reason.code, reason.message)
        return again

    def _update_record(self, person: _Person) -> dict[str, Any]:
        return {**person.fields, "id": person.lead_id}

    async def _create(self, persons: list[_Person], ready: list[_Person]) -> list[_Person]:
        """Create unmatched leads; returns the persons to resolve again (1005, answer lost)."""
        if not persons:
            return []
        records = [dict(p.fields) for p in persons]
        partition = self._rules.create_partition

        async def call(part: Sequence[Mapping[str, Any]]) -> list[RecordResult | _Unknown]:
            try:
                # Marketo ignores lookupField on createOnly; emulators use it to answer 1005
                answer: list[RecordResult | _Unknown] = []
                answer += await self._client.sync_leads(
                    part,
                    action=SyncAction.CREATE_ONLY,
                    lookup_field=self._rules.dedupe_field,
                    partition_name=partition,
                )
                return answer
            except OutcomeUnknownError as error:
                known: list[RecordResult | _Unknown] = list(
                    error.completed[: error.first_unknown_index]
                )
                return known + [_Unknown(error)] * (len(part) - len(known))

        results = await self._split(records, call)
        again: list[_Person] = []
        for person, result in zip(persons, results, strict=True):
            if isinstance(result, RejectedError):
                person.fail(result.code or "", result.reason)
            elif isinstance(result, _Unknown):
                person.unknown = result.error
                again.append(person)
            elif result.status == "created" and result.id is not None:
                person.lead_id = result.id
                person.created = True
                person.unknown = None
                person.actions.append(Action(ActionType.CREATED))
                ready.append(person)
            else:
                reason = _first_reason(result.reasons)
                if reason.code == CODE_LEAD_EXISTS:
                    person.last_code = reason.code
                    person.conflicted = True
                    again.append(person)
                else:
                    person.fail(reason.code, reason.message)
        return again

    def _changes(self, person: _Person) -> tuple[list[str], list[tuple[str, int]]]:
        """The list changes that bring `person` to its target: audiences its resolved lead joins,
        and (audience, lead) removals. Exits that need no call get NOT_IN_LIST here; the leads
        holding each membership are recorded in `person.held`."""
        plan = person.plan
        lead = person.lead_id
        adds: list[str] = []
        removes: list[tuple[str, int]] = []
        for audience, want in plan.desired.items():
            held: set[int] = set()
            for holder in plan.holders.get(audience, ()):
                if holder != HOLDER_RESOLVED:
                    held.add(holder)
                elif lead is not None:
                    held.add(lead)
            # a lead other profiles still want in the list stays; the person holds it no more
            kept = plan.kept.get(audience, frozenset())
            leaving = {h for h in held if h not in kept or (want and h == lead)}
            person.held[audience] = set(leaving)
            unsure: set[int] = set()  # held after a call of unknown outcome
            for pair, holder in plan.profile_holders.items():
                if pair[1] != audience or pair not in plan.unconfirmed:
                    continue
                if holder != HOLDER_RESOLVED:
                    unsure.add(holder)
                elif lead is not None:
                    unsure.add(lead)
            person.unsure[audience] = unsure & leaving
            if want:
                if lead is None and not person.created:
                    continue  # unresolved (a created lead of a dry run is to be added)
                removes.extend((audience, h) for h in sorted(leaving) if h != lead)
                if lead not in leaving or lead in unsure:
                    adds.append(audience)  # an add of unknown outcome is made again
                continue
            removes.extend((audience, h) for h in sorted(leaving))
            if held or audience not in plan.exits or (lead is None and plan.consent_refused):
                continue
            if (lead if lead is not None else plan.bound_lead) in kept:
                continue  # in the list for another profile: nothing to remove, nor NOT_IN_LIST
            if lead is not None and not person.created and audience not in self._tracked:
                # someone else may have added the lead to this list: remove the resolved lead
                removes.append((audience, lead))
            else:
                person.actions.append(Action(ActionType.NOT_IN_LIST, audience))
        return adds, removes

    async def _write_lists(
        self, persons: Sequence[_Person], joined: Mapping[str, set[str]] | None = None
    ) -> None:
        """Write every person's list changes; `joined` names, per person key, the audiences an
        import already added its lead to."""
        adds: dict[str, list[_Person]] = {}
        removes: dict[str, list[tuple[_Person, int]]] = {}
        await self._keep_for_others(persons)
        for person in persons:
            if person.final:
                continue
            done = (joined or {}).get(person.plan.key, set())
            joins, leaves = self._changes(person)
            for audience in joins:
                if audience in done:
                    person.join(audience)
                else:
                    adds.setdefault(audience, []).append(person)
            for audience, lead in leaves:
                removes.setdefault(audience, []).append((person, lead))
            if not joins and not leaves:
                self._finish([person])  # nothing left to write: a later stop cannot defer it
        for audience in sorted(set(adds) | set(removes)):
            list_id = self._lists[audience]
            await self._add_members(audience, list_id, adds.get(audience, []))
            await self._membership(audience, list_id, removes.get(audience, []), add=False)

    async def _keep_for_others(self, persons: Sequence[_Person]) -> None:
        """Add to each person's `kept` the leads other profiles want in its lists among those
        a look-up resolved it to: the stored state's co-holders cover only the leads its
        profiles hold or are bound to, and an exit may remove the resolved lead (a membership
        held by `HOLDER_RESOLVED`, an untracked list). The profiles of `persons` count through
        their own person only."""
        fresh = {
            p.lead_id
            for p in persons
            if not p.final
            and p.lead_id is not None
            and p.lead_id != p.plan.bound_lead
            and not all(p.plan.desired.values())
        }
        if self._co_holders is None or not fresh:
            return
        planned = {pid for p in persons for pid in p.plan.profile_ids}
        found = await self._co_holders(sorted(fresh), planned)
        for person in persons:
            plan = person.plan
            kept = {
                audience: plan.kept.get(audience, frozenset()) | {lead}
                for (audience, lead) in found
                if lead == person.lead_id and audience in plan.desired
            }
            if kept:
                person.plan = replace(plan, kept={**plan.kept, **kept})

    async def _add_members(self, audience: str, list_id: int, persons: list[_Person]) -> None:
        """Add the persons' resolved leads to `audience`'s list."""
        items = [(p, p.lead_id) for p in persons if not p.final and p.lead_id is not None]
        await self._membership(audience, list_id, items, add=True)

    async def _membership(
        self, audience: str, list_id: int, items: Sequence[tuple[_Person, int]], *, add: bool
    ) -> None:
        by_id: dict[int, list[_Person]] = {}
        for person, lead_id in items:
            if not person.final:
                by_id.setdefault(lead_id, []).append(person)
        if not by_id:
            return
        operation = self._client.add_to_list if add else self._client.remove_from_list
        again: list[tuple[_Person, int]] = []
        answered = 0  # calls Marketo answered (a chunk rejected as a whole is split in several)

        async def call(part: Sequence[int]) -> list[MembershipResult]:
            nonlocal answered
            results = await operation(list_id, part)
            answered += 1
            return results

        ids = list(by_id)
        for person in {id(p): p for group in by_id.values() for p in group}.values():
            person.calls = True
        # Chunk by chunk: what Marketo answered for a chunk is recorded before a later one
        # stops the batch (a lead that joined is held, so an exit before the retry removes it).
        for chunk in _chunks(ids, self._batch_size):
            before = answered
            try:
                results = await self._split(chunk, call)
            except _Stop as stop:
                if may_have_applied(stop.error) or answered > before:
                    # The request, or a part of it split off and answered before the stop,
                    # may have changed the list: its leads count as held, unconfirmed (an
                    # exit removes them, a member's retry adds them again).
                    for lead_id in chunk:
                        for person in by_id[lead_id]:
                            person.hold(audience, lead_id, unsure=True)
                raise
            for lead_id, result in zip(chunk, results, strict=True):
                self._answered(audience, lead_id, result, by_id[lead_id], add=add, again=again)
        if again:
            await self._membership(audience, list_id, again, add=False)

    def _answered(
        self,
        audience: str,
        lead_id: int,
        result: MembershipResult | RejectedError,
        persons: Sequence[_Person],
        *,
        add: bool,
        again: list[tuple[_Person, int]],
    ) -> None:
        """Record Marketo's answer for `lead_id`'s add to (or removal from) `audience`'s list;
        `again` gets the removals a merged lead calls for."""
        if isinstance(result, RejectedError) and result.code == CODE_LIST_NOT_FOUND:
            raise _Stop(result)
        for person in persons:
            if isinstance(result, RejectedError):
                person.fail(result.code or "", result.reason)
                continue
            reason = _first_reason(result.reasons)
            held = person.held.setdefault(audience, set())
            if result.status in ("added", "removed") or reason.code in (
                CODE_NOT_IN_LIST,
                CODE_LEAD_NOT_FOUND,
            ):
                person.unsure.get(audience, set()).discard(lead_id)  # answered
            if add and result.status == "added":
                person.actions.append(Action(ActionType.ADDED, audience))
                held.add(lead_id)
            elif not add and result.status == "removed":
                person.actions.append(Action(ActionType.REMOVED, audience))
                held.discard(lead_id)
            elif add and reason.code == CODE_LEAD_NOT_FOUND and person.bound:
                person.stale_binding = True  # resolved again once the lists are written
            elif (
                not add
                and reason.code == CODE_LEAD_NOT_FOUND
                and self._merged(person, audience, lead_id)
            ):
                held.discard(lead_id)
                if lead_id == person.lead_id:
                    person.stale_binding = True  # resolved again, its lead then removed
                    person.gone.setdefault(audience, set()).add(lead_id)
                elif person.lead_id is not None:
                    again.append((person, person.lead_id))
            elif not add and reason.code in (CODE_NOT_IN_LIST, CODE_LEAD_NOT_FOUND):
                person.actions.append(Action(ActionType.NOT_IN_LIST, audience))
                held.discard(lead_id)
            else:
                person.fail(reason.code, reason.message)

    @staticmethod
    def _merged(person: _Person, audience: str, lead_id: int) -> bool:
        """Whether a lead the person exits `audience` with, which Marketo no longer has (1004),
        may have been merged into the person's lead: then that lead holds the membership and
        is removed instead, unless another profile wants it there. A bound lead is resolved
        again first; a lead just resolved by a look-up that is gone is simply not in the list."""
        plan = person.plan
        if plan.desired.get(audience, True):
            return False
        if lead_id == person.lead_id:
            return person.bound
        return person.lead_id is not None and person.lead_id not in plan.kept.get(
            audience, frozenset()
        )

    async def _split(
        self,
        items: Sequence[T],
        call: Callable[[Sequence[T]], Awaitable[list[R]]],
    ) -> list[R | RejectedError]:
        """Call in chunks; split a chunk rejected as a whole until the culprit is alone."""

        async def bisect(part: Sequence[T]) -> list[R | RejectedError]:
            try:
                answer = await self._call(call(part))
            except RejectedError as error:
                if len(part) == 1 or _not_a_record(error):
                    return [error] * len(part)
                middle = len(part) // 2
                return await bisect(part[:middle]) + await bisect(part[middle:])
            if len(answer) != len(part):
                raise RuntimeError(
                    f"Marketo answered {len(answer)} results for {len(part)} records"
                )
            return list(answer)

        results: list[R | RejectedError] = []
        for chunk in _chunks(items, self._batch_size):
            results.extend(await bisect(chunk))
        return results

    async def _call(self, awaitable: Awaitable[T]) -> T:
        """Await a Marketo call; errors other than a rejection stop the batch (deferred), and so
        does a configuration error unless the engine fails its records instead."""
        try:
            return await awaitable
        except ConfigurationError as error:
            if self._configuration_stops:
                raise _Stop(error) from error
            raise
        except RejectedError:
            raise
        except MarketoError as error:
            raise _Stop(error) from error


def may_have_applied(error: MarketoError) -> bool:
    """Whether a write that ended in `error` may have been applied all the same: no answer
    came back after the request left (or none could be read), as far as the client knows. A
    call the lease's gate refused before its first attempt changed nothing; one refused at a
    retry counts the attempts already sent (`UnavailableError.attempts`)."""
    if isinstance(error, UnavailableError):
        return error.attempts > 0
    return isinstance(error, OutcomeUnknownError)


def _not_a_record(error: RejectedError) -> bool:
    """Whether no record of the refused request causes the rejection (splitting cannot help)."""
    return isinstance(error, ConfigurationError) or error.code in NOT_RECORD_CODES
