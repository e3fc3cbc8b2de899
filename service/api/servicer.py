"""The gRPC servicer of ``marketo_destination.v1.MarketoDestinationService``.

Thin by design: each method converts the request to domain types, awaits one use case and converts
the result back. Errors are raised as :mod:`service.errors` and reported by the error
interceptor; authentication and tracing are interceptors too.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime
from typing import Any

import grpc

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from service.api import convert, sync_checks
from service.api.streams import in_order
from service.app import Application
from service.usecases.ingest import Submission

__all__ = ["MarketoDestinationServicer"]

_Context = grpc.aio.ServicerContext[Any, Any]

SYNC_PIPELINE_DEPTH = 8
"""Requests of one Sync stream being committed at once (responses still go out in order); the
Sync comment in the proto tells callers this number."""


class MarketoDestinationServicer:
    """Implements every RPC of the v1 contract (a contract test keeps the two in step)."""

    def __init__(self, app: Application) -> None:
        self._app = app

    async def Configure(
        self, request: pb.ConfigureRequest, context: _Context
    ) -> pb.ConfigureResponse:
        destination = await self._app.destinations.configure(
            request.destination_id,
            convert.destination_spec(request.spec),
            validate_only=request.validate_only,
        )
        return pb.ConfigureResponse(destination=convert.destination_pb(destination))

    async def GetDestination(
        self, request: pb.GetDestinationRequest, context: _Context
    ) -> pb.GetDestinationResponse:
        destination, activations = await self._app.destinations.get_with_activations(
            convert.destination_id(request.destination_id)
        )
        return pb.GetDestinationResponse(
            destination=convert.destination_pb(destination, activations)
        )

    async def ListDestinations(
        self, request: pb.ListDestinationsRequest, context: _Context
    ) -> pb.ListDestinationsResponse:
        page = await self._app.destinations.list_with_activations(
            request.page_size, request.page_token
        )
        return pb.ListDestinationsResponse(
            destinations=[convert.destination_pb(d, activations) for d, activations in page.items],
            next_page_token=page.next_page_token,
        )

    async def DeleteDestination(
        self, request: pb.DeleteDestinationRequest, context: _Context
    ) -> pb.DeleteDestinationResponse:
        await self._app.destinations.delete(convert.destination_id(request.destination_id))
        return pb.DeleteDestinationResponse()

    async def DescribeMarketo(
        self, request: pb.DescribeMarketoRequest, context: _Context
    ) -> pb.DescribeMarketoResponse:
        description = await self._app.destinations.describe(
            request.destination_id or None,
            convert.marketo_connection(request.connection)
            if request.HasField("connection")
            else None,
        )
        return convert.instance_description_pb(description)

    async def Activate(self, request: pb.ActivateRequest, context: _Context) -> pb.ActivateResponse:
        activated = await self._app.activations.activate(
            convert.destination_id(request.destination_id),
            [convert.audience(a, i) for i, a in enumerate(request.audiences)],
            [convert.field_mapping(m, i) for i, m in enumerate(request.mappings)],
            dry_run=request.dry_run,
        )
        return pb.ActivateResponse(audiences=[convert.activated_audience_pb(a) for a in activated])

    async def Deactivate(
        self, request: pb.DeactivateRequest, context: _Context
    ) -> pb.DeactivateResponse:
        audience_ids = await self._app.activations.deactivate(
            convert.destination_id(request.destination_id),
            list(request.audience_ids),
            delete_lists=request.delete_lists,
        )
        return pb.DeactivateResponse(audience_ids=audience_ids)

    async def Sync(self, request_iterator: AsyncIterator[bytes], context: _Context) -> None:
        """Requests arrive encoded (see `service.api.server`): protobuf parses each once, its
        updates are checked and the kept ones stored encoded (`sync_checks.sync_request`). Each
        answer is written as soon as its request is committed (`context.write`: no generator
        between this loop and gRPC)."""
        submitted: deque[tuple[sync_checks.SyncRequestChecked, Submission]] = deque()

        async def commits() -> AsyncIterator[Awaitable[object]]:
            async for wire in request_iterator:
                request = sync_checks.sync_request(
                    wire, datetime.now(UTC), self._app.ingest.max_clock_skew
                )
                submission = await self._app.ingest.submit(
                    convert.destination_id(request.destination_id), request.updates
                )
                submitted.append((request, submission))
                yield submission.committed

        # in_order gives one result per request, in the order the requests came.
        async for _ in in_order(commits(), SYNC_PIPELINE_DEPTH):
            request, submission = submitted.popleft()
            await context.write(
                convert.sync_response(request.request_id, submission.ack(), request.rejected)
            )

    async def PreviewSync(
        self, request: pb.PreviewSyncRequest, context: _Context
    ) -> pb.PreviewSyncResponse:
        updates, rejected = convert.updates(
            request.updates, datetime.now(UTC), self._app.preview.max_clock_skew
        )
        preview = await self._app.preview.preview(
            convert.destination_id(request.destination_id),
            updates,
            received=len(request.updates),
        )
        return convert.preview_pb(preview, rejected)

    async def GetDataflow(
        self, request: pb.GetDataflowRequest, context: _Context
    ) -> pb.GetDataflowResponse:
        flow = await self._app.monitoring.dataflow(
            convert.destination_id(request.destination_id), request.hours
        )
        return pb.GetDataflowResponse(dataflow=convert.dataflow_pb(flow))

    async def ListProfileOutcomes(
        self, request: pb.ListProfileOutcomesRequest, context: _Context
    ) -> pb.ListProfileOutcomesResponse:
        page = await self._app.monitoring.outcomes(
            convert.destination_id(request.destination_id),
            profile_id=request.profile_id or None,
            dedupe_value=request.dedupe_value or None,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListProfileOutcomesResponse(
            outcomes=[convert.outcome_pb(o) for o in page.items],
            next_page_token=page.next_page_token,
        )

    async def Resync(self, request: pb.ResyncRequest, context: _Context) -> pb.ResyncResponse:
        estimate = await self._app.resync.resync(
            convert.destination_id(request.destination_id),
            list(request.profile_ids),
            dry_run=request.dry_run,
        )
        return pb.ResyncResponse(
            profiles=estimate.profiles,
            estimated_marketo_calls=estimate.calls,
            estimated_seconds=estimate.seconds,
            share_of_daily_quota=estimate.share_of_daily_quota,
        )

    async def ForgetProfile(
        self, request: pb.ForgetProfileRequest, context: _Context
    ) -> pb.ForgetProfileResponse:
        forgotten = await self._app.forget.forget(
            convert.destination_id(request.destination_id),
            request.profile_id,
            delete_lead=request.delete_lead,
        )
        return pb.ForgetProfileResponse(
            lead_ids=forgotten.lead_ids,
            removed_from_lists=forgotten.removed_from_lists,
            lead_deleted=forgotten.lead_deleted,
        )

    async def WatchAlerts(
        self, request: pb.WatchAlertsRequest, context: _Context
    ) -> AsyncIterator[pb.WatchAlertsResponse]:
        async for event in self._app.monitoring.watch_alerts(
            convert.destination_id(request.destination_id), include_open=request.include_open
        ):
            yield pb.WatchAlertsResponse(alert=convert.alert_event_pb(event))

    async def Reconcile(
        self, request: pb.ReconcileRequest, context: _Context
    ) -> pb.ReconcileResponse:
        drifts = await self._app.reconciliation.reconcile(
            convert.destination_id(request.destination_id),
            list(request.audience_ids),
            dry_run=request.dry_run,
        )
        return pb.ReconcileResponse(lists=[convert.list_drift_pb(d) for d in drifts])
