"""PreviewSync: plan and look up updates exactly as the dispatcher would, write nothing."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Protocol

from service.api.access import current_principal
from service.delivery.engine import SyncEngine, own_actions
from service.domain import (
    Action,
    ActionType,
    FieldViolation,
    Outcome,
    OutcomeKind,
    PreviewResult,
)
from service.errors import InvalidArgument
from service.marketo.errors import MarketoError
from service.store.base import DestinationRecord
from service.store.sql import Store
from service.usecases.destinations import marketo_failure
from service.usecases.ingest import IndexedUpdate, check_audiences

MAX_PREVIEW = 1_000


class EngineSource(Protocol):
    """Builds the engine the dispatcher would use for a destination."""

    async def engine_for(self, record: DestinationRecord) -> SyncEngine: ...


class Preview:
    def __init__(self, store: Store, engines: EngineSource, *, max_clock_skew: timedelta) -> None:
        self.max_clock_skew = max_clock_skew
        """How far in the future an update's event time may be."""
        self._store = store
        self._engines = engines

    async def preview(
        self, destination_id: str, updates: Sequence[IndexedUpdate], *, received: int
    ) -> PreviewResult:
        """Plan `updates` (the well-formed ones of a request of `received` updates) as Sync would,
        writing nothing. The bound applies to the whole request, malformed updates included."""
        if received > MAX_PREVIEW:
            raise InvalidArgument(
                [FieldViolation("updates", f"at most {MAX_PREVIEW} updates can be previewed")]
            )
        record = await self._store.get_destination(
            destination_id, tenant=current_principal().tenant
        )
        activations = await self._store.activations(destination_id)
        active = frozenset(a.audience_id for a in activations if a.active)
        dropped, rejected = check_audiences(
            [(u.index, tuple(m.audience_id for m in u.update.memberships)) for u in updates],
            active,
        )
        good = [u.update for u in updates if u.index not in dropped]
        try:
            engine = await self._engines.engine_for(record)
        except MarketoError as error:
            raise marketo_failure(error, "reading the instance's lead schema") from None
        profile_ids = sorted({u.profile_id for u in good})
        result = await engine.dry_run(
            good,
            state=await self._store.desired_state(destination_id, profile_ids),
        )
        if result.deferred:
            failure = result.deferred[0].error
            if isinstance(failure, MarketoError):
                raise marketo_failure(failure, "looking leads up")
        decided = {o.update_id: o for o in result.outcomes}
        created = set(result.create)
        updated = {u.dedupe_value: u.lead_id for u in result.update}
        kept = {u.dedupe_value: u.kept_fields for u in result.update}
        outcomes: dict[str, Outcome] = dict(decided)
        for person in result.plan.persons:
            actions: list[Action] = []
            if person.dedupe_value in created:
                actions.append(Action(ActionType.CREATED))
            elif person.dedupe_value in updated:
                actions.append(Action(ActionType.UPDATED))
            for change in result.audiences:
                if person.dedupe_value in change.add:
                    actions.append(Action(ActionType.ADDED, change.audience_id))
                if person.dedupe_value in change.remove:
                    actions.append(Action(ActionType.REMOVED, change.audience_id))
            # exits that cost no call, as Sync delivers them (a lead created by this write, or
            # one the service never added to a tracked list, is not in the list)
            actions += result.uncalled.get(person.speaker, ())
            for update in person.updates:
                if update.update_id in outcomes:
                    continue
                writer = update.update_id == person.writer
                outcomes[update.update_id] = Outcome(
                    update_id=update.update_id,
                    profile_id=update.profile_id,
                    dedupe_value=person.dedupe_value,
                    kind=OutcomeKind.ACTIVATED,
                    actions=own_actions(person, update.update_id, actions),
                    lead_id=updated.get(person.dedupe_value),
                    kept_fields=kept.get(person.dedupe_value, ()) if writer else (),
                )
        return PreviewResult(
            created=len(result.create),
            updated=len(result.update),
            audiences=result.audiences,
            outcomes=tuple(outcomes[u.update_id] for u in good if u.update_id in outcomes),
            rejected=rejected,
        )
