"""Planning a batch: supersede, exclude and coalesce profile updates, with no I/O.

The planner turns a batch of `ProfileUpdate`s into one `PlannedPerson` per dedupe value (what the
executor resolves and writes) plus the outcomes it can decide alone (superseded and excluded).

Facts are ordered per kind: a profile's attributes against its attribute watermark (the event
time of the attributes already applied), each membership against the mark of its (profile,
audience) (the status already applied and its event time). An attribute update never supersedes a
membership event, nor the reverse. Rules, in order:

0. An update of a forgotten profile (`DesiredState.forgotten`) is excluded `forgotten`: nothing of
   it is written, no state moves.
1. Each update is split into its facts: its attributes are stale when older than the profile's
   watermark, each membership of an activated audience when older than its own mark. An update
   with no fact left is superseded and never written; one whose attributes only are stale still
   delivers its memberships and writes no attributes; a profile with only such updates in the
   batch is resolved by its stored dedupe value (that of the attributes applied), not by the
   one its stale attributes carry.
2. Per profile, the latest update with current attributes (event time, then position in the
   batch; the latest update when none has) speaks for the profile: consent refused, a mapping
   rejection, a missing dedupe value or one holding a comma (Marketo's look-up splits its values
   on commas) exclude it, and the profile's other updates in the batch are superseded by it.
3. Profiles are coalesced per dedupe value: the latest current attributes win; memberships are
   merged per audience as a union of the profiles' latest statuses: the person's status is the
   latest member status among them, else the latest exit. The update carrying it shares the
   person's outcome, and so do the newer exits it outlives (their profiles' marks record them);
   older updates left with nothing are superseded.

Then each person gets its target from the stored state (`DesiredState`) plus the batch: per
activated audience, whether the person should be a member (any of its profiles is, by its
latest status of the batch, else its stored desired status: a lead is in a list while at least
one profile that resolves to it wants it; never while consent is refused), which of its
profiles want it (they alone hold the membership) and which leads hold it now, and the leads
that profiles outside the person still want in the list (`kept`: members holding the lead or
bound to it, consent not refused, from `DesiredState.co_holders` and the stored marks of
profiles planned into no person), which the person never removes; whether its attributes
changed (digest of the mapped fields against the one last applied) and the lead it is bound to
(when its dedupe value is the bound one). A refused consent
(`n`, `dn`) does not drop the person: it is planned with no desired membership, so the removals
of what it holds go out (they export no personal data); its attributes are not written. Without
current attributes in the batch, the stored consent state decides.

The person's profiles are those coalesced into it: the profiles of the updates sharing its
outcome and every profile whose current attributes lost to the winner's (its update superseded).
So a stored member makes the person exported, and the memberships held for it move or leave
with the person, whichever profile's update wins. Coalescing is per batch: a profile with no
update in the batch, or only stale ones (rule 1), is not one of the person's, even when it is
bound to the same lead.

A destination exports the members of its activated audiences, whatever its sync type (their
membership facts are kept for Profile only too; only the list writes depend on the sync type).
A person that is a member of none (`no_audience`) has no attributes written and no lead
created. Its attributes are not applied, yet they are the newest: the watermark moves to them
and they are kept (`UnappliedAttributes`, then `DesiredState.unapplied`), so that an older
update which exports the profile writes them instead of its own (the newest attributes win).
With nothing held and no exit to deliver to a list it is EXCLUDED `no_audience` here (its
watermarks and attributes in `Plan.watermarks` and `Plan.unapplied`); otherwise its removals and
exits go to the executor, which keeps its watermarks and attributes (`PlannedPerson.unapplied`)
once its outcome is final, not when the batch stops before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from service.domain import (
    HOLDER_RESOLVED,
    AudienceMembership,
    DesiredState,
    Exclusion,
    ExclusionCode,
    MappingRejectedError,
    MembershipMark,
    MembershipStatus,
    MissingDedupeValueError,
    Outcome,
    OutcomeKind,
    ProfileMapper,
    ProfileState,
    ProfileUpdate,
    SyncRules,
    UnappliedAttributes,
    attributes_digest,
    dedupe_key,
    is_refusal,
)

REASON_CONSENT_REFUSED = "marketing consent refused"
REASON_NO_DEDUPE_VALUE = "no dedupe value"
REASON_MAPPING_REJECTED = "value rejected by mapping"
REASON_STALE = "older than the update already applied for this profile"
REASON_ATTRIBUTES_STALE = (
    "attributes superseded: older than the attributes already applied for this profile"
)
REASON_SUPERSEDED_IN_BATCH = "superseded by a newer update in the same batch"
REASON_NO_AUDIENCE = "no membership of an activated audience"
REASON_FORGOTTEN = "the profile was forgotten (ForgetProfile): nothing of it is exported again"
REASON_DEDUPE_COMMA = (
    "the dedupe value contains a comma, which Marketo's look-up takes as a separator between values"
)


def value_at(profile: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path of an XDM-like profile, or None."""
    node: Any = profile
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


@dataclass(frozen=True, slots=True)
class PlannedPerson:
    """Everything the executor writes for one dedupe value.

    `updates` are the updates that share this person's outcome; `memberships` holds, per
    activated audience, the person's status in the batch (the latest member status of its
    profiles, else the latest exit). `writer` is the update whose
    attributes `fields` are and `sources` maps each audience of `memberships` to the update whose
    status it is: each write is shown on the outcome of the update that asked for it.
    """

    key: str
    dedupe_value: str
    fields: Mapping[str, Any]
    memberships: Mapping[str, MembershipStatus]
    updates: tuple[ProfileUpdate, ...]
    watermarks: Mapping[str, datetime]
    """The attribute event time each profile reaches once the person is written."""
    writes_attributes: bool = True
    """False when every update's attributes are older than their profile's watermark: only
    memberships are delivered, `fields` is empty."""
    stale_attributes: frozenset[str] = frozenset()
    """Update ids whose attributes were older than the watermark (their memberships were not)."""
    membership_marks: Mapping[tuple[str, str], MembershipMark] = field(default_factory=dict)
    """The membership each (profile id, audience id) reaches once the person is written."""
    writer: str = ""
    """The update whose attributes `fields` are ("" when none is written)."""
    sources: Mapping[str, str] = field(default_factory=dict)
    """Per audience of `memberships`, the update whose status it is."""
    desired: Mapping[str, bool] = field(default_factory=dict)
    """Per activated audience the person has state in: whether it should be a member."""
    holders: Mapping[str, frozenset[int]] = field(default_factory=dict)
    """Per activated audience, the leads holding the membership now (`HOLDER_RESOLVED`: the
    lead the person resolves to)."""
    profile_ids: tuple[str, ...] = ()
    """The person's profiles: those of `updates`, then those whose current attributes lost to
    the writer's (every update of theirs superseded). The stored state of each counts toward the
    target: its desired memberships and the leads holding them."""
    wanting: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Per audience the person should be a member of, its profiles that want it (their latest
    status, of the batch else stored, is a member): they hold the membership; the others hold
    nothing there."""
    profile_holders: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """The stored holder of each (profile id, audience id) of the person's profiles."""
    unconfirmed: frozenset[tuple[str, str]] = frozenset()
    """The pairs of `profile_holders` a list call of unknown outcome left: the lead may be in
    the list or not (removed where it leaves, added again where the person is a member)."""
    kept: Mapping[str, frozenset[int]] = field(default_factory=dict)
    """Per activated audience, the leads that profiles outside the person still want in its
    list (`DesiredState.co_holders`): the person never removes them."""
    bound_lead: int | None = None
    """The lead the person's dedupe value was bound to at its last confirmed write."""
    attributes_changed: bool = True
    """Whether the mapped attributes differ from those last applied (or the binding is unknown)."""
    digest: str | None = None
    """Digest of `fields` (None when no attributes are written)."""
    prior: ProfileState | None = None
    """The stored state of the profile whose attributes `fields` are."""
    consent_refused: bool = False
    no_audience: bool = False
    """The person is a member of no activated audience: only its removals and exits are
    delivered (no attributes, no lead created); with no list action it is EXCLUDED
    `no_audience`."""
    unapplied: Mapping[str, UnappliedAttributes] = field(default_factory=dict)
    """A person of no activated audience: the newest attributes of its profiles, not written;
    kept (with `watermarks`, which reach them) once its outcome is final."""

    @property
    def speaker(self) -> str:
        """The update that carries the person's writes no fact of the batch asked for (a
        membership that follows the person, one re-added after consent)."""
        return self.writer or self.updates[-1].update_id

    @property
    def removals_only(self) -> bool:
        """Only removals (and exits) are delivered: consent refused or no audience."""
        return self.consent_refused or self.no_audience

    @property
    def joins(self) -> tuple[str, ...]:
        return tuple(a for a, s in self.memberships.items() if s.is_member)

    @property
    def exits(self) -> tuple[str, ...]:
        return tuple(a for a, s in self.memberships.items() if not s.is_member)


@dataclass(frozen=True, slots=True)
class Plan:
    """A planned batch: persons to resolve and write, outcomes already decided, and the
    watermarks those decided outcomes move (profile id -> event time)."""

    persons: tuple[PlannedPerson, ...]
    outcomes: tuple[Outcome, ...]
    watermarks: Mapping[str, datetime] = field(default_factory=dict)
    membership_marks: Mapping[tuple[str, str], MembershipMark] = field(default_factory=dict)
    """Desired statuses of the decided (excluded) profiles' membership facts."""
    profiles: Mapping[str, ProfileState] = field(default_factory=dict)
    """The consent state of the profiles whose refusal was decided here."""
    unapplied: Mapping[str, UnappliedAttributes] = field(default_factory=dict)
    """The newest attributes of the profiles excluded here as members of no activated audience
    (their watermark moves to them): an older update writes these once the profile is
    exported."""


@dataclass(frozen=True, slots=True)
class _Fact:
    """An update of the batch with what is still new in it: its attributes (`current`: not
    older than the profile's watermark) and the memberships newer than their marks."""

    index: int
    update: ProfileUpdate
    current: bool
    memberships: tuple[AudienceMembership, ...]
    attributes_time: datetime
    """The event time of the update's attributes: its own, or that of the profile's newest
    unapplied attributes it carries instead of its older ones."""


_Status = tuple[datetime, int, ProfileUpdate, AudienceMembership]
"""A profile's latest membership fact for an audience: event time, batch position, update."""


@dataclass(slots=True)
class _Profile:
    head: _Fact
    items: list[_Fact]
    dedupe_value: str
    fields: Mapping[str, Any]
    refused: bool = False


def _outcome(update: ProfileUpdate, kind: OutcomeKind, reason: str, dedupe: str | None) -> Outcome:
    return Outcome(
        update_id=update.update_id,
        profile_id=update.profile_id,
        dedupe_value=dedupe,
        kind=kind,
        reason=reason,
    )


def excluded(update: ProfileUpdate, exclusion: Exclusion, dedupe: str | None) -> Outcome:
    """The EXCLUDED outcome of `update`, with the exclusion's code, field and description."""
    return Outcome(
        update_id=update.update_id,
        profile_id=update.profile_id,
        dedupe_value=dedupe,
        kind=OutcomeKind.EXCLUDED,
        reason=exclusion.description,
        exclusion_code=exclusion.code,
        field=exclusion.field,
    )


CONSENT_REFUSED = Exclusion(ExclusionCode.CONSENT_REFUSED, "", REASON_CONSENT_REFUSED)
NO_AUDIENCE = Exclusion(ExclusionCode.NO_AUDIENCE, "", REASON_NO_AUDIENCE)
FORGOTTEN = Exclusion(ExclusionCode.FORGOTTEN, "", REASON_FORGOTTEN)


def plan_batch(
    updates: Sequence[ProfileUpdate],
    rules: SyncRules,
    mapper: ProfileMapper,
    *,
    watermarks: Mapping[str, datetime] | None = None,
    membership_marks: Mapping[tuple[str, str], MembershipMark] | None = None,
    audience_lists: Mapping[str, int] | None = None,
    state: DesiredState | None = None,
) -> Plan:
    """Plan a batch of any size.

    `state` is the destination's stored state for the batch's profiles; without it,
    `watermarks` maps profile id to the event time of the attributes already applied and
    `membership_marks` maps (profile id, audience id) to the desired membership (a member held
    by the resolved lead; no profile state). `audience_lists` maps every activated audience to
    its static list (memberships of other audiences are ignored, and all memberships are ignored
    when the sync type keeps no lists).
    """
    if state is None:
        # marks without holders, as stored before holders were: members hold the resolved lead
        given = membership_marks or {}
        state = DesiredState(
            watermarks=watermarks or {},
            marks=given,
            holders={
                pair: HOLDER_RESOLVED for pair, mark in given.items() if mark.status.is_member
            },
        )
    marks = state.watermarks
    audience_marks = state.marks
    # membership facts of every activated audience are kept, whatever the sync type
    lists = audience_lists or {}
    outcomes: list[Outcome] = []
    new_marks: dict[str, datetime] = {}
    decided_marks: dict[tuple[str, str], MembershipMark] = {}
    decided_profiles: dict[str, ProfileState] = {}
    unapplied: dict[str, UnappliedAttributes] = {}

    by_profile: dict[str, list[_Fact]] = {}
    for index, update in enumerate(updates):
        if update.profile_id in state.forgotten:
            outcomes.append(excluded(update, FORGOTTEN, None))
            continue
        mark = marks.get(update.profile_id)
        current = mark is None or update.event_time >= mark
        attributes_time = update.event_time
        newest = state.unapplied.get(update.profile_id)
        if not current and newest is not None and mark is not None and newest.event_time >= mark:
            # the newest attributes, seen while the profile was exported nowhere, win over the
            # update's older ones
            update = replace(update, profile=newest.profile)
            current, attributes_time = True, newest.event_time
        memberships = tuple(
            m
            for m in update.memberships
            if m.audience_id in lists
            and not _older(update, audience_marks.get((update.profile_id, m.audience_id)))
        )
        if not current and not memberships:
            outcomes.append(_outcome(update, OutcomeKind.SUPERSEDED, REASON_STALE, None))
            continue
        by_profile.setdefault(update.profile_id, []).append(
            _Fact(index, update, current, memberships, attributes_time)
        )

    profiles: list[_Profile] = []
    for items in by_profile.values():
        items.sort(key=lambda item: (item.update.event_time, item.index))
        head = next((item for item in reversed(items) if item.current), items[-1])
        prior = state.profiles.get(head.update.profile_id)
        refused = (
            _refuses(head.update, rules)
            if head.current
            else prior is not None and prior.consent_refused
        )
        # only memberships of the batch are current: they follow the profile to the dedupe
        # value it has now, not to the one its stale attributes carry (an e-mail since changed)
        known = prior.dedupe_value if prior is not None and not head.current else None
        if refused:
            dedupe = known or _known_dedupe_value(head.update, mapper)
            profiles.append(_Profile(head, items, dedupe or "", {}, refused=True))
            continue
        evaluated: tuple[Exclusion | None, str | None, Mapping[str, Any]] = (
            (None, known, {}) if known else _evaluate(head.update, rules, mapper)
        )
        exclusion, dedupe, fields = evaluated
        if exclusion is not None:
            for item in items:
                for m in item.memberships:
                    decided_marks[(item.update.profile_id, m.audience_id)] = MembershipMark(
                        m.status, item.update.event_time
                    )
            outcomes.append(excluded(head.update, exclusion, dedupe))
            outcomes.extend(
                _outcome(item.update, OutcomeKind.SUPERSEDED, REASON_SUPERSEDED_IN_BATCH, dedupe)
                for item in items
                if item is not head
            )
            if head.current:
                new_marks[head.update.profile_id] = head.attributes_time
            continue
        assert dedupe is not None
        profiles.append(_Profile(head, items, dedupe, fields))

    groups: dict[tuple[bool, str], list[_Profile]] = {}
    for profile in profiles:
        # a refused profile is its own person: nothing of another profile is written for it
        group = profile.head.update.profile_id if profile.refused else ""
        groups.setdefault((profile.refused, dedupe_key(profile.dedupe_value) + group), []).append(
            profile
        )

    kept = _wanted_elsewhere(
        state, frozenset(p.head.update.profile_id for p in profiles), decided_marks
    )
    persons: list[PlannedPerson] = []
    for (refused, _), members in groups.items():
        key = dedupe_key(members[0].dedupe_value)
        person, superseded = _coalesce(key, members)
        person = _target(
            person, state, lists, kept, refused=refused, keeps_lists=rules.manages_lists
        )
        outcomes.extend(superseded)
        if refused and not person.holders:
            # nothing held to remove: decided here, with the consent state to store
            dedupe = person.dedupe_value or None
            outcomes.extend(excluded(u, CONSENT_REFUSED, dedupe) for u in person.updates)
            new_marks.update(person.watermarks)
            decided_marks.update(person.membership_marks)
            prior = person.prior or ProfileState()
            if not prior.consent_refused:
                decided_profiles[person.profile_ids[0]] = replace(prior, consent_refused=True)
            continue
        if not refused and not any(person.desired.values()):
            # not (or no longer) a member of an activated audience: nothing of it is exported
            # but the removals of what its leads hold and the exits the lists must see; the
            # newest attributes seen are kept, so that an older update never writes its own
            # once the profile is exported
            outside = _outside(
                person,
                {p.head.update.profile_id: _unapplied(p.head) for p in members if p.head.current},
            )
            if not (rules.manages_lists and (outside.holders or outside.exits)):
                outcomes.extend(
                    excluded(u, NO_AUDIENCE, person.dedupe_value) for u in person.updates
                )
                decided_marks.update(person.membership_marks)
                new_marks.update(outside.watermarks)
                unapplied.update(outside.unapplied)
                continue
            person = outside
        elif not refused and not rules.writes_attributes and not person.memberships:
            # Audience only: an update with no membership fact has nothing to export
            outcomes.extend(excluded(u, NO_AUDIENCE, person.dedupe_value) for u in person.updates)
            new_marks.update(person.watermarks)
            continue
        persons.append(person)
    return Plan(
        persons=tuple(persons),
        outcomes=tuple(outcomes),
        watermarks=new_marks,
        membership_marks=decided_marks,
        profiles=decided_profiles,
        unapplied=unapplied,
    )


def _unapplied(fact: _Fact) -> UnappliedAttributes:
    return UnappliedAttributes(fact.attributes_time, fact.update.profile)


def _outside(person: PlannedPerson, unapplied: Mapping[str, UnappliedAttributes]) -> PlannedPerson:
    """`person`, a member of no activated audience: no attributes are written for it and no
    lead is created; its watermarks still move, to its `unapplied` attributes."""
    return replace(
        person,
        fields={},
        unapplied=unapplied,
        writes_attributes=False,
        attributes_changed=False,
        digest=None,
        no_audience=True,
    )


def _wanted_elsewhere(
    state: DesiredState,
    planned: frozenset[str],
    decided: Mapping[tuple[str, str], MembershipMark],
) -> dict[str, frozenset[int]]:
    """Per audience, the leads that profiles planned into no person of the batch want in its
    list: a member status (the batch's decided one, else stored), consent not refused, holding
    the lead or, holding none, bound to it. A profile planned in the batch counts through its
    own person only."""
    leads: dict[str, set[int]] = {}
    for (audience, co_held), profile_ids in state.co_holders.items():
        if not profile_ids <= planned:
            leads.setdefault(audience, set()).add(co_held)
    for (pid, audience), mark in state.marks.items():
        if pid in planned or pid in state.forgotten:
            continue
        if not decided.get((pid, audience), mark).status.is_member:
            continue
        profile = state.profiles.get(pid)
        if profile is not None and profile.consent_refused:
            continue
        holder = state.holders.get((pid, audience))
        lead = (
            holder
            if holder is not None and holder != HOLDER_RESOLVED
            else profile.lead_id
            if profile is not None
            else None
        )
        if lead is not None:
            leads.setdefault(audience, set()).add(lead)
    return {audience: frozenset(found) for audience, found in leads.items()}


def _target(
    person: PlannedPerson,
    state: DesiredState,
    lists: Mapping[str, int],
    kept: Mapping[str, frozenset[int]],
    *,
    refused: bool,
    keeps_lists: bool,
) -> PlannedPerson:
    """`person` with its target: desired memberships (the union of its profiles' latest
    statuses), holders and the leads others keep (when the sync type keeps lists), binding and
    attribute change."""
    profile_ids = person.profile_ids
    desired: dict[str, bool] = {}
    wanting: dict[str, frozenset[str]] = {}
    holders: dict[str, frozenset[int]] = {}
    profile_holders: dict[tuple[str, str], int] = {}
    for audience in sorted(lists):
        stored_holders = {
            (pid, audience): lead
            for pid in profile_ids
            if keeps_lists and (lead := state.holders.get((pid, audience))) is not None
        }
        profile_holders.update(stored_holders)
        held = frozenset(stored_holders.values())
        latest = [
            person.membership_marks.get((pid, audience)) or state.marks.get((pid, audience))
            for pid in profile_ids
        ]
        if not held and all(mark is None for mark in latest):
            continue
        members = frozenset(
            pid
            for pid, mark in zip(profile_ids, latest, strict=True)
            if mark is not None and mark.status.is_member
        )
        desired[audience] = bool(members) and not refused
        if desired[audience]:
            wanting[audience] = members
        if held:
            holders[audience] = held
    writer = next((u for u in person.updates if u.update_id == person.writer), None)
    head = writer or person.updates[-1]
    prior = state.profiles.get(head.profile_id)
    same_value = (
        prior is not None
        and prior.dedupe_value is not None
        and bool(person.key)
        and dedupe_key(prior.dedupe_value) == person.key
    )
    # no lead bound yet (one an import created): resolved by a look-up, written only if changed
    bound = prior.lead_id if prior is not None and same_value else None
    digest = attributes_digest(person.fields) if person.writes_attributes and not refused else None
    changed = person.writes_attributes and (
        not same_value or prior is None or prior.digest != digest
    )
    return replace(
        person,
        fields={} if refused else person.fields,
        writes_attributes=person.writes_attributes and not refused,
        desired=desired,
        holders=holders,
        wanting=wanting,
        profile_holders=profile_holders,
        kept={a: kept[a] for a in desired if keeps_lists and a in kept},
        profile_ids=profile_ids,
        unconfirmed=frozenset(pair for pair in profile_holders if pair in state.unconfirmed),
        bound_lead=bound,
        attributes_changed=changed and not refused,
        digest=digest,
        prior=prior,
        consent_refused=refused,
    )


def _refuses(update: ProfileUpdate, rules: SyncRules) -> bool:
    return is_refusal(value_at(update.profile, rules.consent_path))


def _older(update: ProfileUpdate, mark: MembershipMark | None) -> bool:
    return mark is not None and update.event_time < mark.event_time


def _coalesce(key: str, members: Sequence[_Profile]) -> tuple[PlannedPerson, list[Outcome]]:
    """The person of the profiles sharing one dedupe value, and the outcomes of the updates
    whose every fact a newer one of the batch replaces."""
    current = [p for p in members if p.head.current]
    winner = max(current or members, key=lambda p: (p.head.attributes_time, p.head.index))
    facts: dict[tuple[str, str], _Status] = {}
    for profile in members:
        for item in profile.items:
            update = item.update
            for membership in item.memberships:
                # items are in event time order: the profile's latest status per audience wins
                facts[(update.profile_id, membership.audience_id)] = (
                    update.event_time,
                    item.index,
                    update,
                    membership,
                )
    own = {pair: MembershipMark(f[3].status, f[0]) for pair, f in facts.items()}
    by_audience: dict[str, list[_Status]] = {}
    for (_, audience), fact in facts.items():
        by_audience.setdefault(audience, []).append(fact)
    latest: dict[str, _Status] = {}
    contributors: set[str] = set()
    for audience, found in by_audience.items():
        # the union: a profile still a member makes the person one; newer exits share its outcome
        joined = [f for f in found if f[3].status.is_member]
        source = max(joined or found, key=lambda f: f[:2])
        latest[audience] = source
        contributors.add(source[2].update_id)
        contributors.update(f[2].update_id for f in found if f[:2] > source[:2])
    if current:
        contributors.add(winner.head.update.update_id)
    sharing: list[ProfileUpdate] = []
    superseded: list[Outcome] = []
    for profile in members:
        for item in profile.items:
            if item.update.update_id in contributors:
                sharing.append(item.update)
            else:
                superseded.append(
                    _outcome(
                        item.update,
                        OutcomeKind.SUPERSEDED,
                        REASON_SUPERSEDED_IN_BATCH,
                        profile.dedupe_value,
                    )
                )
    person = PlannedPerson(
        key=key,
        dedupe_value=winner.dedupe_value,
        fields=winner.fields if current else {},
        memberships={a: m.status for a, (_, _, _, m) in sorted(latest.items())},
        updates=tuple(sharing),
        watermarks={p.head.update.profile_id: p.head.attributes_time for p in current},
        writes_attributes=bool(current),
        stale_attributes=frozenset(
            item.update.update_id
            for p in members
            for item in p.items
            if not item.current and item.update.update_id in contributors
        ),
        membership_marks=own,
        writer=winner.head.update.update_id if current else "",
        sources={a: u.update_id for a, (_, _, u, _) in latest.items()},
        # a profile whose current attributes lost to the writer's is the person's all the same
        profile_ids=tuple(
            dict.fromkeys(
                (*(u.profile_id for u in sharing), *(p.head.update.profile_id for p in current))
            )
        ),
    )
    return person, superseded


def _evaluate(
    update: ProfileUpdate, rules: SyncRules, mapper: ProfileMapper
) -> tuple[Exclusion | None, str | None, Mapping[str, Any]]:
    """(exclusion or None, dedupe value, mapped fields) of one update."""
    try:
        mapped = mapper.map_profile(update.profile)
    except MissingDedupeValueError as error:
        return _no_dedupe_value(error.field or rules.dedupe_field), None, {}
    except MappingRejectedError as error:
        # The mapper's reason names the field and the check, never the value.
        description = f"{REASON_MAPPING_REJECTED}: {error.reason}"
        return Exclusion(error.code, error.field, description), None, {}
    dedupe = mapped.dedupe_value
    if dedupe is None or not str(dedupe).strip():
        return _no_dedupe_value(rules.dedupe_field), None, mapped.fields
    if "," in str(dedupe):
        comma = Exclusion(
            ExclusionCode.DEDUPE_VALUE_HAS_COMMA, rules.dedupe_field, REASON_DEDUPE_COMMA
        )
        return comma, str(dedupe), mapped.fields
    return None, str(dedupe), mapped.fields


def _known_dedupe_value(update: ProfileUpdate, mapper: ProfileMapper) -> str | None:
    """The update's dedupe value for its outcome, None when the mapping cannot tell it."""
    try:
        dedupe = mapper.map_profile(update.profile).dedupe_value
    except MappingRejectedError:
        return None
    return str(dedupe) if dedupe is not None and str(dedupe).strip() else None


def _no_dedupe_value(field: str) -> Exclusion:
    return Exclusion(ExclusionCode.MISSING_DEDUPE_VALUE, field, REASON_NO_DEDUPE_VALUE)
