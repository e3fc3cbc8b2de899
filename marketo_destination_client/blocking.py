"""The synchronous facade: :class:`Client` runs an :class:`AsyncClient` on an event loop in a
background thread and waits for each call, for programs without asyncio."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

from marketo_destination_client.client import AsyncClient
from marketo_destination_client.connection import Connection
from marketo_destination_client.stream import (
    DEFAULT_BACKOFF,
    DEFAULT_DEPTH,
    Backoff,
    RetryEvent,
    SyncResult,
    SyncStream,
    UpdateRejection,
)

__all__ = ["BlockingSyncStream", "Client"]

T = TypeVar("T")


class Client:
    """The same calls as :class:`AsyncClient`, blocking. Close it (or use ``with``) to stop its
    thread. Safe to share between threads."""

    def __init__(self, connection: Connection | None = None, *, timeout: float | None = 30.0):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="marketo-destination-client", daemon=True
        )
        self._thread.start()

        async def make() -> AsyncClient:
            return AsyncClient(connection, timeout=timeout)

        try:
            self._client = self._run(make())
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel and stop the background thread."""
        if self._loop.is_closed():
            return
        try:
            self._run(self._client.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    @property
    def aio(self) -> AsyncClient:
        """The asynchronous client underneath (its loop runs in this client's thread)."""
        return self._client

    def configure(self, spec: Any, *, destination_id: str = "", validate_only: bool = False) -> Any:
        """See :meth:`AsyncClient.configure`."""
        return self._run(
            self._client.configure(spec, destination_id=destination_id, validate_only=validate_only)
        )

    def get_destination(self, destination_id: str) -> Any:
        """See :meth:`AsyncClient.get_destination`."""
        return self._run(self._client.get_destination(destination_id))

    def list_destinations(self, *, page_size: int = 0, page_token: str = "") -> Any:
        """See :meth:`AsyncClient.list_destinations`."""
        return self._run(self._client.list_destinations(page_size=page_size, page_token=page_token))

    def all_destinations(self, *, page_size: int = 0) -> Iterator[Any]:
        """See :meth:`AsyncClient.all_destinations`."""
        return self._iterate(self._client.all_destinations(page_size=page_size).__anext__)

    def delete_destination(self, destination_id: str) -> None:
        """See :meth:`AsyncClient.delete_destination`."""
        self._run(self._client.delete_destination(destination_id))

    def describe_marketo(self, *, destination_id: str | None = None, connection: Any = None) -> Any:
        """See :meth:`AsyncClient.describe_marketo`."""
        return self._run(
            self._client.describe_marketo(destination_id=destination_id, connection=connection)
        )

    def activate(
        self,
        destination_id: str,
        audiences: Iterable[Any] = (),
        mappings: Iterable[Any] = (),
        *,
        dry_run: bool = False,
    ) -> list[Any]:
        """See :meth:`AsyncClient.activate`."""
        return self._run(
            self._client.activate(destination_id, audiences, mappings, dry_run=dry_run)
        )

    def deactivate(
        self, destination_id: str, audience_ids: Iterable[str], *, delete_lists: bool = False
    ) -> list[str]:
        """See :meth:`AsyncClient.deactivate`."""
        return self._run(
            self._client.deactivate(destination_id, audience_ids, delete_lists=delete_lists)
        )

    def sync_stream(
        self,
        destination_id: str,
        *,
        depth: int = DEFAULT_DEPTH,
        backoff: Backoff = DEFAULT_BACKOFF,
        on_retry: Callable[[RetryEvent], None] | None = None,
    ) -> BlockingSyncStream:
        """See :meth:`AsyncClient.sync_stream`; ``on_retry`` runs in the client's thread."""
        stream = self._client.sync_stream(
            destination_id, depth=depth, backoff=backoff, on_retry=on_retry
        )
        return BlockingSyncStream(stream, self._loop)

    def reconcile(
        self, destination_id: str, audience_ids: Iterable[str] = (), *, dry_run: bool = False
    ) -> list[Any]:
        """See :meth:`AsyncClient.reconcile`."""
        return self._run(self._client.reconcile(destination_id, audience_ids, dry_run=dry_run))

    def preview_sync(self, destination_id: str, updates: Iterable[Any]) -> Any:
        """See :meth:`AsyncClient.preview_sync`."""
        return self._run(self._client.preview_sync(destination_id, updates))

    def resync(
        self, destination_id: str, *, profile_ids: Iterable[str] = (), dry_run: bool = False
    ) -> Any:
        """See :meth:`AsyncClient.resync`."""
        return self._run(
            self._client.resync(destination_id, profile_ids=profile_ids, dry_run=dry_run)
        )

    def forget_profile(
        self, destination_id: str, profile_id: str, *, delete_lead: bool = False
    ) -> Any:
        """See :meth:`AsyncClient.forget_profile`."""
        return self._run(
            self._client.forget_profile(destination_id, profile_id, delete_lead=delete_lead)
        )

    def get_dataflow(self, destination_id: str, *, hours: int = 0) -> Any:
        """See :meth:`AsyncClient.get_dataflow`."""
        return self._run(self._client.get_dataflow(destination_id, hours=hours))

    def list_profile_outcomes(
        self,
        destination_id: str,
        *,
        profile_id: str | None = None,
        dedupe_value: str | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> Any:
        """See :meth:`AsyncClient.list_profile_outcomes`."""
        return self._run(
            self._client.list_profile_outcomes(
                destination_id,
                profile_id=profile_id,
                dedupe_value=dedupe_value,
                page_size=page_size,
                page_token=page_token,
            )
        )

    def watch_alerts(self, destination_id: str, *, include_open: bool = False) -> Iterator[Any]:
        """See :meth:`AsyncClient.watch_alerts`; closing the iterator ends the call."""
        alerts = self._client.watch_alerts(destination_id, include_open=include_open)
        return self._iterate(alerts.__anext__, alerts.aclose)

    def _iterate(
        self,
        next_item: Callable[[], Awaitable[T]],
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> Iterator[T]:
        async def step() -> T:
            return await next_item()

        async def finish() -> None:
            if close is not None:
                await close()

        try:
            while True:
                try:
                    yield self._run(step())
                except StopAsyncIteration:
                    return
        finally:
            if not self._loop.is_closed():
                self._run(finish())


class BlockingSyncStream:
    """:class:`SyncStream` for threads: ``send`` blocks while the stream is full and returns a
    ``concurrent.futures.Future`` of the request's :class:`SyncResult`."""

    def __init__(self, stream: SyncStream, loop: asyncio.AbstractEventLoop) -> None:
        self._stream = stream
        self._loop = loop

    def __enter__(self) -> BlockingSyncStream:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is None:
            self.close()
        else:
            self.abort()

    @property
    def rejections(self) -> list[UpdateRejection]:
        """Every update the service refused on this stream."""
        return self._stream.rejections

    @property
    def retries(self) -> list[RetryEvent]:
        """Every reconnect of this stream."""
        return self._stream.retries

    def send(
        self, updates: Iterable[Any], *, request_id: str | None = None
    ) -> concurrent.futures.Future[SyncResult]:
        """See :meth:`SyncStream.send`."""
        stream = self._stream

        async def submit() -> asyncio.Future[SyncResult]:
            return await stream.send(updates, request_id=request_id)

        answer = asyncio.run_coroutine_threadsafe(submit(), self._loop).result()

        async def wait() -> SyncResult:
            return await answer

        return asyncio.run_coroutine_threadsafe(wait(), self._loop)

    def close(self) -> None:
        """See :meth:`SyncStream.close`."""
        asyncio.run_coroutine_threadsafe(self._stream.close(), self._loop).result()

    def abort(self) -> None:
        """See :meth:`SyncStream.abort`."""
        asyncio.run_coroutine_threadsafe(self._stream.abort(), self._loop).result()
