"""What the sync engine needs from a Marketo client.

The engine is written against this protocol so it can be tested with an in-memory fake; the real
`service.marketo.client.MarketoClient` satisfies it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from service.marketo.types import Lead, MembershipResult, RecordResult, SyncAction


class MarketoPort(Protocol):
    """The Marketo operations the engine calls (each takes at most 300 records from the engine)."""

    async def find_leads(
        self, filter_type: str, values: Sequence[str], fields: Sequence[str]
    ) -> list[Lead]:
        """Get Leads by Filter Type over every partition; every page of the answer."""
        ...

    async def sync_leads(
        self,
        records: Sequence[Mapping[str, Any]],
        *,
        action: SyncAction,
        lookup_field: str | None = None,
        partition_name: str | None = None,
    ) -> list[RecordResult]:
        """Sync Leads; one result per record, in input order."""
        ...

    async def add_to_list(self, list_id: int, lead_ids: Sequence[int]) -> list[MembershipResult]:
        """Add leads to a static list by id; one result per id."""
        ...

    async def remove_from_list(
        self, list_id: int, lead_ids: Sequence[int]
    ) -> list[MembershipResult]:
        """Remove leads from a static list by id; one result per id."""
        ...
