"""The blocking client as a thin face of the asynchronous one, without a service: every call of
:class:`AsyncClient` has its blocking twin with the same parameters, runs on the client's loop
thread with the caller's trace context, and hands back the answer, the error, the items of a
stream of answers (closing the call when the caller stops early) or a blocking Sync stream."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from marketo_destination_client import AsyncClient, BlockingSyncStream, Client, pb

THREAD = "marketo-destination-client"


class FakeStub:
    """The generated stub's calls used here, answering from memory and noting what they got."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.metadata: list[dict[str, str]] = []
        self.cancelled = 0

    def _note(self, metadata: Any) -> None:
        self.threads.append(threading.current_thread().name)
        self.metadata.append(dict(metadata))

    async def GetDestination(self, request: Any, *, metadata: Any, **options: Any) -> Any:
        self._note(metadata)
        if request.destination_id == "missing":
            raise LookupError("no such destination")
        destination = pb.Destination(id=request.destination_id)
        return pb.GetDestinationResponse(destination=destination)

    async def ListDestinations(self, request: Any, *, metadata: Any, **options: Any) -> Any:
        self._note(metadata)
        pages = {"": (["d1", "d2"], "next"), "next": (["d3"], "")}
        ids, token = pages[request.page_token]
        destinations = [pb.Destination(id=i) for i in ids]
        return pb.ListDestinationsResponse(destinations=destinations, next_page_token=token)

    def WatchAlerts(self, request: Any, *, metadata: Any) -> Any:
        stub = self

        class Call:
            def __aiter__(self) -> AsyncIterator[Any]:
                return self.events()

            async def events(self) -> AsyncIterator[Any]:
                for n in range(100):
                    yield pb.WatchAlertsResponse(alert=pb.Alert(id=f"a{n}"))

            def cancel(self) -> None:
                stub.cancelled += 1

        self._note(metadata)
        return Call()


@pytest.fixture
def client() -> Iterator[tuple[Client, FakeStub]]:
    with Client() as blocking:  # the channel connects lazily: no service is needed
        stub = FakeStub()
        blocking.aio._stub = stub
        yield blocking, stub


def test_every_async_call_has_a_blocking_twin_with_the_same_parameters() -> None:
    calls = [
        name
        for name, method in vars(AsyncClient).items()
        if not name.startswith("_") and callable(method) and name != "close"
    ]
    assert len(calls) == 16
    for name in calls:
        twin = getattr(Client, name)
        assert (
            inspect.signature(twin).parameters
            == inspect.signature(getattr(AsyncClient, name)).parameters
        ), name
        assert twin.__qualname__ == f"Client.{name}"
        assert f":meth:`AsyncClient.{name}`" in (twin.__doc__ or "")


def test_a_call_runs_on_the_clients_thread_with_the_callers_trace_context(
    client: tuple[Client, FakeStub],
) -> None:
    blocking, stub = client
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("caller") as span:
        destination = blocking.get_destination("d1")
    assert isinstance(destination, pb.Destination) and destination.id == "d1"
    assert stub.threads == [THREAD]
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert stub.metadata[0]["traceparent"].split("-")[1] == trace_id


def test_a_failed_call_raises_its_error_in_the_caller(client: tuple[Client, FakeStub]) -> None:
    blocking, _ = client
    with pytest.raises(LookupError, match="no such destination"):
        blocking.get_destination("missing")
    with pytest.raises(ValueError, match="profile_id or dedupe_value"):
        blocking.list_profile_outcomes("d1")


def test_pages_are_read_as_one_iterator(client: tuple[Client, FakeStub]) -> None:
    blocking, stub = client
    assert [d.id for d in blocking.all_destinations()] == ["d1", "d2", "d3"]
    assert stub.threads == [THREAD, THREAD]


def test_leaving_a_watch_early_ends_its_call(client: tuple[Client, FakeStub]) -> None:
    blocking, stub = client
    alerts = blocking.watch_alerts("d1")
    assert [next(alerts).id, next(alerts).id] == ["a0", "a1"]
    assert stub.cancelled == 0
    # The loop is busy for a while: only a close that waits for the call's end sees it ended.
    blocking._loop.call_soon_threadsafe(time.sleep, 0.2)
    alerts.close()
    assert stub.cancelled == 1


def test_an_iterator_left_open_after_close_does_not_fail() -> None:
    blocking = Client()
    blocking.aio._stub = FakeStub()
    alerts = blocking.watch_alerts("d1")
    assert next(alerts).id == "a0"
    blocking.close()
    alerts.close()  # the loop is gone: nothing is left to end


def test_a_sync_stream_is_the_blocking_one_on_the_clients_loop(
    client: tuple[Client, FakeStub],
) -> None:
    blocking, _ = client
    stream = blocking.sync_stream("d1", depth=3)
    assert isinstance(stream, BlockingSyncStream)
    assert stream._loop is blocking._loop and stream._stream.depth == 3
    stream.close()  # nothing was sent: no call was opened
    with pytest.raises(RuntimeError, match="closed"):
        stream.send([])


def test_a_blocking_call_from_the_clients_own_thread_fails_instead_of_waiting_forever(
    client: tuple[Client, FakeStub],
) -> None:
    blocking, stub = client

    async def on_the_loop() -> None:  # as an on_retry callback runs
        blocking.get_destination("d1")

    waiting = asyncio.run_coroutine_threadsafe(on_the_loop(), blocking._loop)
    with pytest.raises(RuntimeError, match="own thread"):
        waiting.result(timeout=10)
    assert stub.threads == []
    assert blocking.get_destination("d2").id == "d2"  # the client still works
