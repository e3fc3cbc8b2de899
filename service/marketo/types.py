"""Typed results of Marketo REST operations, and `InstanceDescription` (several of them read
together).

These are plain data, free of domain rules: the sync engine decides what they mean.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any


class SyncAction(enum.StrEnum):
    """The `action` of Sync Leads."""

    CREATE_ONLY = "createOnly"
    UPDATE_ONLY = "updateOnly"
    CREATE_OR_UPDATE = "createOrUpdate"
    CREATE_DUPLICATE = "createDuplicate"


@dataclass(frozen=True, slots=True)
class Reason:
    """A record-level reason (Marketo 1xxx code) or response-level error."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Lead:
    """A lead as returned by Get Leads by Filter Type.

    `fields` holds every requested field (values as Marketo returned them, `None` when unset).
    """

    id: int
    updated_at: datetime | None
    partition_id: int | None
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RecordResult:
    """One record of a Sync Leads answer, in input order.

    `status` is "created", "updated" or "skipped"; skipped records carry `reasons` and no id.
    """

    status: str
    id: int | None = None
    reasons: tuple[Reason, ...] = ()


@dataclass(frozen=True, slots=True)
class MembershipResult:
    """One id of a list add / remove / is-member answer.

    `status` is "added", "removed", "memberof", "notmemberof" or "skipped" (with `reasons`).
    """

    id: int
    status: str
    reasons: tuple[Reason, ...] = ()


@dataclass(frozen=True, slots=True)
class FieldDescription:
    """One field of Describe Lead (`describe.json`).

    `rest_name` is None when the field is not available through REST.
    """

    id: int
    display_name: str
    data_type: str
    rest_name: str | None
    rest_read_only: bool = False
    length: int | None = None
    soap_name: str | None = None


@dataclass(frozen=True, slots=True)
class SchemaField:
    """One field of Describe Lead2 (`describe2.json`)."""

    name: str
    display_name: str
    data_type: str
    updateable: bool
    length: int | None = None
    crm_managed: bool = False


@dataclass(frozen=True, slots=True)
class LeadSchema:
    """Describe Lead2: the fields and the searchable keys (each key a tuple of field names)."""

    name: str
    searchable_fields: tuple[tuple[str, ...], ...]
    fields: tuple[SchemaField, ...]


@dataclass(frozen=True, slots=True)
class Partition:
    """A lead partition."""

    id: int
    name: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class Workspace:
    """A workspace from the User Management API."""

    id: int
    name: str
    description: str = ""
    status: str | None = None


@dataclass(frozen=True, slots=True)
class Folder:
    """An asset folder (or program) that can hold static lists."""

    id: int
    name: str
    type: str
    """"Folder" or "Program" (the `folderId.type` Marketo returns)."""
    path: str = ""
    workspace: str | None = None
    folder_type: str | None = None
    is_system: bool = False


@dataclass(frozen=True, slots=True)
class StaticList:
    """A static list asset."""

    id: int
    name: str
    folder_id: int | None = None
    folder_type: str | None = None
    workspace: str | None = None
    description: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    computed_url: str | None = None


@dataclass(frozen=True, slots=True)
class ImportJob:
    """A bulk lead import job.

    `status` is "Queued", "Importing", "Complete" or "Failed"; counters are 0 until known.
    """

    batch_id: int
    status: str
    import_id: str | None = None
    leads_processed: int = 0
    rows_failed: int = 0
    rows_with_warning: int = 0
    message: str = ""


@dataclass(frozen=True, slots=True)
class UsageDay:
    """One day of the Usage API: counted calls in all and per API user (`userId`)."""

    day: date
    total: int
    users: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LeadPage:
    """One page of Get Leads by List; `next_page_token` is None on the last page."""

    leads: tuple[Lead, ...]
    next_page_token: str | None


@dataclass(frozen=True, slots=True)
class ExportJob:
    """A bulk lead extract job.

    `status` is "Created", "Queued", "Processing", "Completed", "Cancelled" or "Failed";
    `file_size` and `file_checksum` are known once Completed.
    """

    export_id: str
    status: str
    format: str = "CSV"
    created_at: datetime | None = None
    records: int | None = None
    file_size: int | None = None
    file_checksum: str | None = None


@dataclass(frozen=True, slots=True)
class InstanceDescription:
    """An instance's workspaces, partitions and lead schema together: what DescribeMarketo
    shows, the pickers of the configuration form."""

    workspaces: tuple[Workspace, ...]
    partitions: tuple[Partition, ...]
    dedupe_fields: tuple[str, ...]
    fields: tuple[SchemaField, ...]
    searchable: frozenset[str]
