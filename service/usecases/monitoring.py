"""What callers see of delivery: dataflow metrics, per-profile outcomes and alerts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

from service.api.access import current_principal
from service.domain import AlertState, FieldViolation
from service.errors import InvalidArgument
from service.store.base import Dataflow, OutcomeRecord, Page
from service.store.sql import Store
from service.usecases.alerts import AlertEvent, AlertMonitor
from service.usecases.connections import MarketoConnections
from service.usecases.destinations import checked_page_size

MAX_HOURS = 720


class Monitoring:
    """GetDataflow, ListProfileOutcomes and WatchAlerts, scoped to the caller's tenant."""

    def __init__(self, store: Store, alerts: AlertMonitor, connections: MarketoConnections) -> None:
        self._store = store
        self._alerts = alerts
        self._connections = connections

    async def dataflow(self, destination_id: str, hours: int) -> Dataflow:
        if not 0 <= hours <= MAX_HOURS:
            raise InvalidArgument([FieldViolation("hours", f"must be between 0 and {MAX_HOURS}")])
        record = await self._store.get_destination(
            destination_id, tenant=current_principal().tenant
        )
        flow = await self._store.dataflow(destination_id, hours or 24)
        return replace(
            flow,
            state=record.state,
            state_reason=record.state_reason,
            marketo_calls=self._connections.calls_today(record.spec.connection),
            lists=tuple(await self._store.reconciliations(destination_id)),
        )

    async def outcomes(
        self,
        destination_id: str,
        *,
        profile_id: str | None,
        dedupe_value: str | None,
        page_size: int,
        page_token: str,
    ) -> Page[OutcomeRecord]:
        size = checked_page_size(page_size)
        await self._store.get_destination(destination_id, tenant=current_principal().tenant)
        return await self._store.list_outcomes(
            destination_id,
            profile_id=profile_id,
            dedupe_value=dedupe_value,
            page_size=size,
            page_token=page_token,
        )

    async def watch_alerts(
        self, destination_id: str, *, include_open: bool
    ) -> AsyncIterator[AlertEvent]:
        await self._store.get_destination(destination_id, tenant=current_principal().tenant)
        async with self._alerts.subscribe(destination_id) as watcher:
            if include_open:
                for alert in await self._store.open_alerts(destination_id):
                    yield AlertEvent(AlertState.RAISED, alert)
            async for event in watcher:
                yield event
