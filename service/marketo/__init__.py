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
    ExportJob,
    FieldDescription,
    Folder,
    ImportJob,
    Lead,
    LeadPage,
    LeadSchema,
    MembershipResult,
    Partition,
    Reason,
    RecordResult,
    SchemaField,
    StaticList,
    SyncAction,
    UsageDay,
    Workspace,
)

__all__ = [
    "AccessToken",
    "Action",
    "AuthenticationError",
    "Clock",
    "ConfigurationError",
    "ExportJob",
    "FieldDescription",
    "Folder",
    "ImportJob",
    "InstanceLimits",
    "Lead",
    "LeadPage",
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
    "UsageDay",
    "Workspace",
    "next_reset",
]
