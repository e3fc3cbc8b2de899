"""The asynchronous client: one method per RPC of MarketoDestinationService, on grpc.aio."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from typing import Any

from marketo_destination_client.connection import Connection, call_metadata
from marketo_destination_client.messages import pb, pb_grpc
from marketo_destination_client.stream import (
    DEFAULT_BACKOFF,
    DEFAULT_DEPTH,
    Backoff,
    RetryEvent,
    SyncStream,
)

__all__ = ["AsyncClient"]


class AsyncClient:
    """A client of one service. Open it in the event loop that uses it, as an async context
    manager or with :meth:`close` at the end. A failed call raises ``grpc.aio.AioRpcError``
    (its code is the service's; see :func:`marketo_destination_client.retry_delay`).

    ``timeout``: seconds for each unary call (streams have none).
    """

    def __init__(self, connection: Connection | None = None, *, timeout: float | None = 30.0):
        self.connection = connection or Connection()
        self.timeout = timeout
        self._channel = self.connection.open_channel()
        self._stub: Any = pb_grpc.MarketoDestinationServiceStub(self._channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; calls still running are cancelled."""
        await self._channel.close(None)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return call_metadata(self.connection.token)

    async def _unary(self, method: str, request: Any) -> Any:
        return await getattr(self._stub, method)(
            request, metadata=self._metadata(), timeout=self.timeout
        )

    async def configure(
        self, spec: Any, *, destination_id: str = "", validate_only: bool = False
    ) -> Any:
        """Create (no ``destination_id``) or replace a destination's spec; the stored
        ``pb.Destination`` (with ``validate_only``, what would be stored)."""
        request = pb.ConfigureRequest(
            destination_id=destination_id, spec=spec, validate_only=validate_only
        )
        return (await self._unary("Configure", request)).destination

    async def get_destination(self, destination_id: str) -> Any:
        """One destination (``pb.Destination``)."""
        request = pb.GetDestinationRequest(destination_id=destination_id)
        return (await self._unary("GetDestination", request)).destination

    async def list_destinations(self, *, page_size: int = 0, page_token: str = "") -> Any:
        """One page of destinations (``pb.ListDestinationsResponse``), oldest first."""
        request = pb.ListDestinationsRequest(page_size=page_size, page_token=page_token)
        return await self._unary("ListDestinations", request)

    async def all_destinations(self, *, page_size: int = 0) -> AsyncIterator[Any]:
        """Every destination (``pb.Destination``), reading page after page."""
        token = ""
        while True:
            page = await self.list_destinations(page_size=page_size, page_token=token)
            for destination in page.destinations:
                yield destination
            token = page.next_page_token
            if not token:
                return

    async def delete_destination(self, destination_id: str) -> None:
        """Delete a destination, its activations and its pending updates."""
        await self._unary(
            "DeleteDestination", pb.DeleteDestinationRequest(destination_id=destination_id)
        )

    async def describe_marketo(
        self, *, destination_id: str | None = None, connection: Any = None
    ) -> Any:
        """Workspaces, partitions and fields (``pb.DescribeMarketoResponse``) of a stored
        destination's instance or of a ``pb.MarketoConnection`` to try: give one."""
        if (destination_id is None) == (connection is None):
            raise ValueError("describe_marketo: give destination_id or connection, not both")
        if destination_id is not None:
            request = pb.DescribeMarketoRequest(destination_id=destination_id)
        else:
            request = pb.DescribeMarketoRequest(connection=connection)
        return await self._unary("DescribeMarketo", request)

    async def activate(
        self,
        destination_id: str,
        audiences: Iterable[Any] = (),
        mappings: Iterable[Any] = (),
        *,
        dry_run: bool = False,
    ) -> list[Any]:
        """Activate audiences with a field mapping; the audiences' lists
        (``pb.ActivatedAudience``)."""
        request = pb.ActivateRequest(
            destination_id=destination_id,
            audiences=list(audiences),
            mappings=list(mappings),
            dry_run=dry_run,
        )
        return list((await self._unary("Activate", request)).audiences)

    async def deactivate(
        self, destination_id: str, audience_ids: Iterable[str], *, delete_lists: bool = False
    ) -> list[str]:
        """Stop exporting audiences; their ids (one already inactive included: a retry gets
        the first answer)."""
        request = pb.DeactivateRequest(
            destination_id=destination_id,
            audience_ids=list(audience_ids),
            delete_lists=delete_lists,
        )
        return list((await self._unary("Deactivate", request)).audience_ids)

    def sync_stream(
        self,
        destination_id: str,
        *,
        depth: int = DEFAULT_DEPTH,
        backoff: Backoff = DEFAULT_BACKOFF,
        on_retry: Callable[[RetryEvent], None] | None = None,
    ) -> SyncStream:
        """A pipelined, reconnecting Sync stream to one destination (:class:`SyncStream`).

        The trace context current here is the parent of every call the stream opens."""
        metadata = self._metadata()

        def open_call(requests: AsyncIterator[Any]) -> Any:
            return self._stub.Sync(requests, metadata=metadata)

        return SyncStream(
            open_call, destination_id, depth=depth, backoff=backoff, on_retry=on_retry
        )

    async def reconcile(
        self, destination_id: str, audience_ids: Iterable[str] = (), *, dry_run: bool = False
    ) -> list[Any]:
        """Compare the lists of the audiences (all when empty) with Marketo's real members and,
        unless ``dry_run``, repair them; one ``pb.ListDrift`` per list."""
        request = pb.ReconcileRequest(
            destination_id=destination_id, audience_ids=list(audience_ids), dry_run=dry_run
        )
        return list((await self._unary("Reconcile", request)).lists)

    async def preview_sync(self, destination_id: str, updates: Iterable[Any]) -> Any:
        """What Sync would do with ``updates``, writing nothing (``pb.PreviewSyncResponse``)."""
        request = pb.PreviewSyncRequest(destination_id=destination_id, updates=list(updates))
        return await self._unary("PreviewSync", request)

    async def resync(
        self, destination_id: str, *, profile_ids: Iterable[str] = (), dry_run: bool = False
    ) -> Any:
        """Write the desired state of some profiles (none: all) again, or with ``dry_run`` only
        estimate its cost (``pb.ResyncResponse``)."""
        request = pb.ResyncRequest(
            destination_id=destination_id, profile_ids=list(profile_ids), dry_run=dry_run
        )
        return await self._unary("Resync", request)

    async def forget_profile(
        self, destination_id: str, profile_id: str, *, delete_lead: bool = False
    ) -> Any:
        """Take a profile out of the destination's lists, delete its lead with ``delete_lead``,
        and never export it again (``pb.ForgetProfileResponse``)."""
        request = pb.ForgetProfileRequest(
            destination_id=destination_id, profile_id=profile_id, delete_lead=delete_lead
        )
        return await self._unary("ForgetProfile", request)

    async def get_dataflow(self, destination_id: str, *, hours: int = 0) -> Any:
        """The destination's dataflow metrics (``pb.Dataflow``)."""
        request = pb.GetDataflowRequest(destination_id=destination_id, hours=hours)
        return (await self._unary("GetDataflow", request)).dataflow

    async def list_profile_outcomes(
        self,
        destination_id: str,
        *,
        profile_id: str | None = None,
        dedupe_value: str | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> Any:
        """One page of a profile's outcomes, newest first (``pb.ListProfileOutcomesResponse``),
        by ``profile_id`` or ``dedupe_value``: give one."""
        if (profile_id is None) == (dedupe_value is None):
            raise ValueError("list_profile_outcomes: give profile_id or dedupe_value, not both")
        request = pb.ListProfileOutcomesRequest(
            destination_id=destination_id, page_size=page_size, page_token=page_token
        )
        if profile_id is not None:
            request.profile_id = profile_id
        if dedupe_value is not None:
            request.dedupe_value = dedupe_value
        return await self._unary("ListProfileOutcomes", request)

    async def watch_alerts(
        self, destination_id: str, *, include_open: bool = False
    ) -> AsyncGenerator[Any, None]:
        """The destination's alerts (``pb.Alert``) as they are raised and resolved; with
        ``include_open``, the open ones first. Runs until the caller stops iterating."""
        request = pb.WatchAlertsRequest(destination_id=destination_id, include_open=include_open)
        call = self._stub.WatchAlerts(request, metadata=self._metadata())
        try:
            async for event in call:
                yield event.alert
        finally:
            call.cancel()
