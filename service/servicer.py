"""The gRPC servicer of ``marketo_destination.v1.MarketoDestinationService``.

Thin by design: each method converts the request to domain types, awaits one use case and converts
the result back. Errors are raised as :mod:`service.errors` and reported by the error
interceptor; authentication and tracing are interceptors too.

RPCs whose capability a later issue delivers raise :class:`~service.errors.Unimplemented`, naming
that issue: no fake success.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from service.errors import Unimplemented

__all__ = ["MarketoDestinationServicer"]

_Context = grpc.aio.ServicerContext[Any, Any]


def _later(rpc: str, issue: int) -> Unimplemented:
    return Unimplemented(f"{rpc} is not implemented yet (issue {issue})")


class MarketoDestinationServicer:
    """Implements every RPC of the v1 contract (a contract test keeps the two in step)."""

    async def Configure(
        self, request: pb.ConfigureRequest, context: _Context
    ) -> pb.ConfigureResponse:
        raise _later("Configure", 6)

    async def GetDestination(
        self, request: pb.GetDestinationRequest, context: _Context
    ) -> pb.GetDestinationResponse:
        raise _later("GetDestination", 6)

    async def ListDestinations(
        self, request: pb.ListDestinationsRequest, context: _Context
    ) -> pb.ListDestinationsResponse:
        raise _later("ListDestinations", 6)

    async def DeleteDestination(
        self, request: pb.DeleteDestinationRequest, context: _Context
    ) -> pb.DeleteDestinationResponse:
        raise _later("DeleteDestination", 6)

    async def DescribeMarketo(
        self, request: pb.DescribeMarketoRequest, context: _Context
    ) -> pb.DescribeMarketoResponse:
        raise _later("DescribeMarketo", 6)

    async def Activate(self, request: pb.ActivateRequest, context: _Context) -> pb.ActivateResponse:
        raise _later("Activate", 6)

    async def Deactivate(
        self, request: pb.DeactivateRequest, context: _Context
    ) -> pb.DeactivateResponse:
        raise _later("Deactivate", 6)

    async def Sync(
        self, request_iterator: AsyncIterator[pb.SyncRequest], context: _Context
    ) -> AsyncIterator[pb.SyncResponse]:
        raise _later("Sync", 7)
        yield pb.SyncResponse()  # an async generator, as streaming RPCs will be

    async def PreviewSync(
        self, request: pb.PreviewSyncRequest, context: _Context
    ) -> pb.PreviewSyncResponse:
        raise _later("PreviewSync", 5)

    async def GetDataflow(
        self, request: pb.GetDataflowRequest, context: _Context
    ) -> pb.GetDataflowResponse:
        raise _later("GetDataflow", 7)

    async def ListProfileOutcomes(
        self, request: pb.ListProfileOutcomesRequest, context: _Context
    ) -> pb.ListProfileOutcomesResponse:
        raise _later("ListProfileOutcomes", 7)

    async def WatchAlerts(
        self, request: pb.WatchAlertsRequest, context: _Context
    ) -> AsyncIterator[pb.WatchAlertsResponse]:
        raise _later("WatchAlerts", 7)
        yield pb.WatchAlertsResponse()
