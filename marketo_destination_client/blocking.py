"""The synchronous facade: :class:`Client` runs an :class:`AsyncClient` on an event loop in a
background thread and waits for each call, for programs without asyncio.

Every request is built, sent and read by :class:`AsyncClient` alone: each method of
:class:`Client` is the asynchronous one, called on the client's loop through :func:`_blocking`
with one of three ways of waiting for what it gives (an answer, an iterator, a Sync stream)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterable, Iterator
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

from marketo_destination_client.client import AsyncClient
from marketo_destination_client.connection import Connection
from marketo_destination_client.stream import RetryEvent, SyncResult, SyncStream, UpdateRejection

__all__ = ["BlockingSyncStream", "Client"]

T = TypeVar("T")
Given = TypeVar("Given")
Result = TypeVar("Result")
P = ParamSpec("P")


def _wait_on(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on ``loop`` (running in another thread) in a copy of the caller's
    context, so with its OpenTelemetry trace context, and wait for its result.

    Raises :class:`RuntimeError` when called on ``loop`` itself (e.g. from ``on_retry``), where
    waiting would never end."""
    if _running_loop() is loop:
        coroutine.close()
        raise RuntimeError(
            "a blocking call from the client's own thread (e.g. in on_retry) would wait forever"
        )
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _iterate_on(loop: asyncio.AbstractEventLoop, items: AsyncIterator[T]) -> Iterator[T]:
    """``items`` read one by one on ``loop``; closing the iterator closes an async generator
    there (ending the call it reads)."""

    async def step() -> T:
        return await anext(items)

    async def finish() -> None:
        if isinstance(items, AsyncGenerator):
            await items.aclose()

    try:
        while True:
            try:
                yield _wait_on(loop, step())
            except StopAsyncIteration:
                return
    finally:
        if not loop.is_closed():
            _wait_on(loop, finish())


def _blocking(
    method: Callable[Concatenate[AsyncClient, P], Given],
    wait: Callable[[Client, Given], Result],
    note: str = "",
) -> Callable[Concatenate[Client, P], Result]:
    """A method of :class:`Client`: ``method`` of the :class:`AsyncClient` underneath, called
    with the same arguments in the caller's thread, and what it gives (a coroutine, an async
    iterator, a :class:`SyncStream`) passed to ``wait``, which runs it on the client's loop."""

    def call(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> Result:
        return wait(self, method(self.aio, *args, **kwargs))

    name = method.__name__
    call.__name__ = name
    call.__qualname__ = f"Client.{name}"
    call.__doc__ = f"See :meth:`AsyncClient.{name}`{note}."
    # help() and inspect.signature show the parameters; the return type is ``wait``'s.
    parameters = inspect.signature(method).replace(return_annotation=inspect.Signature.empty)
    call.__signature__ = parameters  # type: ignore[attr-defined]
    return call


def _answer(client: Client, coroutine: Coroutine[Any, Any, T]) -> T:
    """Wait for a unary call's answer."""
    return _wait_on(client._loop, coroutine)


def _items(client: Client, items: AsyncIterator[T]) -> Iterator[T]:
    """Read a server stream (or pages) item by item."""
    return _iterate_on(client._loop, items)


def _sync_stream(client: Client, stream: SyncStream) -> BlockingSyncStream:
    """Drive a Sync stream from the caller's thread."""
    return BlockingSyncStream(stream, client._loop)


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
            self._client = _wait_on(self._loop, make())
        except BaseException:
            self._stop_loop()
            raise

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel and stop the background thread."""
        if self._loop.is_closed():
            return
        try:
            _wait_on(self._loop, self._client.close())
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

    configure = _blocking(AsyncClient.configure, _answer)
    get_destination = _blocking(AsyncClient.get_destination, _answer)
    list_destinations = _blocking(AsyncClient.list_destinations, _answer)
    all_destinations = _blocking(AsyncClient.all_destinations, _items)
    delete_destination = _blocking(AsyncClient.delete_destination, _answer)
    describe_marketo = _blocking(AsyncClient.describe_marketo, _answer)
    activate = _blocking(AsyncClient.activate, _answer)
    deactivate = _blocking(AsyncClient.deactivate, _answer)
    sync_stream = _blocking(
        AsyncClient.sync_stream, _sync_stream, "; ``on_retry`` runs in the client's thread"
    )
    reconcile = _blocking(AsyncClient.reconcile, _answer)
    preview_sync = _blocking(AsyncClient.preview_sync, _answer)
    resync = _blocking(AsyncClient.resync, _answer)
    forget_profile = _blocking(AsyncClient.forget_profile, _answer)
    get_dataflow = _blocking(AsyncClient.get_dataflow, _answer)
    list_profile_outcomes = _blocking(AsyncClient.list_profile_outcomes, _answer)
    watch_alerts = _blocking(
        AsyncClient.watch_alerts, _items, "; closing the iterator ends the call"
    )


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
        _wait_on(self._loop, self._stream.__aexit__(kind, error, traceback))

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
        answer = _wait_on(self._loop, self._stream.send(updates, request_id=request_id))

        async def wait() -> SyncResult:
            return await answer

        return asyncio.run_coroutine_threadsafe(wait(), self._loop)

    def close(self) -> None:
        """See :meth:`SyncStream.close`."""
        _wait_on(self._loop, self._stream.close())

    def abort(self) -> None:
        """See :meth:`SyncStream.abort`."""
        _wait_on(self._loop, self._stream.abort())
