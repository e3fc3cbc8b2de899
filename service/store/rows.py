"""Row encoding shared by the SQLite and PostgreSQL stores: times, JSON payloads, column lists,
record decoding, dataflow counters and page tokens. Both engines store the same columns."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeGuard

from service.domain import (
    UNDECODABLE,
    UNSTORABLE,
    UPDATE_ID_REUSED,
    Action,
    ActionType,
    AlertSubscription,
    AudienceMembership,
    DecodedBatch,
    DestinationSpec,
    ExclusionCode,
    FieldMapping,
    MarketoConnection,
    MembershipStatus,
    Outcome,
    OutcomeKind,
    PersonAction,
    ProfileUpdate,
    SyncType,
    WritePolicy,
)
from service.store.base import (
    AlertRecord,
    Dataflow,
    DataflowRun,
    DestinationRecord,
    DestinationState,
    InvalidPageToken,
    OutboxEntry,
    OutcomeRecord,
    PendingStats,
)
from service.store.secrets import SecretBox

log = logging.getLogger("service.store")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HOUR_US = 3_600_000_000
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


def to_micros(moment: datetime) -> int:
    """Microseconds since the epoch; a naive datetime is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // timedelta(microseconds=1)


def from_micros(micros: int) -> datetime:
    """The UTC datetime of `to_micros`."""
    return EPOCH + timedelta(microseconds=micros)


def dumps(value: Any) -> str:
    # Compact: the outbox may hold millions of payloads.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass(slots=True)
class Counts:
    received: int = 0
    activated: int = 0
    created: int = 0
    updated: int = 0
    added: int = 0
    removed: int = 0
    excluded: int = 0
    failed: int = 0
    superseded: int = 0
    duplicates: int = 0
    reasons: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    """Counts by (kind, reason, field): excluded by exclusion code and field ("" when none),
    failed by Marketo code (field "")."""


COUNT_COLUMNS = (
    "received",
    "activated",
    "created",
    "updated",
    "added",
    "removed",
    "excluded",
    "failed",
    "superseded",
    "duplicates",
)


ACTION_COLUMN = {
    ActionType.CREATED: "created",
    ActionType.UPDATED: "updated",
    ActionType.ADDED: "added",
    ActionType.REMOVED: "removed",
}
"""The counter of each action an outcome carries (NOT_IN_LIST is counted nowhere). Each write
Marketo confirmed is on exactly one outcome (see `executor.own_actions`), so summing outcomes
counts it once."""


NEW_DESTINATION_COLUMNS = (
    "id, tenant, name, spec, client_secret, webhook_secret, instance_key, state, paused_until, "
    "created_at, updated_at, mappings, version"
)
"""The columns a new destination is inserted with (the others keep their defaults)."""
DESTINATION_COLUMNS = f"{NEW_DESTINATION_COLUMNS}, state_reason"


FailedUpdate = tuple[str, str, str, int, int, str, str]
"""An update that fails before delivery (undecodable, unstorable, its id reused), to record as a
failed outcome: destination_id, update_id, profile_id, event_time, recorded_at, reason, code."""


def undecodable_outcomes(
    destination_id: str,
    batch_id: int,
    count: int,
    decoded: DecodedBatch,
    enqueued_at: int,
    now: int,
) -> list[FailedUpdate]:
    """The `FailedUpdate` of each update of an inbox batch of `count` that
    could not be decoded but was told apart: one without an update id is named after its batch
    and position, one without an event time gets the time its batch came. Logs the batch."""
    log.error(
        "inbox batch %d of %s: %d of its %d updates could not be decoded and failed%s",
        batch_id,
        destination_id,
        count - len(decoded.updates),
        count,
        f" ({decoded.problem})" if decoded.problem else "",
    )
    return [
        (
            destination_id,
            storable_text(update.update_id) or f"undecodable-{batch_id}-{position}",
            storable_text(update.profile_id),
            enqueued_at if update.event_time is None else to_micros(update.event_time),
            now,
            storable_text(update.reason),
            UNDECODABLE,
        )
        for position, update in enumerate(decoded.undecodable)
    ]


# -- what the store can hold ---------------------------------------------------------------------

NUL = "\0"


def text_problem(text: str) -> str | None:
    """Why the store cannot hold `text` as it is, or None. PostgreSQL's text refuses a NUL
    character, and neither engine can encode a lone surrogate; both stores refuse the same."""
    if NUL in text:
        return "contains a NUL character"
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            return "is not valid Unicode"
    return None


def storable_text(text: str) -> str:
    """`text` with each NUL character and lone surrogate replaced by U+FFFD, so that the
    outcome of an update that cannot be stored as it is can still be."""
    if text_problem(text) is None:
        return text
    return "".join(
        "\ufffd" if char == NUL or "\ud800" <= char <= "\udfff" else char for char in text
    )


def _nul_path(value: Any, path: str) -> str | None:
    """The path of the first key or string within `value` (a decoded profile) that holds a NUL
    character, or None."""
    if isinstance(value, str):
        return path if NUL in value else None
    if isinstance(value, dict):
        for key in sorted(value):
            found = path if NUL in key else _nul_path(value[key], f"{path}.{key}")
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_path(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def update_problem(update: ProfileUpdate, payload: str) -> str | None:
    """Why the store cannot hold the update (`payload`: its profile and memberships as stored)
    as it is, or None. The payload is JSON, where a NUL is escaped: only a payload holding the
    escape is walked for the string that has it."""
    for name, text in (("update_id", update.update_id), ("profile_id", update.profile_id)):
        problem = text_problem(text)
        if problem is not None:
            return f"its {name} {problem}"
    if "\\u0000" in payload:
        found = _nul_path(update.profile, "profile")
        for index, membership in enumerate(update.memberships):
            if found is None and NUL in membership.audience_id:
                found = f"audiences[{index}].audience_id"
        if found is not None:
            return f"its {found} contains a NUL character"
    if not payload.isascii() and text_problem(payload) is not None:
        return "its profile or memberships are not valid Unicode"
    return None


def outbox_payload(update: ProfileUpdate) -> str:
    """The stored payload of an outbox entry: its profile and memberships, as JSON."""
    return dumps(
        {
            "p": update.profile,
            "m": [[m.audience_id, m.status.value] for m in update.memberships],
        }
    )


def content_digest(update: ProfileUpdate) -> str:
    """A digest of what an update says (profile_id, event time, profile, memberships in any
    order): an update_id sent again with another digest names different content."""
    content = json.dumps(
        [
            update.profile_id,
            to_micros(update.event_time),
            update.profile,
            sorted([m.audience_id, m.status.value] for m in update.memberships),
        ],
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(content.encode()).hexdigest()[:32]


def storable_ids(updates: Sequence[ProfileUpdate]) -> list[str]:
    """The update ids of `updates` the store can hold, to look up (a query with another would
    fail on PostgreSQL; its update fails in `sort_batch`)."""
    return [update.update_id for update in updates if text_problem(update.update_id) is None]


@dataclass(frozen=True, slots=True)
class QueuedUpdate:
    """An update to store as an outbox entry, with its payload and content digest."""

    update: ProfileUpdate
    payload: str
    digest: str


@dataclass(slots=True)
class SortedBatch:
    """The updates of one inbox batch sorted out for the outbox (see `sort_batch`)."""

    fresh: list[QueuedUpdate] = field(default_factory=list)
    failures: list[FailedUpdate] = field(default_factory=list)
    failed: Counter[str] = field(default_factory=Counter)
    """Failures by code."""
    duplicates: int = 0


REUSED_REASON = (
    "its update_id was already used for an update with different content (profile_id, event "
    "time, profile or memberships); it was not delivered"
)


def sort_batch(
    destination_id: str,
    batch_id: int,
    updates: Sequence[ProfileUpdate],
    known: Mapping[str, str | None],
    enqueued_at: int,
    now: int,
) -> SortedBatch:
    """Sort the decoded updates of an inbox batch: those to queue, those that fail (the store
    cannot hold them; their update_id names different content) and true duplicates.

    `known`: update id -> content digest of the destination's updates already queued or
    delivered (None where no digest was kept: taken as the same content). An update whose id
    is known, or came earlier in the batch, with the same content is a duplicate; with other
    content it fails with `UPDATE_ID_REUSED`, its outcome recorded under its id with the batch
    and position after it (the id itself keeps the first update's outcome).
    """
    batch = SortedBatch()
    seen = dict(known)
    for position, update in enumerate(updates):
        payload = outbox_payload(update)
        problem = update_problem(update, payload)
        if problem is not None:
            code, reason = UNSTORABLE, f"the update cannot be stored: {problem}"
            update_id = storable_text(update.update_id)
        else:
            digest = content_digest(update)
            if update.update_id not in seen:
                seen[update.update_id] = digest
                batch.fresh.append(QueuedUpdate(update, payload, digest))
                continue
            if seen[update.update_id] in (None, digest):
                batch.duplicates += 1
                continue
            code, reason = UPDATE_ID_REUSED, REUSED_REASON
            update_id = f"{update.update_id}#reused-{batch_id}-{position}"
        batch.failed[code] += 1
        batch.failures.append(
            (
                destination_id,
                update_id,
                storable_text(update.profile_id),
                to_micros(update.event_time),
                now,
                reason,
                code,
            )
        )
    if batch.failures:
        log.warning(
            "inbox batch %d of %s: %d updates failed before delivery (%s)",
            batch_id,
            destination_id,
            len(batch.failures),
            ", ".join(f"{code}: {count}" for code, count in sorted(batch.failed.items())),
        )
    return batch


def storable_outcome(outcome: Outcome) -> Outcome:
    """The outcome, or, when the store cannot hold one of its strings as it is (a NUL from a
    transform, say), a failed outcome with code `UNSTORABLE` that says which and what it was:
    the update is retired either way, never retried for ever."""
    texts = {
        "update_id": outcome.update_id,
        "profile_id": outcome.profile_id,
        "dedupe_value": outcome.dedupe_value or "",
        "reason": outcome.reason,
        "marketo_code": outcome.marketo_code,
        **{f"actions[{i}].audience_id": a.audience_id or "" for i, a in enumerate(outcome.actions)},
    }
    for name, text in texts.items():
        problem = text_problem(text)
        if problem is not None:
            return Outcome(
                update_id=storable_text(outcome.update_id),
                profile_id=storable_text(outcome.profile_id),
                dedupe_value=None,
                kind=OutcomeKind.FAILED,
                reason=f"its {outcome.kind.value} outcome cannot be stored: its {name} {problem}",
                marketo_code=UNSTORABLE,
            )
    return outcome


def unpacked_counts(
    duplicates: Counter[str], failed: Counter[tuple[str, str]]
) -> list[tuple[str, Counts]]:
    """Per destination, in id order (the order rows are locked in), the counts of an unpack:
    re-sent updates dropped and updates that failed, by (destination, code); all of them leave
    pending."""
    found = []
    for destination_id in sorted(duplicates.keys() | {key[0] for key in failed}):
        reasons = Counter(
            {
                ("failed", code, ""): n
                for (destination, code), n in failed.items()
                if destination == destination_id
            }
        )
        counts = Counts(
            duplicates=duplicates[destination_id],
            failed=sum(reasons.values()),
            reasons=reasons,
        )
        if counts.duplicates + counts.failed:
            found.append((destination_id, counts))
    return found


OUTBOX_COLUMNS = (
    "sequence, destination_id, instance_key, update_id, profile_id, event_time, payload, "
    "trace_context, enqueued_at, not_before, attempts, last_error"
)
"""The columns `outbox_entry` reads, followed by the payload's size in bytes."""


OUTCOME_COLUMNS = (
    "id, destination_id, update_id, profile_id, dedupe_value, event_time, recorded_at, kind, "
    "actions, lead_id, reason, marketo_code, exclusion_code, exclusion_field, kept_fields"
)


ALERT_COLUMNS = "id, destination_id, type, message, raised_at, resolved_at, paused_until"


def spec_json(spec: DestinationSpec) -> dict[str, Any]:
    """The spec as stored: JSON data without any secret (those are sealed in their columns)."""
    return {
        "name": spec.name,
        "description": spec.description,
        "connection": {
            "munchkin_id": spec.connection.munchkin_id,
            "client_id": spec.connection.client_id,
            "endpoint": spec.connection.endpoint,
        },
        "workspace": spec.workspace,
        "sync_type": spec.sync_type.value if spec.sync_type else None,
        "partition": spec.partition,
        "dedupe_field": spec.dedupe_field,
        "person_action": spec.person_action.value if spec.person_action else None,
        "alerts": {
            "types": list(spec.alerts.types),
            "webhook_url": spec.alerts.webhook_url,
            "failure_rate_threshold": spec.alerts.failure_rate_threshold,
            "delivery_delay_seconds": spec.alerts.delivery_delay_threshold.total_seconds(),
        },
        "marketing_actions": list(spec.marketing_actions),
        "consent_path": spec.consent_path,
    }


def spec_from_json(
    data: Mapping[str, Any], client_secret: str, webhook_secret: str
) -> DestinationSpec:
    """The spec of `spec_json`, with its secrets."""
    connection = data["connection"]
    alerts = data.get("alerts", {})
    return DestinationSpec(
        name=data["name"],
        description=data.get("description", ""),
        connection=MarketoConnection(
            munchkin_id=connection["munchkin_id"],
            client_id=connection["client_id"],
            client_secret=client_secret,
            endpoint=connection.get("endpoint", ""),
        ),
        workspace=data.get("workspace", ""),
        sync_type=SyncType(data["sync_type"]) if data.get("sync_type") else None,
        partition=data.get("partition", ""),
        dedupe_field=data["dedupe_field"],
        person_action=PersonAction(data["person_action"]) if data.get("person_action") else None,
        alerts=AlertSubscription(
            types=tuple(alerts.get("types", ())),
            webhook_url=alerts.get("webhook_url", ""),
            webhook_secret=webhook_secret,
            failure_rate_threshold=alerts.get("failure_rate_threshold", 0.05),
            delivery_delay_threshold=timedelta(seconds=alerts.get("delivery_delay_seconds", 900)),
        ),
        marketing_actions=tuple(data.get("marketing_actions", ())),
        consent_path=data.get("consent_path", ""),
    )


def destination_record(row: Sequence[Any], box: SecretBox) -> DestinationRecord:
    """A destination row (`DESTINATION_COLUMNS`, or `NEW_DESTINATION_COLUMNS` without a state
    reason) with its secrets opened."""
    return DestinationRecord(
        id=row[0],
        tenant=row[1],
        name=row[2],
        spec=spec_from_json(
            json.loads(row[3]),
            client_secret=box.open(bytes(row[4])),
            webhook_secret=box.open(bytes(row[5])) if row[5] is not None else "",
        ),
        instance_key=row[6],
        state=DestinationState(row[7]),
        paused_until=from_micros(row[8]) if row[8] is not None else None,
        created_at=from_micros(row[9]),
        updated_at=from_micros(row[10]),
        mappings=loads_mappings(row[11]),
        version=row[12],
        state_reason=row[13] if len(row) > 13 else "",
    )


def dumps_mappings(mappings: Iterable[FieldMapping]) -> str:
    return dumps(
        [
            {
                "source": mapping.source,
                "target": mapping.target,
                "transform": mapping.transform,
                "options": dict(mapping.options),
                "labels": list(mapping.labels),
                "write": mapping.write.value,
            }
            for mapping in mappings
        ]
    )


def loads_mappings(text: str) -> tuple[FieldMapping, ...]:
    return tuple(
        FieldMapping(
            source=item["source"],
            target=item["target"],
            transform=item["transform"],
            options=item["options"],
            labels=tuple(item["labels"]),
            # rows stored before write policies have none: always
            write=WritePolicy(item.get("write", WritePolicy.ALWAYS)),
        )
        for item in json.loads(text)
    )


def outbox_entry(row: Sequence[Any]) -> OutboxEntry:
    payload = json.loads(row[6])
    update = ProfileUpdate(
        update_id=row[3],
        profile_id=row[4],
        event_time=from_micros(row[5]),
        profile=payload["p"],
        memberships=tuple(
            AudienceMembership(audience_id, MembershipStatus(status))
            for audience_id, status in payload["m"]
        ),
    )
    return OutboxEntry(
        sequence=row[0],
        destination_id=row[1],
        instance_key=row[2],
        update=update,
        enqueued_at=from_micros(row[8]),
        not_before=from_micros(row[9]),
        attempts=row[10],
        last_error=row[11],
        trace_context=row[7],
        payload_bytes=row[12],
    )


def outcome_record(row: Sequence[Any]) -> OutcomeRecord:
    outcome = Outcome(
        update_id=row[2],
        profile_id=row[3],
        dedupe_value=row[4],
        kind=OutcomeKind(row[7]),
        actions=tuple(
            Action(ActionType(action_type), audience_id)
            for action_type, audience_id in json.loads(row[8])
        ),
        lead_id=row[9],
        reason=row[10],
        marketo_code=row[11],
        exclusion_code=_exclusion_code(row[12]),
        field=row[13],
        kept_fields=tuple(json.loads(row[14])),
    )
    return OutcomeRecord(
        destination_id=row[1],
        outcome=outcome,
        event_time=from_micros(row[5]),
        recorded_at=from_micros(row[6]),
    )


def alert_record(row: Sequence[Any]) -> AlertRecord:
    return AlertRecord(
        id=row[0],
        destination_id=row[1],
        type=row[2],
        message=row[3],
        raised_at=from_micros(row[4]),
        resolved_at=from_micros(row[5]) if row[5] is not None else None,
        paused_until=from_micros(row[6]) if row[6] is not None else None,
    )


def pair_outcomes(
    entries: Sequence[OutboxEntry], outcomes: Sequence[Outcome]
) -> list[tuple[OutboxEntry, Outcome]]:
    if len(entries) != len(outcomes):
        raise ValueError(f"{len(entries)} entries but {len(outcomes)} outcomes")
    for entry, outcome in zip(entries, outcomes, strict=True):
        if entry.update.update_id != outcome.update_id:
            raise ValueError(
                f"outcome of {outcome.update_id!r} is paired with entry {entry.sequence} "
                f"of update {entry.update.update_id!r}"
            )
    return list(zip(entries, outcomes, strict=True))


def count_outcome(counts: Counts, outcome: Outcome) -> None:
    """Count one outcome: its kind, and the writes Marketo confirmed for it (an EXCLUDED
    outcome may carry removals: a refused consent removes the memberships held)."""
    if outcome.kind in (OutcomeKind.ACTIVATED, OutcomeKind.EXCLUDED):
        for action in outcome.actions:
            column = ACTION_COLUMN.get(action.type)
            if column is not None:
                setattr(counts, column, getattr(counts, column) + 1)
    if outcome.kind is OutcomeKind.ACTIVATED:
        counts.activated += 1
    elif outcome.kind is OutcomeKind.EXCLUDED:
        # By code and field, both from bounded sets: never by description, which would make a
        # counter per distinct text.
        counts.excluded += 1
        code = outcome.exclusion_code or ExclusionCode.UNKNOWN
        counts.reasons["excluded", code.value, outcome.field] += 1
    elif outcome.kind is OutcomeKind.FAILED:
        counts.failed += 1
        counts.reasons["failed", outcome.marketo_code or "unknown", ""] += 1
    else:
        counts.superseded += 1


def clamp_page_size(page_size: int) -> int:
    if page_size <= 0:
        return DEFAULT_PAGE_SIZE
    return min(page_size, MAX_PAGE_SIZE)


MAX_TOKEN_LENGTH = 1024
"""Longer page tokens are refused before decoding: the longest issued token is far shorter."""

DESTINATIONS_POSITION: tuple[type, ...] = (int, str)
"""A destinations page position: the last destination's creation time (µs) and id."""
OUTCOMES_POSITION: tuple[type, ...] = (int,)
"""An outcomes page position: the last outcome's id."""


def _scope_digest(scope: Sequence[str | None]) -> str:
    # Binds a token to the listing it came from (tenant, destination, filters) without
    # echoing those values back in the token.
    raw = json.dumps(list(scope)).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def encode_token(listing: str, scope: Sequence[str | None], position: list[Any]) -> str:
    """The opaque token of the page after `position` in `listing` within `scope`."""
    raw = dumps({"l": listing, "s": _scope_digest(scope), "p": position}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _valid_position(position: object, shape: tuple[type, ...]) -> TypeGuard[list[Any]]:
    if not isinstance(position, list) or len(position) != len(shape):
        return False
    for value, kind in zip(position, shape, strict=True):
        if type(value) is not kind:  # bool is an int, but not a position
            return False
        if isinstance(value, int) and not 0 <= value < 2**63:
            return False
        # The scope digest is no secret: a forger can issue a canonical token with any text.
        if isinstance(value, str) and (len(value) > 256 or "\x00" in value):
            return False
    return True


def decode_token(
    token: str, listing: str, scope: Sequence[str | None], shape: tuple[type, ...]
) -> list[Any] | None:
    """The position of a token issued by `encode_token` for this listing and scope; None for
    the first page; InvalidPageToken for anything else, however well formed."""
    if not token:
        return None
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidPageToken()
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw.decode())
    except (binascii.Error, ValueError, RecursionError):
        raise InvalidPageToken() from None
    if not isinstance(data, dict) or data.get("l") != listing:
        raise InvalidPageToken()
    position = data.get("p")
    if not _valid_position(position, shape):
        raise InvalidPageToken()
    try:
        issued = encode_token(listing, scope, position)
    except UnicodeEncodeError:
        raise InvalidPageToken() from None
    # Only the exact text this store issues: no other scope, padding, alphabet or spelling.
    if issued != token:
        raise InvalidPageToken()
    return position


def _exclusion_code(stored: str) -> ExclusionCode | None:
    if not stored:
        return None
    try:
        return ExclusionCode(stored)
    except ValueError:  # written by a newer version that knows more codes
        return ExclusionCode.UNKNOWN


def build_dataflow(
    destination_id: str,
    total: Mapping[str, int],
    reason_rows: Iterable[Sequence[Any]],
    by_hour: Mapping[int, Sequence[int]],
    pending: PendingStats,
    *,
    current: int,
    hours: Iterable[int],
    paused_until: datetime | None,
) -> Dataflow:
    """The `Dataflow` of a destination from its stored counters.

    `total`: lifetime counters by column; `reason_rows`: (kind, reason, field, count) rows as
    `REASON_TOTALS` reads them; `by_hour`:
    (received, activated, excluded, failed, superseded) per hour start; `hours`: the hour starts
    to report, newest first (empty hours are reported as zeros).
    """
    reasons: dict[str, dict[str, int]] = {"excluded": {}, "failed": {}}
    by_field: dict[tuple[str, str], int] = {}
    for kind, reason, field_name, count in reason_rows:
        reasons[kind][reason] = reasons[kind].get(reason, 0) + count
        if kind == "excluded" and field_name:
            by_field[reason, field_name] = by_field.get((reason, field_name), 0) + count
    runs = []
    for hour in hours:
        received, activated, excluded, failed, superseded = by_hour.get(hour, (0,) * 5)
        runs.append(
            DataflowRun(from_micros(hour), received, activated, excluded, failed, superseded)
        )
    oldest_age = (
        from_micros(current) - pending.oldest_enqueued_at
        if pending.oldest_enqueued_at is not None
        else None
    )
    return Dataflow(
        destination_id=destination_id,
        received=total["received"],
        activated=total["activated"],
        created=total["created"],
        updated=total["updated"],
        added=total["added"],
        removed=total["removed"],
        excluded=reasons["excluded"],
        excluded_by_field=by_field,
        failed=reasons["failed"],
        superseded=total["superseded"],
        duplicates=total["duplicates"],
        pending=pending.count,
        oldest_pending_age=oldest_age,
        runs=tuple(runs),
        paused_until=paused_until,
    )
