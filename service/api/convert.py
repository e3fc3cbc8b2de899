"""Protobuf <-> domain conversion of the RPCs' requests and answers (with the servicer, the
only code that touches `_proto`; Sync's checks are `sync_checks`, the inbox's encoding is
`inbox_codec`).

Conversions of caller input validate as they go and report problems as field violations
(`FieldViolation(field, description)`) so one answer can name every bad field at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from service.api.enums import (
    ACTION_TYPE,
    ALERT_TYPE,
    AUDIENCE_TYPE,
    DESTINATION_STATE,
    LIST_ACTION,
    OUTCOME_KIND,
    PERSON_ACTION,
    SYNC_TYPE,
    WRITE_POLICY,
)
from service.api.inbox_codec import decode_update
from service.api.sync_checks import MAX_CLOCK_SKEW, NUL, NUL_PROBLEM, check_update, event_time_limit
from service.domain import (
    ActivatedAudience,
    AlertState,
    AlertSubscription,
    Audience,
    AudienceType,
    DestinationSpec,
    FieldMapping,
    FieldViolation,
    ListDrift,
    MarketoConnection,
    Outcome,
    PreviewResult,
    ProfileUpdate,
    Rejected,
    SyncAck,
    WritePolicy,
)
from service.errors import InvalidArgument
from service.marketo.types import InstanceDescription
from service.store.base import (
    ActivationRecord,
    Dataflow,
    Destination,
    OutcomeRecord,
)
from service.usecases.alerts import AlertEvent
from service.usecases.ingest import IndexedUpdate


def timestamp(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    if moment is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def duration(delta: timedelta) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromTimedelta(delta)
    return value


# -- destinations -------------------------------------------------------------------------------


def destination_id(value: str) -> str:
    """The destination_id of a request about one destination; raise InvalidArgument when it is
    empty or holds a NUL character, which no id has (PostgreSQL's text cannot even be asked for
    one). Configure and DescribeMarketo, where it is optional, do not call this."""
    if not value:
        raise InvalidArgument([FieldViolation("destination_id", "is required")])
    if NUL in value:
        raise InvalidArgument([FieldViolation("destination_id", NUL_PROBLEM)])
    return value


def destination_spec(message: pb.DestinationSpec) -> DestinationSpec:
    """Convert a spec; raise InvalidArgument for enum values this version does not know."""
    violations: list[FieldViolation] = []
    sync_type = SYNC_TYPE.decode(message.sync_type, "spec.sync_type", violations)
    person_action = PERSON_ACTION.decode(message.person_action, "spec.person_action", violations)
    alerts = message.alerts
    types = []
    for index, value in enumerate(alerts.types):
        alert_type = ALERT_TYPE.decode(value, f"spec.alerts.types[{index}]", violations)
        if alert_type is None and value == 0:
            violations.append(FieldViolation(f"spec.alerts.types[{index}]", "must be set"))
        elif alert_type is not None:
            types.append(alert_type)
    delay = timedelta(minutes=15)
    if alerts.HasField("delivery_delay_threshold"):
        try:
            delay = alerts.delivery_delay_threshold.ToTimedelta()
        except (ValueError, OverflowError):
            violations.append(
                FieldViolation("spec.alerts.delivery_delay_threshold", "is not a valid duration")
            )
    if violations:
        raise InvalidArgument(violations)
    return DestinationSpec(
        name=message.name,
        description=message.description,
        connection=marketo_connection(message.connection),
        workspace=message.workspace,
        sync_type=sync_type,
        partition=message.partition,
        dedupe_field=message.dedupe_field,
        person_action=person_action,
        alerts=AlertSubscription(
            types=tuple(types),
            webhook_url=alerts.webhook_url,
            webhook_secret=alerts.webhook_secret,
            failure_rate_threshold=alerts.failure_rate_threshold or 0.05,
            delivery_delay_threshold=delay,
        ),
        marketing_actions=tuple(message.marketing_actions),
        consent_path=message.consent_path,
    )


def _spec_pb(spec: DestinationSpec) -> pb.DestinationSpec:
    """The spec as callers see it: secrets always empty."""
    alerts = spec.alerts
    return pb.DestinationSpec(
        name=spec.name,
        description=spec.description,
        connection=pb.MarketoConnection(
            munchkin_id=spec.connection.munchkin_id,
            client_id=spec.connection.client_id,
            endpoint=spec.connection.endpoint,
        ),
        workspace=spec.workspace,
        sync_type=SYNC_TYPE.encode(spec.sync_type),
        partition=spec.partition,
        dedupe_field=spec.dedupe_field,
        person_action=PERSON_ACTION.encode(spec.person_action),
        alerts=pb.AlertSubscription(
            types=[ALERT_TYPE.encode(t) for t in alerts.types],
            webhook_url=alerts.webhook_url,
            failure_rate_threshold=alerts.failure_rate_threshold,
            delivery_delay_threshold=duration(alerts.delivery_delay_threshold),
        ),
        marketing_actions=list(spec.marketing_actions),
        consent_path=spec.consent_path,
    )


def mapping_pb(mapping: FieldMapping) -> pb.FieldMapping:
    return pb.FieldMapping(
        source=mapping.source,
        target=mapping.target,
        transform=mapping.transform or "",
        options=dict(mapping.options),
        labels=list(mapping.labels),
        write_policy=WRITE_POLICY.encode(mapping.write),
    )


def destination_pb(
    destination: Destination, activations: Sequence[ActivationRecord] = ()
) -> pb.Destination:
    record = destination.record
    return pb.Destination(
        id=record.id,
        spec=_spec_pb(destination.spec),
        client_secret_set=bool(record.spec.connection.client_secret),
        state=DESTINATION_STATE.encode(record.state),
        state_reason=record.state_reason,
        paused_until=timestamp(record.paused_until),
        create_time=timestamp(record.created_at) if record.id else None,
        update_time=timestamp(record.updated_at) if record.id else None,
        audiences=[
            pb.ActivatedAudience(
                audience_id=a.audience_id,
                marketo_list_id=a.marketo_list_id,
                list_name=a.list_name,
            )
            for a in activations
            if a.active
        ],
        mappings=[mapping_pb(m) for m in record.mappings],
    )


def instance_description_pb(description: InstanceDescription) -> pb.DescribeMarketoResponse:
    return pb.DescribeMarketoResponse(
        workspaces=[pb.Workspace(id=w.id, name=w.name) for w in description.workspaces],
        partitions=[
            pb.Partition(id=p.id, name=p.name, description=p.description)
            for p in description.partitions
        ],
        dedupe_fields=list(description.dedupe_fields),
        fields=[
            pb.MarketoField(
                name=f.name,
                display_name=f.display_name,
                data_type=f.data_type,
                length=f.length or 0,
                updateable=f.updateable,
                searchable=f.name in description.searchable,
            )
            for f in description.fields
            if f.updateable
        ],
    )


# -- activation ---------------------------------------------------------------------------------


def audience(message: pb.Audience, index: int) -> Audience:
    violations: list[FieldViolation] = []
    audience_type = AUDIENCE_TYPE.decode(message.type, f"audiences[{index}].type", violations)
    if violations:
        raise InvalidArgument(violations)
    return Audience(
        id=message.id,
        name=message.name,
        origin=message.origin,
        type=audience_type or AudienceType.PEOPLE,
        marketo_list_id=message.marketo_list_id,
        link_existing_list=message.link_existing_list,
    )


def field_mapping(message: pb.FieldMapping, index: int) -> FieldMapping:
    """Convert a mapping row; raise InvalidArgument for a write policy this version does not
    know."""
    violations: list[FieldViolation] = []
    field = f"mappings[{index}].write_policy"
    write = WRITE_POLICY.decode(message.write_policy, field, violations)
    if violations:
        raise InvalidArgument(violations)
    return FieldMapping(
        source=message.source.strip(),
        target=message.target.strip(),
        transform=message.transform.strip() or None,
        options=dict(message.options),
        labels=tuple(message.labels),
        write=write or WritePolicy.ALWAYS,
    )


def activated_audience_pb(activated: ActivatedAudience) -> pb.ActivatedAudience:
    return pb.ActivatedAudience(
        audience_id=activated.audience_id,
        marketo_list_id=activated.marketo_list_id,
        list_name=activated.list_name,
        list_action=LIST_ACTION.encode(activated.list_action),
    )


# -- sync and preview ---------------------------------------------------------------------------


def updates(
    messages: Sequence[pb.ProfileUpdate], now: datetime, max_skew: timedelta = MAX_CLOCK_SKEW
) -> tuple[list[IndexedUpdate], list[Rejected]]:
    """Convert every update of a PreviewSync request; each bad one becomes a rejection of its
    own."""
    good: list[IndexedUpdate] = []
    bad: list[Rejected] = []
    for index, message in enumerate(messages):
        converted = profile_update(message, prefix=f"updates[{index}]", now=now, max_skew=max_skew)
        if isinstance(converted, ProfileUpdate):
            good.append(IndexedUpdate(index, converted))
        else:
            bad.append(Rejected(index, tuple(converted)))
    return good, bad


def profile_update(
    message: pb.ProfileUpdate, *, prefix: str, now: datetime, max_skew: timedelta = MAX_CLOCK_SKEW
) -> ProfileUpdate | list[FieldViolation]:
    """Convert and validate one update; return its violations instead when it is bad."""
    limit = event_time_limit(now, max_skew)
    violations = check_update(message, prefix=prefix, event_time_limit=limit)
    return violations or decode_update(message)


def rejection(violations: Sequence[FieldViolation], index: int) -> pb.Rejection:
    """One Rejection for an update, naming its first bad field and listing every problem."""
    reason = "; ".join(f"{v.field} {v.description}" for v in violations)
    return pb.Rejection(index=index, reason=reason, field=violations[0].field)


def _rejections(*groups: Sequence[Rejected]) -> list[pb.Rejection]:
    """Rejections of conversion and of the use case, merged in request order."""
    every = sorted((r for group in groups for r in group), key=lambda r: r.index)
    return [rejection(r.violations, r.index) for r in every]


def preview_pb(preview: PreviewResult, rejected: Sequence[Rejected]) -> pb.PreviewSyncResponse:
    return pb.PreviewSyncResponse(
        created=preview.created,
        updated=preview.updated,
        audiences=[
            pb.PreviewAudience(
                audience_id=change.audience_id, added=len(change.add), removed=len(change.remove)
            )
            for change in preview.audiences
        ],
        outcomes=[
            pb.PreviewOutcome(profile_id=o.profile_id, outcome=_outcome_pb(o))
            for o in preview.outcomes
        ],
        rejected=_rejections(rejected, preview.rejected),
    )


def marketo_connection(message: pb.MarketoConnection) -> MarketoConnection:
    return MarketoConnection(
        munchkin_id=message.munchkin_id.strip(),
        client_id=message.client_id,
        client_secret=message.client_secret,
        endpoint=message.endpoint.strip(),
    )


def sync_response(request_id: str, ack: SyncAck, rejected: Sequence[Rejected]) -> pb.SyncResponse:
    return pb.SyncResponse(
        accepted=ack.accepted,
        rejected=_rejections(rejected, ack.rejected),
        request_id=request_id,
        ack_sequence=ack.last_sequence,
    )


# -- observe ------------------------------------------------------------------------------------


def outcome_pb(record: OutcomeRecord) -> pb.ProfileOutcome:
    message = _outcome_pb(record.outcome)
    message.event_time.FromDatetime(record.event_time.astimezone(UTC))
    message.outcome_time.FromDatetime(record.recorded_at.astimezone(UTC))
    return message


def _outcome_pb(outcome: Outcome) -> pb.ProfileOutcome:
    return pb.ProfileOutcome(
        profile_id=outcome.profile_id,
        dedupe_value=outcome.dedupe_value or "",
        kind=OUTCOME_KIND.encode(outcome.kind),
        actions=[
            pb.Action(type=ACTION_TYPE.encode(a.type), audience_id=a.audience_id or "")
            for a in outcome.actions
        ],
        lead_id=outcome.lead_id or 0,
        reason=outcome.reason,
        marketo_code=outcome.marketo_code,
        update_id=outcome.update_id,
        exclusion_code=outcome.exclusion_code.value if outcome.exclusion_code else "",
        field=outcome.field,
        kept_fields=list(outcome.kept_fields),
    )


def dataflow_pb(flow: Dataflow) -> pb.Dataflow:
    return pb.Dataflow(
        destination_id=flow.destination_id,
        received=flow.received,
        activated=pb.ActivatedCounts(
            created=flow.created, updated=flow.updated, added=flow.added, removed=flow.removed
        ),
        excluded=dict(flow.excluded),
        failed=dict(flow.failed),
        pending=flow.pending,
        oldest_pending_age=duration(flow.oldest_pending_age or timedelta(0)),
        runs=[
            pb.DataflowRun(
                start_time=timestamp(run.start),
                received=run.received,
                activated=run.activated,
                excluded=run.excluded,
                failed=run.failed,
                skipped_rate=run.skipped_rate,
            )
            for run in flow.runs
        ],
        superseded=flow.superseded,
        duplicates=flow.duplicates,
        paused_until=timestamp(flow.paused_until),
        excluded_by_field=[
            pb.ExclusionCount(code=code, field=field, count=count)
            for (code, field), count in sorted(flow.excluded_by_field.items())
        ],
        state=DESTINATION_STATE.encode(flow.state),
        state_reason=flow.state_reason,
        marketo_calls=None
        if flow.marketo_calls is None
        else pb.MarketoCalls(
            ours=flow.marketo_calls.ours,
            others=flow.marketo_calls.others,
            remaining=flow.marketo_calls.remaining,
            usage_read_at=timestamp(flow.marketo_calls.usage_read_at),
        ),
        lists=[
            pb.ListReconciliation(
                audience_id=row.audience_id,
                marketo_list_id=row.marketo_list_id,
                reconciled_at=timestamp(row.reconciled_at),
                drift_found=row.drift_found,
                drift_repaired=row.drift_repaired,
            )
            for row in flow.lists
        ],
    )


def alert_event_pb(event: AlertEvent) -> pb.Alert:
    alert = event.alert
    return pb.Alert(
        id=alert.id,
        destination_id=alert.destination_id,
        type=ALERT_TYPE.encode(alert.type),
        message=alert.message,
        raise_time=timestamp(alert.raised_at),
        resolved=event.state is AlertState.RESOLVED,
        paused_until=timestamp(alert.paused_until),
    )


def list_drift_pb(drift: ListDrift) -> pb.ListDrift:
    return pb.ListDrift(
        audience_id=drift.audience_id,
        marketo_list_id=drift.marketo_list_id,
        missing=drift.missing,
        unexpected=drift.unexpected,
        added=drift.added,
        removed=drift.removed,
        recreated=drift.recreated,
    )
