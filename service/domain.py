"""Domain types of the destination: plain frozen data, free of protobuf and HTTP.

The servicer converts protobuf messages into these (see `convert.py`); the sync engine, the store
and the plugins only ever see these.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

DEDUPE_TARGET = "DedupeField"
"""Mapping target that carries the deduplication identity."""

DEFAULT_PARTITION = "Default"
DEFAULT_CONSENT_PATH = "consents.marketing.any.val"
REQUIRED_FOR_CREATE = ("firstName", "lastName", "email")
"""Lead attributes Marketo needs mapped before the destination may create leads."""

FORBIDDEN_DEDUPE_FIELDS = frozenset({"id", "ecids"})
"""The Marketo lead id and ECID may not be the deduplication field."""


class SyncType(enum.StrEnum):
    AUDIENCE_AND_PROFILE = "audience_and_profile"
    PROFILE_ONLY = "profile_only"
    AUDIENCE_ONLY = "audience_only"


class PersonAction(enum.StrEnum):
    UPDATE_EXISTING_AND_CREATE_NEW = "update_existing_and_create_new"
    UPDATE_EXISTING_ONLY = "update_existing_only"


@dataclass(frozen=True, slots=True)
class SyncRules:
    """What a destination's sync type and person action allow (the seed's lead-matching table)."""

    sync_type: SyncType
    person_action: PersonAction | None
    dedupe_field: str
    partition: str | None = None
    consent_path: str = DEFAULT_CONSENT_PATH

    @property
    def writes_attributes(self) -> bool:
        """Profile only and Audience and profile update lead attributes."""
        return self.sync_type is not SyncType.AUDIENCE_ONLY

    @property
    def manages_lists(self) -> bool:
        """Audience only and Audience and profile keep audience static lists."""
        return self.sync_type is not SyncType.PROFILE_ONLY

    @property
    def creates_leads(self) -> bool:
        """Only the profile sync types with "update existing and create new" create leads."""
        return (
            self.writes_attributes
            and self.person_action is PersonAction.UPDATE_EXISTING_AND_CREATE_NEW
        )

    @property
    def create_partition(self) -> str:
        """Partition of new leads: the chosen one, else Default."""
        return self.partition or DEFAULT_PARTITION


class WritePolicy(enum.StrEnum):
    """When a mapped value is written to an existing lead (a created lead gets every non-empty
    mapped value)."""

    ALWAYS = "always"
    """Every update writes the value."""
    IF_EMPTY = "if_empty"
    """Written only while Marketo's value is empty; otherwise Marketo's value is kept."""
    NEVER_CLEAR = "never_clear"
    """An empty source value is not written: it never clears Marketo's value."""


def is_empty(value: Any) -> bool:
    """Whether a field value is empty: null, or text of white space only."""
    return value is None or (isinstance(value, str) and not value.strip())


def dedupe_key(value: str) -> str:
    """The key two dedupe values are the same person under: Marketo's look-up ignores case and
    surrounding white space. The planner groups by it and ListProfileOutcomes finds by it."""
    return value.strip().casefold()


@dataclass(frozen=True, slots=True)
class FieldMapping:
    """One mapping row: a profile path to a Marketo field (or `DedupeField`)."""

    source: str
    target: str
    transform: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)
    labels: tuple[str, ...] = ()
    write: WritePolicy = WritePolicy.ALWAYS


class MembershipStatus(enum.StrEnum):
    REALIZED = "realized"
    EXISTING = "existing"
    EXITED = "exited"

    @property
    def is_member(self) -> bool:
        return self is not MembershipStatus.EXITED


@dataclass(frozen=True, slots=True)
class AudienceMembership:
    audience_id: str
    status: MembershipStatus


@dataclass(frozen=True, slots=True)
class MembershipMark:
    """Desired state of one (profile, audience): the membership status last applied and the
    event time of the membership event that set it. Membership events are ordered against it:
    an older one for the same (profile, audience) is stale, whatever the profile's attributes."""

    status: MembershipStatus
    event_time: datetime


HOLDER_RESOLVED = -1
"""Holder of a membership applied before holders were recorded: the lead the profile resolves
to (its exit removes that lead)."""

CONSENT_REFUSALS = frozenset({"n", "dn"})
"""Consent values that refuse marketing (XDM's `n` and its default-no `dn`)."""


def is_refusal(value: Any) -> bool:
    """Whether a consent value refuses marketing (case and white space ignored)."""
    return isinstance(value, str) and value.strip().lower() in CONSENT_REFUSALS


def attributes_digest(fields: Mapping[str, Any]) -> str:
    """The sha256 of the canonical JSON of mapped attributes: what the store keeps of the
    attributes last applied (never the values, which are personal data)."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ProfileState:
    """Applied state of one profile at a destination: the dedupe value and the lead it resolved
    to at its last confirmed write (the binding), the digest of the mapped attributes last
    applied and whether its marketing consent is refused."""

    dedupe_value: str | None = None
    lead_id: int | None = None
    digest: str | None = None
    consent_refused: bool = False


@dataclass(frozen=True, slots=True)
class UnappliedAttributes:
    """A profile's newest attributes, not applied because it was a member of no activated
    audience when they came (its watermark moved to them all the same): once the profile is
    exported, an older update of it writes these instead of its own."""

    event_time: datetime
    profile: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class DesiredState:
    """A destination's stored state for the profiles of a batch.

    `watermarks`: event time of the attributes last applied per profile; `marks`: desired status
    per (profile, audience); `holders`: the lead holding each membership in Marketo
    (`HOLDER_RESOLVED` when applied before holders were recorded); `profiles`: applied state per
    profile. The facts still in the inbox are the pending part of the desired state.
    """

    watermarks: Mapping[str, datetime] = field(default_factory=dict)
    marks: Mapping[tuple[str, str], MembershipMark] = field(default_factory=dict)
    holders: Mapping[tuple[str, str], int] = field(default_factory=dict)
    profiles: Mapping[str, ProfileState] = field(default_factory=dict)
    forgotten: frozenset[str] = frozenset()
    """Profiles forgotten with ForgetProfile: their updates are excluded, never written."""
    unapplied: Mapping[str, UnappliedAttributes] = field(default_factory=dict)
    """Per profile, its newest attributes when they were not applied (see
    `UnappliedAttributes`)."""
    co_holders: Mapping[tuple[str, int], frozenset[str]] = field(default_factory=dict)
    """Per (audience id, lead id), the other profiles (not among those this state was read for)
    that want that lead in the audience's list: a member status, consent not refused, holding
    the lead there or, holding none, bound to it. Read for the leads the state's profiles hold
    or are bound to; an exit of those profiles leaves the lead in the list (the union). The
    engine reads those of a lead a look-up resolved to again (`SyncEngine(co_holders=...)`)."""
    unconfirmed: frozenset[tuple[str, str]] = frozenset()
    """The (profile, audience) pairs of `holders` recorded after a list call whose outcome is
    unknown: the lead may be in the list or not. It is removed like any holder; where the
    profile is a member it is added again rather than taken as present."""

    def for_resync(self, profile_ids: Collection[str]) -> DesiredState:
        """This state with what is applied to `profile_ids` taken as unknown: no attribute
        digest and their holders `unconfirmed`, so their desired state is written again
        (Resync): each desired membership is added again. The binding, the desired memberships
        and the holders stay: a holder that is not the lead the profile resolves to now (its
        dedupe value edited in Marketo) leaves the list as the membership moves."""
        if not profile_ids:
            return self
        return replace(
            self,
            profiles={
                pid: replace(state, digest=None) if pid in profile_ids else state
                for pid, state in self.profiles.items()
            },
            unconfirmed=self.unconfirmed
            | frozenset(pair for pair in self.holders if pair[0] in profile_ids),
        )


@dataclass(frozen=True, slots=True)
class ProfileUpdate:
    """One accepted profile change, as it is stored in the outbox."""

    update_id: str
    profile_id: str
    event_time: datetime
    profile: Mapping[str, Any]
    memberships: tuple[AudienceMembership, ...] = ()


UNDECODABLE = "undecodable"
"""The failure code of an update whose stored bytes cannot be decoded for delivery."""
UNSTORABLE = "unstorable"
"""The failure code of an update, or of its outcome, the store cannot hold as it is (a NUL
character in a string, which PostgreSQL's text refuses; Sync rejects such updates)."""
UPDATE_ID_REUSED = "update_id_reused"
"""The failure code of an update whose update_id was already used for different content."""


@dataclass(frozen=True, slots=True)
class UndecodableUpdate:
    """What could be read of an update whose stored bytes do not decode (a damaged inbox row:
    ingest only stores what decodes). It fails with `reason` instead of holding up the queue."""

    update_id: str
    profile_id: str
    event_time: datetime | None
    reason: str


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """An inbox batch read for delivery: the updates that decode, what could be read of those
    that do not, and `problem` when not even the batch could be split into updates."""

    updates: tuple[ProfileUpdate, ...]
    undecodable: tuple[UndecodableUpdate, ...] = ()
    problem: str = ""


class OutcomeKind(enum.StrEnum):
    ACTIVATED = "activated"
    EXCLUDED = "excluded"
    FAILED = "failed"
    SUPERSEDED = "superseded"


class ActionType(enum.StrEnum):
    """A write Marketo confirmed for an update (NOT_IN_LIST: an exit whose lead was not in the
    audience's list, so nothing was removed)."""

    CREATED = "created"
    UPDATED = "updated"
    ADDED = "added"
    REMOVED = "removed"
    NOT_IN_LIST = "not_in_list"


@dataclass(frozen=True, slots=True)
class Action:
    type: ActionType
    audience_id: str | None = None


class ExclusionCode(enum.StrEnum):
    """Why an update was excluded. A fixed set, so counts by code stay bounded, and no code
    ever carries a profile's value."""

    CONSENT_REFUSED = "consent_refused"
    """The profile refused marketing consent."""
    MISSING_DEDUPE_VALUE = "missing_dedupe_value"
    """The profile has no value for the deduplication field."""
    VALUE_REJECTED = "value_rejected"
    """A transform or the target field's data type refused a value."""
    TRANSFORM_FAILED = "transform_failed"
    """A transform raised an unexpected error or returned the wrong type (a plugin bug)."""
    NO_AUDIENCE = "no_audience"
    """The profile is not, or no longer, a member of any activated audience."""
    NO_MATCHING_LEAD = "no_matching_lead"
    """No lead matched and the rules do not create one."""
    MISSING_REQUIRED = "missing_required"
    """A lead would be created but an attribute Marketo needs is missing."""
    DEDUPE_VALUE_HAS_COMMA = "dedupe_value_has_comma"
    """The dedupe value holds a comma: Marketo's look-up splits its values on commas."""
    FORGOTTEN = "forgotten"
    """The profile was forgotten (ForgetProfile): nothing of it is written again."""
    UNKNOWN = "unknown"
    """Counted before exclusions had codes, under a reason that maps to none of the above."""


@dataclass(frozen=True, slots=True)
class Exclusion:
    """Why an update is excluded: a code, the Marketo field it concerns ("" when none; several
    required fields are joined with ","), and a description for the profile's outcome. None of
    them quotes a profile's value."""

    code: ExclusionCode
    field: str
    description: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one update; written in the transaction that retires it."""

    update_id: str
    profile_id: str
    dedupe_value: str | None
    kind: OutcomeKind
    actions: tuple[Action, ...] = ()
    lead_id: int | None = None
    reason: str = ""
    """A description (EXCLUDED: never quoting a profile's value; FAILED: Marketo's message)."""
    marketo_code: str = ""
    exclusion_code: ExclusionCode | None = None
    """Set on EXCLUDED outcomes: what `GetDataflow` counts them by."""
    field: str = ""
    """EXCLUDED: the Marketo field the exclusion concerns, "" when none."""
    kept_fields: tuple[str, ...] = ()
    """ACTIVATED: the Marketo fields whose value the mapping's write policy kept, sorted."""


@dataclass(frozen=True, slots=True)
class MappedProfile:
    """A profile mapped to Marketo fields.

    `fields` holds every mapped target by its Marketo REST name, already coerced to the field's
    data type, including the deduplication field under its own name when `dedupe_value` is set.
    """

    dedupe_value: str | None
    fields: Mapping[str, Any]


class MappingRejectedError(Exception):
    """A profile's value was refused by a transform or by the target field's data type.

    `reason` names the field and the check that refused, never the value itself (it becomes the
    profile's outcome description); `code` and `field` are what the dataflow counts.
    """

    def __init__(
        self,
        reason: str,
        *,
        code: ExclusionCode = ExclusionCode.VALUE_REJECTED,
        field: str = "",
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.field = field


class ProfileMapper(Protocol):
    """Maps one profile through a destination's field mapping."""

    def map_profile(self, profile: Mapping[str, Any]) -> MappedProfile:
        """Return the mapped profile, or raise MappingRejectedError naming the field and why."""
        ...


class MissingDedupeValueError(MappingRejectedError):
    """The profile has no value for the `DedupeField` mapping: excluded as "no dedupe value".

    Mappers may raise this, or return a `MappedProfile` whose `dedupe_value` is None.
    """

    def __init__(self, reason: str, *, field: str = "") -> None:
        super().__init__(reason, code=ExclusionCode.MISSING_DEDUPE_VALUE, field=field)


@dataclass(frozen=True, slots=True)
class MarketoConnection:
    """How to reach one Marketo instance (a LaunchPoint custom service)."""

    munchkin_id: str
    client_id: str
    client_secret: str = field(default="", repr=False)
    endpoint: str = ""


@dataclass(frozen=True, slots=True)
class MarketoCalls:
    """Today's API calls of a Marketo instance (Marketo's day, America/Chicago) as this process
    knows them: its own and, from Marketo's Usage API, the instance's other integrations'."""

    ours: int
    others: int
    remaining: int
    """Calls this process may still make today (daily quota - reserve - ours - others, >= 0)."""
    usage_read_at: datetime | None
    """When the Usage API was last read; None before the first reading of the day."""


@dataclass(frozen=True, slots=True)
class AlertSubscription:
    """Which dataflow alerts a destination raises, and where they are delivered."""

    types: tuple[str, ...] = ()
    """Alert types (`AlertType` values); empty means every type."""
    webhook_url: str = ""
    webhook_secret: str = field(default="", repr=False)
    failure_rate_threshold: float = 0.05
    delivery_delay_threshold: timedelta = timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class DestinationSpec:
    """What a caller configures on a destination (PRODUCT.md "Destination details")."""

    name: str
    connection: MarketoConnection
    sync_type: SyncType | None
    dedupe_field: str
    person_action: PersonAction | None = None
    description: str = ""
    workspace: str = ""
    partition: str = ""
    alerts: AlertSubscription = field(default_factory=AlertSubscription)
    marketing_actions: tuple[str, ...] = ()
    consent_path: str = ""

    @property
    def workspace_name(self) -> str:
        return self.workspace or "Default"

    def rules(self) -> SyncRules:
        """The sync rules of a validated spec."""
        assert self.sync_type is not None
        return SyncRules(
            sync_type=self.sync_type,
            person_action=self.person_action,
            dedupe_field=self.dedupe_field,
            partition=self.partition or None,
            consent_path=self.consent_path or DEFAULT_CONSENT_PATH,
        )


class AudienceType(enum.StrEnum):
    PEOPLE = "people"
    ACCOUNT = "account"
    PROSPECT = "prospect"
    DATASET = "dataset"


@dataclass(frozen=True, slots=True)
class Audience:
    """An audience to activate on a destination."""

    id: str
    name: str = ""
    origin: str = ""
    type: AudienceType = AudienceType.PEOPLE
    marketo_list_id: int = 0
    link_existing_list: bool = False


# -- what the use cases answer, and why they refuse a request -----------------------------------


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field of a request."""

    field: str
    """Path of the field in the request, e.g. ``"spec.connection.munchkin_id"``."""
    description: str
    """Why the value is refused, in words a caller can act on."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """An update of a request refused alone (`index` in the request), the others accepted."""

    index: int
    violations: tuple[FieldViolation, ...]


@dataclass(frozen=True, slots=True)
class SyncAck:
    """What Sync answers for one request: how many updates are durable, up to which sequence."""

    accepted: int
    last_sequence: int
    rejected: tuple[Rejected, ...] = field(default=())


class ListAction(enum.StrEnum):
    """What Activate did (or, in a dry run, would do) with an audience's Marketo list."""

    CREATED = "created"
    LINKED = "linked"
    UNCHANGED = "unchanged"
    NONE = ""
    """Profile only: audiences scope the export but get no list."""


@dataclass(frozen=True, slots=True)
class ActivatedAudience:
    """An audience as Activate left it, with its Marketo list."""

    audience_id: str
    marketo_list_id: int
    list_name: str
    list_action: ListAction


@dataclass(frozen=True, slots=True)
class AudienceChanges:
    """List changes a dry run would make for one audience (dedupe values)."""

    audience_id: str
    list_id: int
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PreviewResult:
    """What PreviewSync shows: what delivering the updates now would do in Marketo."""

    created: int
    updated: int
    audiences: tuple[AudienceChanges, ...]
    outcomes: tuple[Outcome, ...]
    """One per previewed update, in request order."""
    rejected: tuple[Rejected, ...]


@dataclass(frozen=True, slots=True)
class ResyncEstimate:
    """What a Resync does (or, in a dry run, would do)."""

    profiles: int
    """Profiles resynced: those with a kept update, not forgotten."""
    calls: int
    """Marketo calls estimated from the dispatcher's planner."""
    seconds: float
    """Time those calls take at the instance's call allowance."""
    share_of_daily_quota: float
    """Share of the calls the instance may still make today (above 1: does not fit)."""


@dataclass(frozen=True, slots=True)
class DesiredMember:
    """A current member of an audience at a destination, as its desired state holds it: the
    lead holding its membership in Marketo (None: none yet; `HOLDER_RESOLVED`: the bound lead)
    and the lead the profile is bound to."""

    profile_id: str
    holder: int | None
    bound_lead: int | None
    dedupe_value: str | None = None

    @property
    def lead(self) -> int | None:
        """The lead that should be in the list: the holder, else the bound lead."""
        if self.holder is not None and self.holder != HOLDER_RESOLVED:
            return self.holder
        return self.bound_lead


@dataclass(frozen=True, slots=True)
class ListDrift:
    """What reconciling one audience's list found and did."""

    audience_id: str
    marketo_list_id: int
    missing: int = 0
    """Desired members none of whose leads is in the list."""
    unexpected: int = 0
    """Members of the list that no desired membership holds."""
    added: int = 0
    removed: int = 0
    recreated: bool = False
    """The list was gone from Marketo and was (or, in a dry run, would be) created again."""

    @property
    def found(self) -> int:
        """Drift found: missing plus unexpected."""
        return self.missing + self.unexpected

    @property
    def repaired(self) -> int:
        """Drift repaired: added plus removed."""
        return self.added + self.removed


@dataclass(frozen=True, slots=True)
class ListReconciliation:
    """The last reconciliation of one audience's list (what GetDataflow shows per list)."""

    audience_id: str
    marketo_list_id: int
    reconciled_at: datetime
    drift_found: int
    drift_repaired: int


class AlertType(enum.StrEnum):
    """The kinds of alert a destination raises."""

    SKIPPED_RATE = "skipped_rate"
    FAILURE_RATE = "failure_rate"
    DELIVERY_DELAYED = "delivery_delayed"
    QUOTA_EXHAUSTED = "quota_exhausted"
    AUTHENTICATION_FAILING = "authentication_failing"
    SCHEMA_MISMATCH = "schema_mismatch"
    DRIFT = "drift"


class AlertState(enum.StrEnum):
    """Whether an alert event raises or resolves its alert."""

    RAISED = "raised"
    RESOLVED = "resolved"
