"""An in-memory Marketo for unit tests of the engine, plus a simple test mapper."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from service.domain import MappedProfile, MappingRejectedError, MissingDedupeValueError
from service.marketo.errors import MarketoError
from service.marketo.types import Lead, MembershipResult, Reason, RecordResult, SyncAction

T0 = datetime(2026, 1, 1, tzinfo=UTC)


MEMBER_OF = "a1"
"""The audience the test destinations activate and their default update is a member of: a
destination exports the members of its activated audiences only."""


NO_MEMBERSHIP = ("", "")
"""Given as the only membership to a test helper: the update carries no membership."""


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


@dataclass
class FakeLead:
    id: int
    partition: str
    updated_at: datetime
    fields: dict[str, Any]


@dataclass
class FakeMarketo:
    """Marketo as the engine sees it: leads in partitions, static lists, a call log.

    `faults[operation]` is a list of exceptions raised (one per call) before the operation runs;
    `before[operation]` is a hook run before the operation (to simulate a concurrent writer).
    `after_apply[operation]` raises after the write was applied (a lost answer).
    """

    leads: dict[int, FakeLead] = field(default_factory=dict)
    lists: dict[int, set[int]] = field(default_factory=dict)
    calls: list[tuple[str, int]] = field(default_factory=list)
    written: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """Every Sync Leads record sent, with its action."""
    asked: list[tuple[str, ...]] = field(default_factory=list)
    """The fields each look-up asked for."""
    faults: dict[str, list[Exception]] = field(default_factory=dict)
    after_apply: dict[str, list[Exception]] = field(default_factory=dict)
    before: dict[str, Callable[[], object]] = field(default_factory=dict)
    reject_if: Callable[[Mapping[str, Any]], MarketoError | None] | None = None
    next_id: int = 1000
    clock: datetime = T0

    def seed(self, partition: str = "Default", updated_at: datetime = T0, **fields: Any) -> int:
        self.next_id += 1
        self.leads[self.next_id] = FakeLead(self.next_id, partition, updated_at, dict(fields))
        return self.next_id

    def count(self, operation: str) -> int:
        return sum(1 for name, _ in self.calls if name == operation)

    async def _enter(self, operation: str, size: int) -> None:
        self.calls.append((operation, size))
        await asyncio.sleep(0)
        hook = self.before.pop(operation, None)
        if hook is not None:
            hook()
        pending = self.faults.get(operation)
        if pending:
            raise pending.pop(0)

    def _leave(self, operation: str) -> None:
        pending = self.after_apply.get(operation)
        if pending:
            raise pending.pop(0)

    def _tick(self) -> datetime:
        self.clock += timedelta(seconds=1)
        return self.clock

    def _matching(self, name: str, value: Any) -> list[FakeLead]:
        return [
            lead
            for lead in self.leads.values()
            if lead.fields.get(name) is not None
            and str(lead.fields[name]).casefold() == str(value).casefold()
        ]

    async def find_leads(
        self, filter_type: str, values: Sequence[str], fields: Sequence[str] | None = None
    ) -> list[Lead]:
        assert len(values) <= 300
        await self._enter("find_leads", len(values))
        self.asked.append(tuple(fields or ()))
        # Marketo's look-up ignores case and surrounding white space
        wanted = {str(v).strip().casefold() for v in values}
        found = []
        for lead in self.leads.values():
            value = lead.fields.get(filter_type)
            if value is not None and str(value).strip().casefold() in wanted:
                data = {"id": lead.id, **{f: lead.fields.get(f) for f in fields or ()}}
                found.append(Lead(lead.id, lead.updated_at, None, data))
        return found

    async def sync_leads(
        self,
        records: Sequence[Mapping[str, Any]],
        *,
        action: SyncAction,
        lookup_field: str | None = None,
        partition_name: str | None = None,
    ) -> list[RecordResult]:
        assert len(records) <= 300
        await self._enter(f"sync_leads:{action}", len(records))
        self.written.extend((str(action), dict(record)) for record in records)
        if self.reject_if is not None:
            for record in records:
                error = self.reject_if(record)
                if error is not None:
                    raise error
        results = []
        for record in records:
            if action is SyncAction.UPDATE_ONLY:
                assert lookup_field == "id" and partition_name is None
                lead = self.leads.get(int(record["id"]))
                if lead is None:
                    results.append(
                        RecordResult("skipped", None, (Reason("1004", "Lead not found"),))
                    )
                    continue
                lead.fields.update({k: v for k, v in record.items() if k != "id"})
                lead.updated_at = self._tick()
                results.append(RecordResult("updated", lead.id))
            elif action is SyncAction.CREATE_ONLY:
                assert "id" not in record
                if self._matching("email", record.get("email")):
                    results.append(
                        RecordResult("skipped", None, (Reason("1005", "Lead already exists"),))
                    )
                    continue
                new_id = self.seed(partition_name or "Default", self._tick(), **record)
                results.append(RecordResult("created", new_id))
            else:
                raise AssertionError(f"the engine never sends {action}")
        self._leave(f"sync_leads:{action}")
        return results

    async def add_to_list(self, list_id: int, lead_ids: Sequence[int]) -> list[MembershipResult]:
        assert len(lead_ids) <= 300
        await self._enter("add_to_list", len(lead_ids))
        results = []
        for lead_id in lead_ids:
            if lead_id not in self.leads:
                results.append(MembershipResult(lead_id, "skipped", (Reason("1004", "nf"),)))
                continue
            self.lists.setdefault(list_id, set()).add(lead_id)
            results.append(MembershipResult(lead_id, "added"))
        return results

    async def remove_from_list(
        self, list_id: int, lead_ids: Sequence[int]
    ) -> list[MembershipResult]:
        assert len(lead_ids) <= 300
        await self._enter("remove_from_list", len(lead_ids))
        results = []
        members = self.lists.setdefault(list_id, set())
        for lead_id in lead_ids:
            if lead_id not in self.leads:
                results.append(MembershipResult(lead_id, "skipped", (Reason("1004", "nf"),)))
            elif lead_id not in members:
                results.append(
                    MembershipResult(lead_id, "skipped", (Reason("1015", "Lead not in list"),))
                )
            else:
                members.discard(lead_id)
                results.append(MembershipResult(lead_id, "removed"))
        return results


class PathMapper:
    """Maps `email`, `first`, `last`, `city` of a flat profile; `city == "!"` is rejected.

    The dedupe field is `email` unless `dedupe` names another profile key (mapped under
    `dedupe_target`).
    """

    def __init__(
        self, dedupe: str = "email", dedupe_target: str = "email", raise_on_missing: bool = False
    ) -> None:
        self.raise_on_missing = raise_on_missing
        self.dedupe = dedupe
        self.dedupe_target = dedupe_target

    def map_profile(self, profile: Mapping[str, Any]) -> MappedProfile:
        if profile.get("city") == "!":
            raise MappingRejectedError("city: not a valid value", field="city")
        names = {"email": "email", "first": "firstName", "last": "lastName", "city": "city"}
        fields = {target: profile[key] for key, target in names.items() if key in profile}
        dedupe = profile.get(self.dedupe)
        if dedupe is None and self.raise_on_missing:
            raise MissingDedupeValueError("DedupeField: no value")
        if dedupe is not None:
            fields[self.dedupe_target] = dedupe
        return MappedProfile(dedupe_value=dedupe, fields=fields)
