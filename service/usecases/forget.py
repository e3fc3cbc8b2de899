"""ForgetProfile: take a person out of Marketo's managed lists, optionally delete the lead, and
never export the profile again.

The leads of the profile are its binding (the lead it resolved to at its last confirmed write)
and the leads holding its memberships (`DesiredState`). Each is removed from the list of every
active audience the profile has desired state in, unless another profile of the same lead still
wants it in that list (`DesiredState.co_holders`: the lead stays, as delivery and reconciliation
keep it); with `delete_lead`, they are deleted all the same. Then the
store records the tombstone (`Store.forget_profile`): later updates end EXCLUDED `forgotten`,
Resync and reconciliation skip the profile, and an outcome says what was done and when.

The Marketo calls come first: when one fails, nothing is recorded and the request can be sent
again. Not covered: Marketo's CRM sync or another integration may create the person again, and
other destinations on the same instance keep their own state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from service.api.access import current_principal
from service.domain import (
    HOLDER_RESOLVED,
    Action,
    ActionType,
    ExclusionCode,
    FieldViolation,
    Outcome,
    OutcomeKind,
)
from service.errors import InvalidArgument
from service.marketo.client import MarketoClient
from service.marketo.errors import MarketoError
from service.store.sql import Store
from service.usecases.connections import MarketoConnections
from service.usecases.destinations import marketo_failure

FORGET_UPDATE_PREFIX = "forget:"
"""Update ids of the outcomes ForgetProfile records start with this, then the time."""

CODE_LEAD_NOT_FOUND = "1004"


@dataclass(frozen=True, slots=True)
class Forgotten:
    """What ForgetProfile did."""

    lead_ids: tuple[int, ...]
    """The profile's leads: its binding and the holders of its memberships, sorted."""
    removed_from_lists: int
    """List memberships Marketo confirmed as removed."""
    lead_deleted: bool
    """The leads were deleted (or were already gone)."""


class ForgetProfile:
    """The ForgetProfile use case."""

    def __init__(
        self,
        store: Store,
        connections: MarketoConnections,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._connections = connections
        self._clock = clock

    async def forget(self, destination_id: str, profile_id: str, *, delete_lead: bool) -> Forgotten:
        """Remove the profile's leads from the managed lists, delete them when asked, record
        the tombstone and its outcome."""
        if not profile_id.strip():
            raise InvalidArgument([FieldViolation("profile_id", "is required")])
        record = await self._store.get_destination(
            destination_id, tenant=current_principal().tenant
        )
        state = await self._store.desired_state(destination_id, [profile_id])
        applied = state.profiles.get(profile_id)
        bound = applied.lead_id if applied is not None else None
        audiences = {a for pid, a in state.marks if pid == profile_id}
        leads_by_audience: dict[str, set[int]] = {}
        for (pid, audience), holder in state.holders.items():
            if pid != profile_id:
                continue
            lead = bound if holder == HOLDER_RESOLVED else holder
            if lead is not None:
                leads_by_audience.setdefault(audience, set()).add(lead)
        leads = set().union(*leads_by_audience.values()) | ({bound} if bound else set())
        lists = {
            a.audience_id: a.marketo_list_id
            for a in await self._store.activations(destination_id)
            if a.active
            and a.marketo_list_id
            and a.audience_id in audiences | set(leads_by_audience)
        }
        client = self._connections.client(record.spec.connection, interactive=True)
        actions: list[Action] = []
        for audience, list_id in sorted(lists.items()):
            # the binding too: it may have joined the list by another way than the service
            targets = sorted(
                lead
                for lead in leads_by_audience.get(audience, set()) | ({bound} if bound else set())
                # another profile of the lead still wants it there: it stays (the union rule)
                if not state.co_holders.get((audience, lead))
            )
            if not targets:
                continue
            removed = await _remove(client, list_id, targets)
            actions += [Action(ActionType.REMOVED, audience)] * removed
        deleted = False
        if delete_lead and leads:
            deleted = await _delete(client, sorted(leads))
        outcome = _outcome(profile_id, sorted(leads), actions, deleted, self._clock())
        await self._store.forget_profile(destination_id, profile_id, outcome)
        return Forgotten(tuple(sorted(leads)), len(actions), deleted)


async def _remove(client: MarketoClient, list_id: int, lead_ids: list[int]) -> int:
    """Remove the leads from the list; how many Marketo removed (not a member: none)."""
    try:
        results = await client.remove_from_list(list_id, lead_ids)
    except (MarketoError, httpx.HTTPError) as error:
        raise marketo_failure(error, f"removing the profile's leads from list {list_id}") from None
    return sum(result.status == "removed" for result in results)


async def _delete(client: MarketoClient, lead_ids: list[int]) -> bool:
    """Delete the leads; whether each is gone (deleted now, or no longer there)."""
    try:
        results = await client.delete_leads(lead_ids)
    except (MarketoError, httpx.HTTPError) as error:
        raise marketo_failure(error, "deleting the profile's leads") from None
    return all(
        result.status == "deleted"
        or any(reason.code == CODE_LEAD_NOT_FOUND for reason in result.reasons)
        for result in results
    )


def _outcome(
    profile_id: str, leads: list[int], actions: list[Action], deleted: bool, now: datetime
) -> Outcome:
    """The outcome recorded in the profile's history: EXCLUDED `forgotten`, with the removals
    and, in words, what was deleted (no personal data: the dedupe value is not kept)."""
    removed = len(actions)
    words = [f"profile forgotten: removed from {removed} list{'s' if removed != 1 else ''}"]
    if deleted:
        words.append(f"lead{'s' if len(leads) != 1 else ''} {', '.join(map(str, leads))} deleted")
    elif leads:
        words.append("leads kept")
    return Outcome(
        update_id=f"{FORGET_UPDATE_PREFIX}{int(now.timestamp() * 1_000_000)}",
        profile_id=profile_id,
        dedupe_value=None,
        kind=OutcomeKind.EXCLUDED,
        actions=tuple(actions),
        lead_id=leads[0] if leads else None,
        reason="; ".join(words),
        exclusion_code=ExclusionCode.FORGOTTEN,
    )
