import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SyncType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SYNC_TYPE_UNSPECIFIED: _ClassVar[SyncType]
    SYNC_TYPE_AUDIENCE_AND_PROFILE: _ClassVar[SyncType]
    SYNC_TYPE_PROFILE_ONLY: _ClassVar[SyncType]
    SYNC_TYPE_AUDIENCE_ONLY: _ClassVar[SyncType]

class PersonAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PERSON_ACTION_UNSPECIFIED: _ClassVar[PersonAction]
    PERSON_ACTION_UPDATE_EXISTING_AND_CREATE_NEW: _ClassVar[PersonAction]
    PERSON_ACTION_UPDATE_EXISTING_ONLY: _ClassVar[PersonAction]

class DestinationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DESTINATION_STATE_UNSPECIFIED: _ClassVar[DestinationState]
    DESTINATION_STATE_ACTIVE: _ClassVar[DestinationState]
    DESTINATION_STATE_QUOTA_PAUSED: _ClassVar[DestinationState]
    DESTINATION_STATE_AUTH_FAILING: _ClassVar[DestinationState]
    DESTINATION_STATE_SCHEMA_PAUSED: _ClassVar[DestinationState]

class AudienceType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIENCE_TYPE_UNSPECIFIED: _ClassVar[AudienceType]
    AUDIENCE_TYPE_PEOPLE: _ClassVar[AudienceType]
    AUDIENCE_TYPE_ACCOUNT: _ClassVar[AudienceType]
    AUDIENCE_TYPE_PROSPECT: _ClassVar[AudienceType]
    AUDIENCE_TYPE_DATASET: _ClassVar[AudienceType]

class WritePolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WRITE_POLICY_UNSPECIFIED: _ClassVar[WritePolicy]
    WRITE_POLICY_ALWAYS: _ClassVar[WritePolicy]
    WRITE_POLICY_IF_EMPTY: _ClassVar[WritePolicy]
    WRITE_POLICY_NEVER_CLEAR: _ClassVar[WritePolicy]

class ListAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LIST_ACTION_UNSPECIFIED: _ClassVar[ListAction]
    LIST_ACTION_CREATED: _ClassVar[ListAction]
    LIST_ACTION_LINKED: _ClassVar[ListAction]
    LIST_ACTION_UNCHANGED: _ClassVar[ListAction]

class MembershipStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MEMBERSHIP_STATUS_UNSPECIFIED: _ClassVar[MembershipStatus]
    MEMBERSHIP_STATUS_REALIZED: _ClassVar[MembershipStatus]
    MEMBERSHIP_STATUS_EXISTING: _ClassVar[MembershipStatus]
    MEMBERSHIP_STATUS_EXITED: _ClassVar[MembershipStatus]

class OutcomeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_KIND_UNSPECIFIED: _ClassVar[OutcomeKind]
    OUTCOME_KIND_ACTIVATED: _ClassVar[OutcomeKind]
    OUTCOME_KIND_EXCLUDED: _ClassVar[OutcomeKind]
    OUTCOME_KIND_FAILED: _ClassVar[OutcomeKind]
    OUTCOME_KIND_SUPERSEDED: _ClassVar[OutcomeKind]
    OUTCOME_KIND_PENDING: _ClassVar[OutcomeKind]

class ActionType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_TYPE_UNSPECIFIED: _ClassVar[ActionType]
    ACTION_TYPE_CREATED: _ClassVar[ActionType]
    ACTION_TYPE_UPDATED: _ClassVar[ActionType]
    ACTION_TYPE_ADDED: _ClassVar[ActionType]
    ACTION_TYPE_REMOVED: _ClassVar[ActionType]
    ACTION_TYPE_NOT_IN_LIST: _ClassVar[ActionType]

class AlertType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALERT_TYPE_UNSPECIFIED: _ClassVar[AlertType]
    ALERT_TYPE_SKIPPED_RATE: _ClassVar[AlertType]
    ALERT_TYPE_FAILURE_RATE: _ClassVar[AlertType]
    ALERT_TYPE_DELIVERY_DELAYED: _ClassVar[AlertType]
    ALERT_TYPE_QUOTA_EXHAUSTED: _ClassVar[AlertType]
    ALERT_TYPE_AUTHENTICATION_FAILING: _ClassVar[AlertType]
    ALERT_TYPE_SCHEMA_MISMATCH: _ClassVar[AlertType]
    ALERT_TYPE_DRIFT: _ClassVar[AlertType]
SYNC_TYPE_UNSPECIFIED: SyncType
SYNC_TYPE_AUDIENCE_AND_PROFILE: SyncType
SYNC_TYPE_PROFILE_ONLY: SyncType
SYNC_TYPE_AUDIENCE_ONLY: SyncType
PERSON_ACTION_UNSPECIFIED: PersonAction
PERSON_ACTION_UPDATE_EXISTING_AND_CREATE_NEW: PersonAction
PERSON_ACTION_UPDATE_EXISTING_ONLY: PersonAction
DESTINATION_STATE_UNSPECIFIED: DestinationState
DESTINATION_STATE_ACTIVE: DestinationState
DESTINATION_STATE_QUOTA_PAUSED: DestinationState
DESTINATION_STATE_AUTH_FAILING: DestinationState
DESTINATION_STATE_SCHEMA_PAUSED: DestinationState
AUDIENCE_TYPE_UNSPECIFIED: AudienceType
AUDIENCE_TYPE_PEOPLE: AudienceType
AUDIENCE_TYPE_ACCOUNT: AudienceType
AUDIENCE_TYPE_PROSPECT: AudienceType
AUDIENCE_TYPE_DATASET: AudienceType
WRITE_POLICY_UNSPECIFIED: WritePolicy
WRITE_POLICY_ALWAYS: WritePolicy
WRITE_POLICY_IF_EMPTY: WritePolicy
WRITE_POLICY_NEVER_CLEAR: WritePolicy
LIST_ACTION_UNSPECIFIED: ListAction
LIST_ACTION_CREATED: ListAction
LIST_ACTION_LINKED: ListAction
LIST_ACTION_UNCHANGED: ListAction
MEMBERSHIP_STATUS_UNSPECIFIED: MembershipStatus
MEMBERSHIP_STATUS_REALIZED: MembershipStatus
MEMBERSHIP_STATUS_EXISTING: MembershipStatus
MEMBERSHIP_STATUS_EXITED: MembershipStatus
OUTCOME_KIND_UNSPECIFIED: OutcomeKind
OUTCOME_KIND_ACTIVATED: OutcomeKind
OUTCOME_KIND_EXCLUDED: OutcomeKind
OUTCOME_KIND_FAILED: OutcomeKind
OUTCOME_KIND_SUPERSEDED: OutcomeKind
OUTCOME_KIND_PENDING: OutcomeKind
ACTION_TYPE_UNSPECIFIED: ActionType
ACTION_TYPE_CREATED: ActionType
ACTION_TYPE_UPDATED: ActionType
ACTION_TYPE_ADDED: ActionType
ACTION_TYPE_REMOVED: ActionType
ACTION_TYPE_NOT_IN_LIST: ActionType
ALERT_TYPE_UNSPECIFIED: AlertType
ALERT_TYPE_SKIPPED_RATE: AlertType
ALERT_TYPE_FAILURE_RATE: AlertType
ALERT_TYPE_DELIVERY_DELAYED: AlertType
ALERT_TYPE_QUOTA_EXHAUSTED: AlertType
ALERT_TYPE_AUTHENTICATION_FAILING: AlertType
ALERT_TYPE_SCHEMA_MISMATCH: AlertType
ALERT_TYPE_DRIFT: AlertType

class MarketoConnection(_message.Message):
    __slots__ = ("munchkin_id", "client_id", "client_secret", "endpoint")
    MUNCHKIN_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_SECRET_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    munchkin_id: str
    client_id: str
    client_secret: str
    endpoint: str
    def __init__(self, munchkin_id: _Optional[str] = ..., client_id: _Optional[str] = ..., client_secret: _Optional[str] = ..., endpoint: _Optional[str] = ...) -> None: ...

class AlertSubscription(_message.Message):
    __slots__ = ("types", "webhook_url", "webhook_secret", "failure_rate_threshold", "delivery_delay_threshold")
    TYPES_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_URL_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_SECRET_FIELD_NUMBER: _ClassVar[int]
    FAILURE_RATE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_DELAY_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    types: _containers.RepeatedScalarFieldContainer[AlertType]
    webhook_url: str
    webhook_secret: str
    failure_rate_threshold: float
    delivery_delay_threshold: _duration_pb2.Duration
    def __init__(self, types: _Optional[_Iterable[_Union[AlertType, str]]] = ..., webhook_url: _Optional[str] = ..., webhook_secret: _Optional[str] = ..., failure_rate_threshold: _Optional[float] = ..., delivery_delay_threshold: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class DestinationSpec(_message.Message):
    __slots__ = ("name", "description", "connection", "workspace", "sync_type", "partition", "dedupe_field", "person_action", "alerts", "marketing_actions", "consent_path")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_FIELD_NUMBER: _ClassVar[int]
    SYNC_TYPE_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    DEDUPE_FIELD_FIELD_NUMBER: _ClassVar[int]
    PERSON_ACTION_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    MARKETING_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    CONSENT_PATH_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    connection: MarketoConnection
    workspace: str
    sync_type: SyncType
    partition: str
    dedupe_field: str
    person_action: PersonAction
    alerts: AlertSubscription
    marketing_actions: _containers.RepeatedScalarFieldContainer[str]
    consent_path: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., connection: _Optional[_Union[MarketoConnection, _Mapping]] = ..., workspace: _Optional[str] = ..., sync_type: _Optional[_Union[SyncType, str]] = ..., partition: _Optional[str] = ..., dedupe_field: _Optional[str] = ..., person_action: _Optional[_Union[PersonAction, str]] = ..., alerts: _Optional[_Union[AlertSubscription, _Mapping]] = ..., marketing_actions: _Optional[_Iterable[str]] = ..., consent_path: _Optional[str] = ...) -> None: ...

class Destination(_message.Message):
    __slots__ = ("id", "spec", "client_secret_set", "state", "paused_until", "create_time", "update_time", "audiences", "mappings", "state_reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CLIENT_SECRET_SET_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAUSED_UNTIL_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    MAPPINGS_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: DestinationSpec
    client_secret_set: bool
    state: DestinationState
    paused_until: _timestamp_pb2.Timestamp
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    audiences: _containers.RepeatedCompositeFieldContainer[ActivatedAudience]
    mappings: _containers.RepeatedCompositeFieldContainer[FieldMapping]
    state_reason: str
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[DestinationSpec, _Mapping]] = ..., client_secret_set: _Optional[bool] = ..., state: _Optional[_Union[DestinationState, str]] = ..., paused_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., audiences: _Optional[_Iterable[_Union[ActivatedAudience, _Mapping]]] = ..., mappings: _Optional[_Iterable[_Union[FieldMapping, _Mapping]]] = ..., state_reason: _Optional[str] = ...) -> None: ...

class ConfigureRequest(_message.Message):
    __slots__ = ("destination_id", "spec", "validate_only")
    DESTINATION_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    destination_id: str
    spec: DestinationSpec
    validate_only: bool
    def __init__(self, destination_id: _Optional[str] = ..., spec: _Optional[_Union[DestinationSpec, _Mapping]] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class ConfigureResponse(_message.Message):
    __slots__ = ("destination",)
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    destination: Destination
    def __init__(self, destination: _Optional[_Union[Destination, _Mapping]] = ...) -> None: ...

class GetDestinationRequest(_message.Message):
    __slots__ = ("destination_id",)
    DESTINATION_ID_FIELD_NUMBER: _ClassVar[int]
    destination_id: str
    def __init__(self, destination_id: _Optional[str] = ...) -> None: ...

class GetDestinationResponse(_message.Message):
    __slots__ = ("destination",)
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    destination: Destination
    def __init__(self, destination: _Optional[_Union[Destination, _Mapping]] = ...) -> None: ...

class ListDestinationsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDestinationsResponse(_message.Message):
    __slots__ = ("destinations", "next_page_token")
    DESTINATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    destinations: _containers.RepeatedCompositeFieldContainer[Destination]
    next_page_token: str
    def __init__(self, destinations: _Optional[_Iterable[_Union[Destination, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteDestinationRequest(_message.Message):
    __slots__ = ("destination_id",)
    DESTINATION_ID_FIELD_NUMBER: _ClassVar[int]
    destination_id: str
    def __init__(self, destination_id: _Optional[str] = ...) -> None: ...

class DeleteDestinationResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeMarketoRequest(_message.Message):
    __slots__ = ("destination_id", "connection")
    DESTINATION_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_FIELD_NUMBER: _ClassVar[int]
    destination_id: str
    connection: MarketoConnection
    def __init__(self, destination_id: _Optional[str] = ..., connection: _Optional[_Union[MarketoConnection, _Mapping]] = ...) -> None: ...

class Workspace(_message.Message):
    __slots__ = ("id", "name")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class Partition(_message.Message):
    __slots__ = ("id", "name", "description")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    description: str
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class MarketoField(_message.Message):
    __slots__ = ("name", "display_name", "data_type", "length", "updateable", "searchable")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_TYPE_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    UPDATEABLE_FIELD_NUMBER: _ClassVar[int]
    SEARCHABLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    data_type: str
    length: int
    updateable: bool
    searchable: bool
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., data_type: _Optional[str] = ..., length: _Optional[int] = ..., updateable: _Optional[bool] = ..., searchable: _Optional[bool] = ...) -> None: ...

class DescribeMarketoResponse(_message.Message):
    __slots__ = ("workspaces", "partitions", "dedupe_fields", "fields")
    WORKSPACES_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    DEDUPE_FIELDS_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    workspaces: _containers.RepeatedCompositeFieldContainer[Workspace]
    partitions: _containers.RepeatedCompositeFieldContainer[Partition]
    dedupe_fields: _containers.RepeatedScalarFieldContainer[str]
    fields: _containers.RepeatedCompositeFieldContainer[MarketoField]
    def __init__(self, workspaces: _Optional[_Iterable[_Union[Workspace, _Mapping]]] = ..., partitions: _Optional[_Iterable[_Union[Partition, _Mapping]]] = ..., dedupe_fields: _Optional[_Iterable[str]] = ..., fields: _Optional[_Iterable[_Union[MarketoField, _Mapping]]] = ...) -> None: ...

class Audience(_message.Message):
    __slots__ = ("id", "name", "origin", "type", "marketo_list_id", "link_existing_list")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MARKETO_LIST_ID_FIELD_NUMBER: _ClassVar[int]
    LINK_EXISTING_LIST_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    origin: str
    type: AudienceType
    marketo_list_id: int
    link_existing_list: bool
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., origin: _Optional[str] = ..., type: _Optional[_Union[AudienceType, str]] = ..., marketo_list_id: _Optional[int] = ..., link_existing_list: _Optional[bool] = ...) -> None: ...

class FieldMapping(_message.Message):
    __slots__ = ("source", "target", "transform", "options", "labels", "write_policy")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TRANSFORM_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    WRITE_POLICY_FIELD_NUMBER: _ClassVar[int]
    source: str
    target: str
    transform: str
    options: _containers.ScalarMap[str, str]
    labels: _containers.RepeatedScalarFieldContainer[str]
    write_policy: WritePolicy
    def __init__(self, source: _Optional[str] = ..., target: _Optional[str] = ..., transform: _Optional[str] = ..., options: _Optional[_Mapping[str, str]] = ..., labels: _Optional[_Iterable[str]] = ..., write_policy: _Optional[_Union[WritePolicy, str]] = ...) -> None: ...

class ActivateRequest(_message.Message):
    __slots__ = ("destination_id", "audiences", "mappings", "dry_run")
    DESTINATION_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    MAPPINGS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    destination_id: str
    audiences: _containers.RepeatedCompositeFieldContainer[Audience]
    mappings: _containers.RepeatedCompositeFieldContainer[FieldMapping]
    dry_run: bool
    def __init__(self, destination_id: _Optional[str] = ..., audiences: _Optional[_Iterable[_Union[Audience, _Mapping]]] = ..., mappings: _Optional[_Iterable[_Union[FieldMapping, _Mapping]]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class ActivatedAudience(_message.Message):
    __slots__ = ("audience_id", "marketo_list_id", "list_name", "list_action")
    AUDIENCE_ID_FIELD_NUMBER: _ClassVar[int]
    MARKETO_LIST_ID_FIELD_NUMBER: _ClassVar[int]
    LIST_NAME_FIELD_NUMBER: _ClassVar[int]
    LIST_ACTION_FIELD_NUMBER: _ClassVar[int]
    audience_id: str
    marketo_list_id: int
    list_name: str
    list_action: ListAction
    def __init__(self, audience_id: _Optional[str] = ..., marketo_list_id: _Optional[int] = ..., list_name: _Optional[str] = ..., list_action: _Optional[_Union[ListAction, str]] = ...) -> None: ...

class ActivateResponse(_message.Message):
    __slots__ = ("audiences",)
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    audiences: _containers.RepeatedCompositeFieldContainer[ActivatedAudience]
    def __init__(self, audiences: _Optional[_Iterable[_Union[ActivatedAudience, _Mapping]]] = ...) -> None: ...

class DeactivateRequest(_message.Message):
    __slots__ = ("destination_id", "audience_ids", "delete_lists")
    DESTINATION_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_IDS_FIELD_NUMBER: _ClassVar[int]
    DELETE_LISTS_FIELD_NUMBER: _ClassVar[int]
    destination_id: str
    audience_ids: _containers.RepeatedScalarFieldContainer[str]
    delete_lists: bool
    def __init__(self, destination_id: _Optional[str] = ..., audience_ids: _Optional[_Iterable[str]] = ..., delete_lists: _Optional[bool] = ...) -> None: ...

class DeactivateResponse(_message.Message):
    __slots__ = ("audience_ids",)
    AUDIENCE_IDS_FIELD_NUMBER: _ClassVar[int]
    audience_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, audience_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class AudienceMembership(_message.Message):
    __slots__ = ("audience_id", "status")
    AUDIENCE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    audience_id: str
    status: MembershipStatus
    def __init__(self, audience_id: _Optional[str] = ..., status: _Optional[_Union[MembershipStatus, str]] = ...) -> None: ...

class ProfileUpdate(_message.Message):
    __slots__ = ("profile_id", "event_time", "profile", "audiences", "update_id")
    PROFILE_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    profile_id: str
    event_time: _timestamp_pb2.Timestamp
    profile: _struct_pb2.Struct
    audiences: _containers.RepeatedCompositeFieldContainer[AudienceMembership]
    update_id: str
    def __init__(self, profile_id: _Optional[str] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., profile: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., audiences: _Optional[_Iterable[_Union[AudienceMembership, _Mapping]]] = ..., update_id: _Optional[str] = ...) -> None: ...

class SyncRequest(_message.Message):
    __slots__ = ("destination_id", "updates", "request_id")
    DESTINATION_ID_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    destination_id: str
    updates: _containers.RepeatedCompositeFieldContainer[ProfileUpdate]
    request_id: str
    def __init__(self, destination_id: _Optional[str] = ..., updates: _Optional[_Iterable[_Union[ProfileUpdate, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("index", "reason", "field")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    index: int
    reason: str
    field: str
    def __init__(self, index: _Optional[int] = ..., reason: _Optional[str] = ..., field: _Optional[str] = ...) -> None: ...

class SyncResponse(_message.Message):
    __slots__ = ("accepted", "rejected", "request_id", "ack_sequence", "duplicates")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ACK_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    rejected: _containers.RepeatedCompositeFieldContainer[Rejection]
    request_id: str
    ack_sequence: int
    duplicates: int
    def __init__(self, accepted: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ..., request_id: _Optional[str] = ..., ack_sequence: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...

class PreviewSyncRequest(_message.Message):
    __slots__ = ("destination_id", "updates")
    DESTINATION_ID_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    destination_id: str
    updates: _containers.RepeatedCompositeFieldContainer[ProfileUpdate]
    def __init__(self, destination_id: _Optional[str] = ..., updates: _Optional[_Iterable[_Union[ProfileUpdate, _Mapping]]] = ...) -> None: ...

class PreviewOutcome(_message.Message):
    __slots__ = ("profile_id", "outcome")
    PROFILE_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    profile_id: str
    outcome: ProfileOutcome
    def __init__(self, profile_id: _Optional[str] = ..., outcome: _Optional[_Union[ProfileOutcome, _Mapping]] = ...) -> None: ...

class PreviewAudience(_message.Message):
    __slots__ = ("audience_id", "added", "removed")
    AUDIENCE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    audience_id: str
    added: int
    removed: int
    def __init__(self, audience_id: _Optional[str] = ..., added: _Optional[int] = ..., removed: _Optional[int] = ...) -> None: ...

class PreviewSyncResponse(_message.Message):
    __slots__ = ("created", "updated", "audiences", "outcomes", "rejected")
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    created: int
    updated: int
    audiences: _containers.RepeatedCompositeFieldContainer[PreviewAudience]
    outcomes: _containers.RepeatedCompositeFieldContainer[PreviewOutcome]
    rejected: _containers.RepeatedCompositeFieldContainer[Rejection]
    def __init__(self, created: _Optional[int] = ..., updated: _Optional[int] = ..., audiences: _Optional[_Iterable[_Union[PreviewAudience, _Mapping]]] = ..., outcomes: _Optional[_Iterable[_Union[PreviewOutcome, _Mapping]]] = ..., rejected: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ...) -> None: ...

class ActivatedCounts(_message.Message):
    __slots__ = ("created", "updated", "added", "removed")
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    created: int
    updated: int
    added: int
    removed: int
    def __init__(self, created: _Optional[int] = ..., updated: _Optional[int] = ..., added: _Optional[int] = ..., removed: _Optional[int] = ...) -> None: ...

class DataflowRun(_message.Message):
    __slots__ = ("start_time", "received", "activated", "excluded", "failed", "skipped_rate")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    ACTIVATED_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_RATE_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    received: int
    activated: int
    excluded: int
    failed: int
    skipped_rate: float
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., received: _Optional[int] = ..., activated: _Optional[int] = ..., excluded: _Optional[int] = ..., failed: _Optional[int] = ..., skipped_rate: _Optional[float] = ...) -> None: ...

class Dataflow(_message.Message):
    __slots__ = ("destination_id", "received", "activated", "excluded", "failed", "pending", "oldest_pending_age", "runs", "superseded", "paused_until", "duplicates", "excluded_by_field", "state", "state_reason", "marketo_calls", "lists")
    class ExcludedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class FailedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    DESTINATION_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    ACTIVATED_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    OLDEST_PENDING_AGE_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    SUPERSEDED_FIELD_NUMBER: _ClassVar[int]
    PAUSED_UNTIL_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_BY_FIELD_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    MARKETO_CALLS_FIELD_NUMBER: _ClassVar[int]
    LISTS_FIELD_NUMBER: _ClassVar[int]
    destination_id: str
    received: int
    activated: ActivatedCounts
    excluded: _containers.ScalarMap[str, int]
    failed: _containers.ScalarMap[str, int]
    pending: int
    oldest_pending_age: _duration_pb2.Duration
    runs: _containers.RepeatedCompositeFieldContainer[DataflowRun]
    superseded: int
    paused_until: _timestamp_pb2.Timestamp
    duplicates: int
    excluded_by_field: _containers.RepeatedCompositeFieldContainer[ExclusionCount]
    state: DestinationState
    state_reason: str
    marketo_calls: MarketoCalls
    lists: _containers.RepeatedCompositeFieldContainer[ListReconciliation]
    def __init__(self, destination_id: _Optional[str] = ..., received: _Optional[int] = ..., activated: _Optional[_Union[ActivatedCounts, _Mapping]] = ..., excluded: _Optional[_Mapping[str, int]] = ..., failed: _Optional[_Mapping[str, int]] = ..., pending: _Optional[int] = ..., oldest_pending_age: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., runs: _Optional[_Iterable[_Union[DataflowRun, _Mapping]]] = ..., superseded: _Optional[int] = ..., paused_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., duplicates: _Optional[int] = ..., excluded_by_field: _Optional[_Iterable[_Union[ExclusionCount, _Mapping]]] = ..., state: _Optional[_Union[DestinationState, str]] = ..., state_reason: _Optional[str] = ..., marketo_calls: _Optional[_Union[MarketoCalls, _Mapping]] = ..., lists: _Optional[_Iterable[_Union[ListReconciliation, _Mapping]]] = ...) -> None: ...

class ListReconciliation(_message.Message):
    __slots__ = ("audience_id", "marketo_list_id", "reconciled_at", "drift_found", "drift_repaired")
    AUDIENCE_ID_FIELD_NUMBER: _ClassVar[int]
    MARKETO_LIST_ID_FIELD_NUMBER: _ClassVar[int]
    RECONCILED_AT_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FOUND_FIELD_NUMBER: _ClassVar[int]
    DRIFT_REPAIRED_FIELD_NUMBER: _ClassVar[int]
    audience_id: str
    marketo_list_id: int
    reconciled_at: _timestamp_pb2.Timestamp
    drift_found: int
    drift_repaired: int
    def __init__(self, audience_id: _Optional[str] = ..., marketo_list_id: _Optional[int] = ..., reconciled_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., drift_found: _Optional[int] = ..., drift_repaired: _Optional[int] = ...) -> None: ...

class MarketoCalls(_message.Message):
    __slots__ = ("ours", "others", "remaining", "usage_read_at")
    OURS_FIELD_NUMBER: _ClassVar[int]
    OTHERS_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    USAGE_READ_AT_FIELD_NUMBER: _ClassVar[int]
    ours: int
    others: int
    remaining: int
    usage_read_at: _timestamp_pb2.Timestamp
    def __init__(self, ours: _Optional[int] = ..., others: _Optional[int] = ..., remaining: _Optional[int] = ..., usage_read_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ExclusionCount(_message.Message):
    __slots__ = ("code", "field", "count")
    CODE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    code: str
    field: str
    count: int
    def __init__(self, code: _Optional[str] = ..., field: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class GetDataflowRequest(_message.Message):
    __slots__ = ("destination_id", "hours")
    DESTINATION_ID_FIELD_NUMBER: _ClassVar[int]
    HOURS_FIELD_NUMBER: _ClassVar[int]
    destination_id: str
    hours: int
    def __init__(self, destination_id: _Optional[str] = ..., hours: _Optional[int] = ...) -> None: ...

class GetDataflowResponse(_message.Message):
    __slots__ = ("dataflow",)
    DATAFLOW_FIELD_NUMBER: _ClassVar[int]
    dataflow: Dataflow
    def __init__(self, dataflow: _Optional[_Union[Dataflow, _Mapping]] = ...) -> None: ...

class Action(_message.Message):
    __slots__ = ("type", "audience_id")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_ID_FIELD_NUMBER: _ClassVar[int]
    type: ActionType
    audience_id: str
    def __init__(self, type: _Optional[_Union[ActionType, str]] = ..., audience_id: _Optional[str] = ...) -> None: ...

class ProfileOutcome(_message.Message):
    __slots__ = ("profile_id", "dedupe_value", "event_time", "outcome_time", "kind", "actions", "lead_id", "reason", "marketo_code", "update_id", "exclusion_code", "field", "kept_fields")
    PROFILE_ID_FIELD_NUMBER: _ClassVar[int]
    DEDUPE_VALUE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_TIME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MARKETO_CODE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    EXCLUSION_CODE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELDS_FIELD_NUMBER: _ClassVar[int]
    profile_id: str
    dedupe_value: str
    event_time: _timestamp_pb2.Timestamp
    outcome_time: _timestamp_pb2.Timestamp
    kind: OutcomeKind
    actions: _containers.RepeatedCompositeFieldContainer[Action]
    lead_id: int
    reason: str
    marketo_code: str
    update_id: str
    exclusion_code: str
    field: str
    kept_fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, profile_id: _Optional[str] = ..., dedupe_value: _Optional[str] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., outcome_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[_Union[OutcomeKind, str]] = ..., actions: _Optional[_Iterable[_Union[Action, _Mapping]]] = ..., lead_id: _Optional[int] = ..., reason: _Optional[str] = ..., marketo_code: _Optional[str] = ..., update_id: _Optional[str] = ..., exclusion_code: _Optional[str] = ..., field: _Optional[str] = ..., kept_fields: _Optional[_Iterable[str]] = ...) -> None: ...

class ListProfileOutcomesRequest(_message.Message):
    __slots__ = ("destination_id", "profile_id", "dedupe_value", "page_size", "page_token")
    DESTINATION_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_ID_FIELD_NUMBER: _ClassVar[int]
    DEDUPE_VALUE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    destination_id: str
    profile_id: str
    dedupe_value: str
    page_size: int
    page_token: str
    def __init__(self, destination_id: _Optional[str] = ..., profile_id: _Optional[str] = ..., dedupe_value: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListProfileOutcomesResponse(_message.Message):
    __slots__ = ("outcomes", "next_page_token")
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[ProfileOutcome]
    next_page_token: str
    def __init__(self, outcomes: _Optional[_Iterable[_Union[ProfileOutcome, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("id", "destination_id", "type", "message", "raise_time", "resolved", "paused_until")
    ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RAISE_TIME_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_FIELD_NUMBER: _ClassVar[int]
    PAUSED_UNTIL_FIELD_NUMBER: _ClassVar[int]
    id: str
    destination_id: str
    type: AlertType
    message: str
    raise_time: _timestamp_pb2.Timestamp
    resolved: bool
    paused_until: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., destination_id: _Optional[str] = ..., type: _Optional[_Union[AlertType, str]] = ..., message: _Optional[str] = ..., raise_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resolved: _Optional[bool] = ..., paused_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WatchAlertsRequest(_message.Message):
    __slots__ = ("destination_id", "include_open")
    DESTINATION_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_OPEN_FIELD_NUMBER: _ClassVar[int]
    destination_id: str
    include_open: bool
    def __init__(self, destination_id: _Optional[str] = ..., include_open: _Optional[bool] = ...) -> None: ...

class WatchAlertsResponse(_message.Message):
    __slots__ = ("alert",)
    ALERT_FIELD_NUMBER: _ClassVar[int]
    alert: Alert
    def __init__(self, alert: _Optional[_Union[Alert, _Mapping]] = ...) -> None: ...

class ReconcileRequest(_message.Message):
    __slots__ = ("destination_id", "audience_ids", "dry_run")
    DESTINATION_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_IDS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    destination_id: str
    audience_ids: _containers.RepeatedScalarFieldContainer[str]
    dry_run: bool
    def __init__(self, destination_id: _Optional[str] = ..., audience_ids: _Optional[_Iterable[str]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class ReconcileResponse(_message.Message):
    __slots__ = ("lists",)
    LISTS_FIELD_NUMBER: _ClassVar[int]
    lists: _containers.RepeatedCompositeFieldContainer[ListDrift]
    def __init__(self, lists: _Optional[_Iterable[_Union[ListDrift, _Mapping]]] = ...) -> None: ...

class ListDrift(_message.Message):
    __slots__ = ("audience_id", "marketo_list_id", "missing", "unexpected", "added", "removed", "recreated")
    AUDIENCE_ID_FIELD_NUMBER: _ClassVar[int]
    MARKETO_LIST_ID_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    UNEXPECTED_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    RECREATED_FIELD_NUMBER: _ClassVar[int]
    audience_id: str
    marketo_list_id: int
    missing: int
    unexpected: int
    added: int
    removed: int
    recreated: bool
    def __init__(self, audience_id: _Optional[str] = ..., marketo_list_id: _Optional[int] = ..., missing: _Optional[int] = ..., unexpected: _Optional[int] = ..., added: _Optional[int] = ..., removed: _Optional[int] = ..., recreated: _Optional[bool] = ...) -> None: ...

class ResyncRequest(_message.Message):
    __slots__ = ("destination_id", "profile_ids", "dry_run")
    DESTINATION_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_IDS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    destination_id: str
    profile_ids: _containers.RepeatedScalarFieldContainer[str]
    dry_run: bool
    def __init__(self, destination_id: _Optional[str] = ..., profile_ids: _Optional[_Iterable[str]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class ResyncResponse(_message.Message):
    __slots__ = ("profiles", "estimated_marketo_calls", "estimated_seconds", "share_of_daily_quota")
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_MARKETO_CALLS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SHARE_OF_DAILY_QUOTA_FIELD_NUMBER: _ClassVar[int]
    profiles: int
    estimated_marketo_calls: int
    estimated_seconds: float
    share_of_daily_quota: float
    def __init__(self, profiles: _Optional[int] = ..., estimated_marketo_calls: _Optional[int] = ..., estimated_seconds: _Optional[float] = ..., share_of_daily_quota: _Optional[float] = ...) -> None: ...

class ForgetProfileRequest(_message.Message):
    __slots__ = ("destination_id", "profile_id", "delete_lead")
    DESTINATION_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_ID_FIELD_NUMBER: _ClassVar[int]
    DELETE_LEAD_FIELD_NUMBER: _ClassVar[int]
    destination_id: str
    profile_id: str
    delete_lead: bool
    def __init__(self, destination_id: _Optional[str] = ..., profile_id: _Optional[str] = ..., delete_lead: _Optional[bool] = ...) -> None: ...

class ForgetProfileResponse(_message.Message):
    __slots__ = ("lead_ids", "removed_from_lists", "lead_deleted")
    LEAD_IDS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FROM_LISTS_FIELD_NUMBER: _ClassVar[int]
    LEAD_DELETED_FIELD_NUMBER: _ClassVar[int]
    lead_ids: _containers.RepeatedScalarFieldContainer[int]
    removed_from_lists: int
    lead_deleted: bool
    def __init__(self, lead_ids: _Optional[_Iterable[int]] = ..., removed_from_lists: _Optional[int] = ..., lead_deleted: _Optional[bool] = ...) -> None: ...
