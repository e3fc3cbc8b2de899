"""The in-memory state of one emulated Marketo instance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sandbox.limits import Usage
from sandbox.schema import TEXT_TYPES, LeadValue, Schema, iso_z
from sandbox.settings import SandboxSettings


@dataclass
class Lead:
    """A person record."""

    id: int
    partition_id: int
    created_at: float
    updated_at: float
    fields: dict[str, LeadValue]


@dataclass
class Partition:
    id: int
    name: str
    description: str


@dataclass
class Workspace:
    id: int
    name: str
    description: str
    partition_ids: tuple[int, ...]


@dataclass
class Folder:
    id: int
    name: str
    description: str
    parent_id: int | None
    workspace: str
    path: str
    is_system: bool
    created_at: float


@dataclass
class StaticList:
    id: int
    name: str
    description: str
    folder_id: int
    workspace: str
    created_at: float
    updated_at: float
    members: dict[int, None] = field(default_factory=dict)
    """Member lead ids in the order they were added (a dict as an ordered set)."""


@dataclass
class ImportJob:
    """A bulk lead import and its outcome."""

    id: int
    content: str
    format: str
    lookup_field: str
    list_id: int | None
    partition_name: str | None
    queued_at: float
    status: str = "Queued"
    started_at: float | None = None
    processed: int = 0
    failed: int = 0
    warned: int = 0
    message: str = "Import queued"
    failures: str = ""
    warnings: str = ""


@dataclass
class ExportJob:
    """A bulk lead extract job; `content` is written when it starts processing."""

    id: str
    fields: tuple[str, ...]
    headers: tuple[str, ...]
    format: str
    filter_type: str
    filter_value: Any
    created_at: float
    status: str = "Created"
    queued_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    records: int = 0
    content: str = ""


@dataclass
class DeletedLead:
    """A Delete Lead activity (type 37) as Get Deleted Leads reports it."""

    lead_id: int
    name: str
    deleted_at: float


def index_key(data_type: str, value: LeadValue) -> LeadValue:
    """Lookups match text (e-mail addresses and other strings) ignoring case and surrounding
    white space, like Marketo's dedupe and the service's planner (`service.domain.dedupe_key`)."""
    if data_type in TEXT_TYPES and isinstance(value, str):
        return value.strip().casefold()
    return value


class LeadStore:
    """Leads, with one index per searchable field so lookups never scan."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.leads: dict[int, Lead] = {}
        self._next_id = 1
        self._indexes: dict[str, dict[LeadValue, dict[int, None]]] = {
            name: {} for name in schema.searchable if name not in ("id", "leadPartitionId")
        }
        self._by_partition: dict[int, dict[int, None]] = {}

    def find(self, field_name: str, value: LeadValue) -> list[int]:
        """Ids of the leads whose `field_name` equals `value`, oldest first."""
        if value is None:
            return []
        if field_name == "id":
            return [value] if isinstance(value, int) and value in self.leads else []
        if field_name == "leadPartitionId":
            return list(self._by_partition.get(value, {})) if isinstance(value, int) else []
        key = index_key(self.schema.fields[field_name].data_type, value)
        return list(self._indexes[field_name].get(key, {}))

    def add(self, values: dict[str, LeadValue], partition_id: int, now: float) -> Lead:
        """Create a lead from already validated values."""
        lead = Lead(self._next_id, partition_id, now, now, {})
        self._next_id += 1
        self.leads[lead.id] = lead
        self._by_partition.setdefault(partition_id, {})[lead.id] = None
        self.update(lead, values, now)
        lead.updated_at = now
        return lead

    def update(self, lead: Lead, values: dict[str, LeadValue], now: float) -> None:
        """Write already validated values and keep the indexes in step."""
        for name, value in values.items():
            index = self._indexes.get(name)
            if index is not None and lead.fields.get(name) != value:
                data_type = self.schema.fields[name].data_type
                old = lead.fields.get(name)
                if old is not None:
                    bucket = index.get(index_key(data_type, old))
                    if bucket is not None:
                        bucket.pop(lead.id, None)
                        if not bucket:
                            del index[index_key(data_type, old)]
                if value is not None:
                    index.setdefault(index_key(data_type, value), {})[lead.id] = None
            lead.fields[name] = value
        lead.updated_at = now

    def move(self, lead: Lead, partition_id: int, now: float) -> None:
        """Move a lead to another partition."""
        self._by_partition[lead.partition_id].pop(lead.id, None)
        self._by_partition.setdefault(partition_id, {})[lead.id] = None
        lead.partition_id = partition_id
        lead.updated_at = now

    def delete(self, lead_id: int) -> None:
        """Remove an existing lead and its index entries."""
        lead = self.leads[lead_id]
        self.update(lead, {name: None for name in self._indexes}, lead.updated_at)
        self._by_partition[lead.partition_id].pop(lead_id, None)
        del self.leads[lead_id]

    def value(self, lead: Lead, name: str) -> Any:
        """A field as the REST API returns it."""
        if name == "id":
            return lead.id
        if name == "leadPartitionId":
            return lead.partition_id
        if name == "createdAt":
            return iso_z(lead.created_at)
        if name == "updatedAt":
            return iso_z(lead.updated_at)
        value = lead.fields.get(name)
        if value is None and self.schema.fields[name].data_type == "boolean":
            return False
        return value

    def record(self, lead: Lead, names: tuple[str, ...]) -> dict[str, Any]:
        """A lead as a REST result record with `id` first, then the requested fields."""
        out: dict[str, Any] = {"id": lead.id}
        for name in names:
            if name != "id":
                out[name] = self.value(lead, name)
        return out


class SandboxState:
    """Everything one emulated instance holds; rebuilt by `/_sandbox/reset`."""

    def __init__(self, settings: SandboxSettings, now: float) -> None:
        self.settings = settings
        self.schema = Schema(settings.custom_fields)
        self.leads = LeadStore(self.schema)
        self.partitions: dict[int, Partition] = {}
        for number, (name, description) in enumerate(settings.partitions, start=1):
            self.partitions[number] = Partition(number, name, description)
        self.partition_ids = {p.name: p.id for p in self.partitions.values()}
        self.workspaces: dict[int, Workspace] = {}
        for number, spec in enumerate(settings.workspaces, start=1):
            ids = tuple(self.partition_ids[name] for name in spec.partitions)
            self.workspaces[number] = Workspace(number, spec.name, spec.description, ids)
        self.folders: dict[int, Folder] = {}
        self.lists: dict[int, StaticList] = {}
        self.imports: dict[int, ImportJob] = {}
        self.usage = Usage()
        self.exports: dict[str, ExportJob] = {}
        self.export_daily_limit = settings.bulk_export_daily_bytes
        """Bytes of export files a Marketo day allows (the control API can shrink it live)."""
        self.deleted: list[DeletedLead] = []
        """Delete Lead activities, oldest first."""
        self._next_folder_id = 10
        self._next_list_id = 1001
        self.created_at = now
        for ws in self.workspaces.values():
            root = self.add_folder("Lead Database", None, ws.name, now, is_system=True)
            self.add_folder("Group Lists", root.id, ws.name, now)

    @property
    def default_partition(self) -> Partition:
        return next(iter(self.partitions.values()))

    def api_can_use(self, partition_id: int) -> bool:
        """Whether the API user's role reaches this partition (1008 otherwise)."""
        allowed = self.settings.api_partitions
        return allowed is None or self.partitions[partition_id].name in allowed

    def add_folder(
        self,
        name: str,
        parent_id: int | None,
        workspace: str,
        now: float,
        *,
        description: str = "",
        is_system: bool = False,
    ) -> Folder:
        # Real paths put the workspace under the root: "/Lead Database/Default/Group Lists".
        if parent_id is None:
            path = f"/{name}/{workspace}"
        else:
            path = f"{self.folders[parent_id].path}/{name}"
        folder = Folder(
            self._next_folder_id, name, description, parent_id, workspace, path, is_system, now
        )
        self._next_folder_id += 1
        self.folders[folder.id] = folder
        return folder

    def add_list(self, name: str, description: str, folder: Folder, now: float) -> StaticList:
        static_list = StaticList(
            self._next_list_id, name, description, folder.id, folder.workspace, now, now
        )
        self._next_list_id += 1
        self.lists[static_list.id] = static_list
        return static_list

    def list_in_use(self, list_id: int) -> bool:
        """Whether a queued or running import targets the list."""
        return any(
            job.list_id == list_id and job.status in ("Queued", "Importing")
            for job in self.imports.values()
        )
