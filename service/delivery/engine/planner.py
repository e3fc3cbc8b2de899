"""Planning a batch: supersede, exclude and coalesce profile updates, with no I/O.

The planner turns a batch of `ProfileUpdate`s into one `PlannedPerson` per dedupe value (what the
executor resolves and writes) plus the outcomes it can decide alone (superseded and excluded).

Rules, in order:

1. An update older than the profile's watermark (the event time already applied for that profile)
   is superseded and never written.
2. Per profile, the latest update (event time, then position in the batch) speaks for the profile:
   consent refused, a mapping rejection, a missing dedupe value or one holding a comma (Marketo's
   look-up splits its values on commas) exclude it, and the profile's older updates in the batch
   are superseded by it.
3. Profiles are coalesced per dedupe value: the latest update's attributes win; memberships are
   merged per audience, the latest event time winning. Older updates that still carry a winning
   membership share the person's outcome; those left with nothing are superseded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from service.domain import (
    AudienceMembership,
    Exclusion,
    ExclusionCode,
    MappingRejectedError,
    MembershipStatus,
    MissingDedupeValueError,
    Outcome,
    OutcomeKind,
    ProfileMapper,
    ProfileUpdate,
    SyncRules,
    dedupe_key,
)

CONSENT_REFUSED = "n"

REASON_CONSENT_REFUSED = "marketing consent refused"
REASON_NO_DEDUPE_VALUE = "no dedupe value"
REASON_MAPPING_REJECTED = "value rejected by mapping"
REASON_STALE = "older than the update already applied for this profile"
REASON_SUPERSEDED_IN_BATCH = "superseded by a newer update in the same batch"
REASON_NO_AUDIENCE = "no membership of an activated audience"
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
    activated audience, the latest status seen in the batch. `writer` is the update whose
    attributes `fields` are and `sources` maps each audience of `memberships` to the update whose
    status it is: each write is shown on the outcome of the update that asked for it.
    """

    key: str
    dedupe_value: str
    fields: Mapping[str, Any]
    memberships: Mapping[str, MembershipStatus]
    updates: tuple[ProfileUpdate, ...]
    watermarks: Mapping[str, datetime]
    writer: str
    sources: Mapping[str, str]

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


@dataclass(slots=True)
class _Profile:
    head: ProfileUpdate
    head_index: int
    updates: list[tuple[int, ProfileUpdate]]
    dedupe_value: str
    fields: Mapping[str, Any]


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


_CONSENT_REFUSED = Exclusion(ExclusionCode.CONSENT_REFUSED, "", REASON_CONSENT_REFUSED)
_NO_AUDIENCE = Exclusion(ExclusionCode.NO_AUDIENCE, "", REASON_NO_AUDIENCE)


def plan_batch(
    updates: Sequence[ProfileUpdate],
    rules: SyncRules,
    mapper: ProfileMapper,
    *,
    watermarks: Mapping[str, datetime] | None = None,
    audience_lists: Mapping[str, int] | None = None,
) -> Plan:
    """Plan a batch of any size.

    `watermarks` maps profile id to the latest event time already applied; `audience_lists`
    maps every activated audience to its static list (memberships of other audiences are ignored,
    and all memberships are ignored when the sync type keeps no lists).
    """
    marks = watermarks or {}
    lists = audience_lists or {}
    outcomes: list[Outcome] = []
    new_marks: dict[str, datetime] = {}

    by_profile: dict[str, list[tuple[int, ProfileUpdate]]] = {}
    for index, update in enumerate(updates):
        mark = marks.get(update.profile_id)
        if mark is not None and update.event_time < mark:
            outcomes.append(_outcome(update, OutcomeKind.SUPERSEDED, REASON_STALE, None))
            continue
        by_profile.setdefault(update.profile_id, []).append((index, update))

    profiles: list[_Profile] = []
    for items in by_profile.values():
        items.sort(key=lambda item: (item[1].event_time, item[0]))
        head_index, head = items[-1]
        exclusion, dedupe, fields = _evaluate(head, rules, mapper)
        if exclusion is not None:
            outcomes.append(excluded(head, exclusion, dedupe))
            outcomes.extend(
                _outcome(u, OutcomeKind.SUPERSEDED, REASON_SUPERSEDED_IN_BATCH, dedupe)
                for _, u in items[:-1]
            )
            new_marks[head.profile_id] = head.event_time
            continue
        assert dedupe is not None
        profiles.append(_Profile(head, head_index, items, dedupe, fields))

    groups: dict[str, list[_Profile]] = {}
    for profile in profiles:
        groups.setdefault(dedupe_key(profile.dedupe_value), []).append(profile)

    persons: list[PlannedPerson] = []
    for key, members in groups.items():
        winner = max(members, key=lambda p: (p.head.event_time, p.head_index))
        latest: dict[str, tuple[datetime, int, ProfileUpdate, AudienceMembership]] = {}
        if rules.manages_lists:
            for profile in members:
                for index, update in profile.updates:
                    for membership in update.memberships:
                        if membership.audience_id not in lists:
                            continue
                        seen = latest.get(membership.audience_id)
                        if seen is None or (update.event_time, index) >= seen[:2]:
                            latest[membership.audience_id] = (
                                update.event_time,
                                index,
                                update,
                                membership,
                            )
        contributors = {winner.head.update_id} | {u.update_id for _, _, u, _ in latest.values()}
        sharing: list[ProfileUpdate] = []
        for profile in members:
            for _, update in profile.updates:
                if update.update_id in contributors:
                    sharing.append(update)
                else:
                    outcomes.append(
                        _outcome(
                            update,
                            OutcomeKind.SUPERSEDED,
                            REASON_SUPERSEDED_IN_BATCH,
                            profile.dedupe_value,
                        )
                    )
        memberships = {a: m.status for a, (_, _, _, m) in sorted(latest.items())}
        group_marks = {p.head.profile_id: p.head.event_time for p in members}
        if rules.manages_lists and not rules.writes_attributes and not memberships:
            for update in sharing:
                outcomes.append(excluded(update, _NO_AUDIENCE, winner.dedupe_value))
            new_marks.update(group_marks)
            continue
        persons.append(
            PlannedPerson(
                key=key,
                dedupe_value=winner.dedupe_value,
                fields=winner.fields,
                memberships=memberships,
                updates=tuple(sharing),
                watermarks=group_marks,
                writer=winner.head.update_id,
                sources={a: u.update_id for a, (_, _, u, _) in latest.items()},
            )
        )
    return Plan(persons=tuple(persons), outcomes=tuple(outcomes), watermarks=new_marks)


def _evaluate(
    update: ProfileUpdate, rules: SyncRules, mapper: ProfileMapper
) -> tuple[Exclusion | None, str | None, Mapping[str, Any]]:
    """(exclusion or None, dedupe value, mapped fields) of one update."""
    consent = value_at(update.profile, rules.consent_path)
    if isinstance(consent, str) and consent.strip().lower() == CONSENT_REFUSED:
        return _CONSENT_REFUSED, _known_dedupe_value(update, mapper), {}
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
