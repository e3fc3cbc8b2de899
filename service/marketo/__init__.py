"""Marketo Engage REST client: authentication, per-instance limits, the error table, typed
operations. See docs/marketo-client.md."""

from service.marketo.auth import AccessToken, TokenCache
from service.marketo.client import MarketoClient
from service.marketo.clock import Clock, SystemClock
from service.marketo.codes import Action, Rule
from service.marketo.errors import (
    AuthenticationError,
    ConfigurationError,
    MarketoError,
    OutcomeUnknownError,
    QuotaExhaustedError,
    RejectedError,
    UnavailableError,
)
from service.marketo.limits import InstanceLimits, next_reset
from service.marketo.retry import RetryPolicy
from service.marketo.types import (
    FieldDescription,
    Folder,
    ImportJob,
    Lead,
    LeadSchema,
    MembershipResult,
    Partition,
    Reason,
    RecordResult,
    SchemaField,
    StaticList,
    SyncAction,
    Workspace,
)

__all__ = [
    "AccessToken",
    "Action",
    "AuthenticationError",
    "Clock",
    "ConfigurationError",
    "FieldDescription",
    "Folder",
    "ImportJob",
    "InstanceLimits",
    "Lead",
    "LeadSchema",
    "MarketoClient",
    "MarketoError",
    "MembershipResult",
    "OutcomeUnknownError",
    "Partition",
    "QuotaExhaustedError",
    "Reason",
    "RecordResult",
    "RejectedError",
    "RetryPolicy",
    "Rule",
    "SchemaField",
    "StaticList",
    "SyncAction",
    "SystemClock",
    "TokenCache",
    "UnavailableError",
    "Workspace",
    "next_reset",
]
