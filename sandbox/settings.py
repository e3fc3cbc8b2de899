"""Sandbox settings: identity, limits and the shape of the emulated instance."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FieldSpec:
    """A lead field as Describe reports it."""

    name: str
    data_type: str
    display_name: str = ""
    length: int | None = None
    searchable: bool = False
    read_only: bool = False
    crm_managed: bool = False
    soap_name: str | None = None
    custom: bool = False


@dataclass(frozen=True)
class WorkspaceSpec:
    """A workspace and the partitions it can see."""

    name: str
    partitions: tuple[str, ...]
    description: str = ""


DEFAULT_PARTITIONS: tuple[tuple[str, str], ...] = (
    ("Default", "Initial system lead partition"),
    ("EMEA", "Leads owned by the EMEA team"),
    ("Partners", "Leads registered by channel partners"),
)

DEFAULT_WORKSPACES: tuple[WorkspaceSpec, ...] = (
    WorkspaceSpec("Default", ("Default", "Partners"), "Initial system workspace"),
    WorkspaceSpec("EMEA", ("EMEA",), "Europe, Middle East and Africa"),
)

DEFAULT_CUSTOM_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("customerId", "string", "Customer ID", 255, searchable=True, custom=True),
    FieldSpec("loyaltyTier", "string", "Loyalty Tier", 255, custom=True),
    FieldSpec("accountScore", "integer", "Account Score", custom=True),
    FieldSpec("npsScore", "float", "NPS Score", custom=True),
    FieldSpec("lifetimeValue", "currency", "Lifetime Value", custom=True),
    FieldSpec("discountRate", "percent", "Discount Rate", custom=True),
    FieldSpec("isVip", "boolean", "Is VIP", custom=True),
    FieldSpec("lastPurchaseDate", "date", "Last Purchase Date", custom=True),
    FieldSpec("lastLoginAt", "datetime", "Last Login At", custom=True),
    FieldSpec("profileNotes", "text", "Profile Notes", custom=True),
    FieldSpec("profileUrl", "url", "Profile URL", 255, custom=True),
    FieldSpec("secondaryEmail", "email", "Secondary Email", 255, custom=True),
    FieldSpec("supportPhone", "phone", "Support Phone", 255, custom=True),
)


@dataclass(frozen=True)
class SandboxSettings:
    """Everything that can differ between two sandbox instances."""

    client_id: str = "sandbox-client-id"
    """Client id of the one custom service the sandbox knows."""
    client_secret: str = field(default="sandbox-client-secret", repr=False)
    """Its client secret."""
    munchkin_id: str = "123-ABC-456"
    """Account id; only used to print URLs and build `computedUrl`s."""
    api_user: str = "sandbox-api-user@example.com"
    """The API-only user returned as the token `scope`."""
    calls_per_window: int = 100
    """Calls allowed in any sliding window (606 beyond)."""
    window_seconds: float = 20.0
    """Length of the rate window; set 2.0 to run the 20 s window ten times faster."""
    concurrency: int = 10
    """Calls allowed in flight at once (615 beyond)."""
    daily_quota: int = 50_000
    """Counted calls per day, reset at midnight America/Chicago (607 beyond)."""
    token_ttl: int = 3600
    """Lifetime of a fresh access token in seconds."""
    body_limit: int = 1_000_000
    """Largest request body for REST calls (HTTP 413 beyond)."""
    bulk_file_limit: int = 10_000_000
    """Largest bulk import upload (HTTP 413 beyond)."""
    uri_limit: int = 8192
    """Longest request URI (HTTP 414 beyond)."""
    accept_access_token_param: bool = False
    """Accept the legacy `access_token` query/form parameter besides the Bearer header (Marketo
    removed it in 2026; off, a call carrying it without a Bearer header gets 601)."""
    count_rejected_calls: bool = False
    """Whether 606/615/607 responses themselves count toward the rate window and quota."""
    latency_ms: float = 0.0
    """Extra real-time latency added to every counted call (makes concurrency observable)."""
    bulk_queue_seconds: float = 1.0
    """Time a bulk job stays Queued before it may start importing."""
    bulk_import_seconds: float = 2.0
    """Time a bulk job spends Importing."""
    bulk_export_seconds: float = 2.0
    """Time a bulk lead extract spends Processing."""
    bulk_export_daily_bytes: int = 500_000_000
    """Export file bytes allowed per Marketo day (1029 "Export daily quota exceeded" beyond)."""
    bulk_export_retention_seconds: float = 7 * 86_400
    """How long a finished export job and its file are kept."""
    partitions: tuple[tuple[str, str], ...] = DEFAULT_PARTITIONS
    """Lead partitions as (name, description); the first one is the default."""
    workspaces: tuple[WorkspaceSpec, ...] = DEFAULT_WORKSPACES
    """Workspaces; the first one is the default."""
    custom_fields: tuple[FieldSpec, ...] = DEFAULT_CUSTOM_FIELDS
    """Custom lead fields added to the standard schema."""
    api_partitions: tuple[str, ...] | None = None
    """Partitions the API user may touch (None: all); others give 1008."""
    unknown_field_rejects_request: bool = False
    """A Sync Leads record naming a field the schema lacks rejects the whole request with a
    response-level 1006 (as Marketo answers a field deleted from the schema), instead of skipping
    only that record."""
    log_calls: bool = False
    """Keep a log of every Marketo call (`/_sandbox/call-log`): endpoint, code, arrival and end
    times (None while in flight), and the caller's `X-Marketo-Dest-Replica` header."""

    def with_overrides(self, body: Mapping[str, Any]) -> SandboxSettings:
        """Return a copy changed by a `/_sandbox/reset` body; raises ValueError on bad input."""
        changes: dict[str, Any] = {}
        simple = {
            "client_id": str,
            "client_secret": str,
            "munchkin_id": str,
            "api_user": str,
            "calls_per_window": int,
            "window_seconds": float,
            "concurrency": int,
            "daily_quota": int,
            "token_ttl": int,
            "body_limit": int,
            "bulk_file_limit": int,
            "uri_limit": int,
            "accept_access_token_param": bool,
            "count_rejected_calls": bool,
            "latency_ms": float,
            "bulk_queue_seconds": float,
            "bulk_import_seconds": float,
            "bulk_export_seconds": float,
            "bulk_export_daily_bytes": int,
            "bulk_export_retention_seconds": float,
            "unknown_field_rejects_request": bool,
            "log_calls": bool,
        }
        for key, value in body.items():
            if key in simple:
                kind = simple[key]
                if kind is float and isinstance(value, int) and not isinstance(value, bool):
                    value = float(value)
                if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                    raise ValueError(f"{key} must be {kind.__name__}")
                changes[key] = value
            elif key == "access_token_param":
                if not isinstance(value, bool):
                    raise ValueError("access_token_param must be bool")
                changes["accept_access_token_param"] = value
            elif key == "partitions":
                changes["partitions"] = tuple(_partition(p) for p in value)
            elif key == "workspaces":
                changes["workspaces"] = tuple(_workspace(w) for w in value)
            elif key == "fields":
                changes["custom_fields"] = tuple(parse_field(f) for f in value)
            elif key == "api_partitions":
                changes["api_partitions"] = None if value is None else tuple(map(str, value))
            else:
                raise ValueError(f"unknown setting {key!r}")
        result = dataclasses.replace(self, **changes)
        result.validate()
        return result

    def validate(self) -> None:
        """Raise ValueError when the settings cannot describe an instance."""
        names = [name for name, _ in self.partitions]
        if not names or len(set(names)) != len(names):
            raise ValueError("partitions must be non-empty and unique")
        if not self.workspaces:
            raise ValueError("at least one workspace is needed")
        for ws in self.workspaces:
            unknown = set(ws.partitions) - set(names)
            if unknown:
                raise ValueError(
                    f"workspace {ws.name!r} names unknown partitions {sorted(unknown)}"
                )
        if self.calls_per_window < 1 or self.concurrency < 1 or self.window_seconds <= 0:
            raise ValueError("limits must be positive")


def _partition(value: Any) -> tuple[str, str]:
    if isinstance(value, str):
        return (value, "")
    if isinstance(value, Mapping) and isinstance(value.get("name"), str):
        return (value["name"], str(value.get("description", "")))
    raise ValueError("a partition is a name or {name, description}")


def _workspace(value: Any) -> WorkspaceSpec:
    if isinstance(value, str):
        return WorkspaceSpec(value, ("Default",))
    if isinstance(value, Mapping) and isinstance(value.get("name"), str):
        partitions = value.get("partitions", ["Default"])
        return WorkspaceSpec(
            value["name"], tuple(map(str, partitions)), str(value.get("description", ""))
        )
    raise ValueError("a workspace is a name or {name, partitions, description}")


_DATA_TYPES = {
    "string",
    "text",
    "boolean",
    "integer",
    "float",
    "currency",
    "percent",
    "date",
    "datetime",
    "email",
    "phone",
    "url",
}


def parse_field(value: Any) -> FieldSpec:
    """A custom field from its JSON form; raises ValueError."""
    if not isinstance(value, Mapping) or not isinstance(value.get("name"), str):
        raise ValueError("a field is {name, dataType, searchable?, displayName?, length?}")
    data_type = value.get("dataType", "string")
    if data_type not in _DATA_TYPES:
        raise ValueError(f"unknown dataType {data_type!r}")
    searchable = bool(value.get("searchable", False))
    if searchable and data_type not in ("string", "email", "integer"):
        raise ValueError("only string, email and integer fields can be searchable")
    length = value.get("length", 255 if data_type in ("string", "email", "url", "phone") else None)
    return FieldSpec(
        name=value["name"],
        data_type=data_type,
        display_name=str(value.get("displayName", value["name"])),
        length=length,
        searchable=searchable,
        custom=True,
    )
