"""A pipelined Sync stream: several requests in flight, answers matched by ``request_id``,
back-off on RESOURCE_EXHAUSTED / UNAVAILABLE as the service's RetryInfo asks, and a reconnect
that sends again every request not yet acknowledged.

Resending is safe: the service recognises an update sent twice by its ``update_id`` (derived
from the profile id, event time and content when left empty), so a request whose answer was lost
is accepted again without being delivered twice.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc

from marketo_destination_client.errors import RETRYABLE, SyncStreamError, retry_delay
from marketo_destination_client.messages import pb

__all__ = [
    "DEFAULT_BACKOFF",
    "DEFAULT_DEPTH",
    "Backoff",
    "RetryEvent",
    "SyncResult",
    "SyncStream",
    "UpdateRejection",
]

_log = logging.getLogger("marketo_destination_client")

# The service checks and commits up to 8 requests of a stream together (the Sync RPC's comment
# in proto/marketo_destination/v1/destination.proto): more in flight only queue.
DEFAULT_DEPTH = 8

MAX_UPDATES_PER_REQUEST = 10_000
"""The service's bound on the updates of one Sync request."""

OpenCall = Callable[[AsyncIterator[Any]], Any]


@dataclass(frozen=True)
class UpdateRejection:
    """One update the service refused, with the update itself."""

    index: int
    field: str
    reason: str
    update: Any  # pb.ProfileUpdate

    @property
    def profile_id(self) -> str:
        """The refused update's profile id."""
        profile_id: str = self.update.profile_id
        return profile_id


@dataclass(frozen=True)
class SyncResult:
    """The service's answer to one request: its updates are durably accepted but for
    ``rejections``. ``attempts`` counts the times the request was sent (more than 1 after a
    reconnect)."""

    request_id: str
    accepted: int
    ack_sequence: int
    rejections: tuple[UpdateRejection, ...]
    attempts: int


@dataclass(frozen=True)
class RetryEvent:
    """A stream that failed and will be opened again after ``delay`` seconds, sending the
    ``resend`` requests not yet acknowledged. ``from_retry_info``: the delay is the service's."""

    code: grpc.StatusCode
    details: str
    delay: float
    from_retry_info: bool
    failures: int
    resend: int


@dataclass(frozen=True)
class Backoff:
    """Delays between reconnects when the service gives no RetryInfo: ``initial`` seconds,
    multiplied by ``multiplier`` after each failure without progress, at most ``maximum``.
    The stream gives up after ``max_failures`` failures in a row without an answer."""

    initial: float = 0.2
    multiplier: float = 2.0
    maximum: float = 10.0
    max_failures: int = 8

    def delay(self, failures: int) -> float:
        """The delay after the ``failures``-th failure in a row (1 for the first)."""
        return float(min(self.initial * self.multiplier ** (failures - 1), self.maximum))


DEFAULT_BACKOFF = Backoff()


@dataclass
class _Pending:
    request: Any  # pb.SyncRequest
    future: asyncio.Future[SyncResult]
    attempts: int = 0


@dataclass
class _Connection:
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)


class SyncStream:
    """A Sync stream to one destination. Use it as an async context manager; ``send`` returns
    a future of the request's :class:`SyncResult`; leaving the block waits for every answer.

    Obtain it from :meth:`marketo_destination_client.AsyncClient.sync_stream`.
    """

    def __init__(
        self,
        open_call: OpenCall,
        destination_id: str,
        *,
        depth: int = DEFAULT_DEPTH,
        backoff: Backoff = DEFAULT_BACKOFF,
        on_retry: Callable[[RetryEvent], None] | None = None,
    ) -> None:
        if not destination_id:
            raise ValueError("destination_id: required")
        if depth < 1:
            raise ValueError(f"depth: must be at least 1, got {depth}")
        self._open_call = open_call
        self._destination_id = destination_id
        self._depth = depth
        self._backoff = backoff
        self._on_retry = on_retry
        self._prefix = uuid.uuid4().hex[:12]
        self._numbers = itertools.count(1)
        self._pending: dict[str, _Pending] = {}
        self._slots: asyncio.Semaphore | None = None
        self._connection: _Connection | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._error: SyncStreamError | None = None
        self.rejections: list[UpdateRejection] = []
        """Every update the service refused on this stream, in answer order."""
        self.retries: list[RetryEvent] = []
        """Every reconnect of this stream, in order."""

    @property
    def depth(self) -> int:
        """Requests kept in flight at most."""
        return self._depth

    @property
    def unacknowledged(self) -> int:
        """Requests sent and not answered yet."""
        return len(self._pending)

    async def __aenter__(self) -> SyncStream:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is None:
            await self.close()
        else:
            await self.abort()

    async def send(
        self, updates: Iterable[Any], *, request_id: str | None = None
    ) -> asyncio.Future[SyncResult]:
        """Queue one request of ``updates`` (at most 10,000) and return the future of its answer.

        Waits while ``depth`` requests are in flight. ``request_id``: unique among the stream's
        unanswered requests; empty gives one. Raises :class:`SyncStreamError` once the stream
        has failed, and :class:`ValueError` (sending nothing) for more than 10,000 updates, which
        the service would answer by ending the stream.
        """
        updates = list(updates)
        if len(updates) > MAX_UPDATES_PER_REQUEST:
            raise ValueError(
                f"updates: {len(updates)} in one request, at most {MAX_UPDATES_PER_REQUEST}"
            )
        if self._error is not None:
            raise self._error
        if self._closing:
            raise RuntimeError("the Sync stream is closed")
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._depth)
        await self._slots.acquire()
        if self._error is not None:
            self._slots.release()
            raise self._error
        request_id = request_id or f"{self._prefix}-{next(self._numbers)}"
        if request_id in self._pending:
            self._slots.release()
            raise ValueError(f"request_id: {request_id!r} is already in flight on this stream")
        request = pb.SyncRequest(
            destination_id=self._destination_id, updates=updates, request_id=request_id
        )
        pending = _Pending(request, asyncio.get_running_loop().create_future())
        pending.future.add_done_callback(lambda _: self._release())
        self._pending[request_id] = pending
        if self._connection is not None:
            pending.attempts += 1
            self._connection.queue.put_nowait(request)
        if self._runner is None:
            self._runner = asyncio.create_task(self._run())
        return pending.future

    async def close(self) -> None:
        """Wait for every answer, then end the stream. Raises :class:`SyncStreamError` when the
        stream failed (each unanswered request's future holds the same error)."""
        self._closing = True
        if self._connection is not None:
            self._connection.queue.put_nowait(None)
        if self._runner is not None:
            await self._runner
        if self._error is not None:
            raise self._error

    async def abort(self) -> None:
        """End the stream now; unanswered requests fail with CANCELLED."""
        self._closing = True
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        self._fail(SyncStreamError(grpc.StatusCode.CANCELLED, "aborted", self._unanswered()))

    def _release(self) -> None:
        if self._slots is not None:
            self._slots.release()

    def _unanswered(self) -> tuple[str, ...]:
        return tuple(self._pending)

    def _fail(self, error: SyncStreamError) -> None:
        if self._error is None:
            self._error = error
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(error)
                # Marks the exception retrieved: the caller may hold only the stream's error.
                pending.future.exception()
        self._pending.clear()

    async def _run(self) -> None:
        failures = 0
        while True:
            connection = _Connection()
            for pending in self._pending.values():
                pending.attempts += 1
                connection.queue.put_nowait(pending.request)
            if self._closing:
                connection.queue.put_nowait(None)
            self._connection = connection
            answered, failure = await self._one_call(connection)
            self._connection = None
            if failure is None:
                if self._closing and not self._pending:
                    return
                # The service ended the stream (e.g. at its connection age): open another.
                failure = (grpc.StatusCode.UNAVAILABLE, "the stream ended early", None)
            code, details, service_delay = failure
            failures = 1 if answered else failures + 1
            if code not in RETRYABLE or failures > self._backoff.max_failures:
                self._fail(SyncStreamError(code, details, self._unanswered()))
                return
            delay = service_delay if service_delay is not None else self._backoff.delay(failures)
            event = RetryEvent(
                code, details, delay, service_delay is not None, failures, len(self._pending)
            )
            self.retries.append(event)
            _log.info(
                "Sync stream failed (%s: %s); reopening in %.2fs with %d unanswered requests",
                code.name,
                details,
                delay,
                event.resend,
            )
            if self._on_retry is not None:
                self._on_retry(event)
            await asyncio.sleep(delay)

    async def _one_call(
        self, connection: _Connection
    ) -> tuple[bool, tuple[grpc.StatusCode, str, float | None] | None]:
        """Run one call until it ends; whether it answered anything, and how it failed."""
        answered = False
        call = self._open_call(_requests(connection.queue))
        try:
            async for response in call:
                answered = True
                self._answer(response)
        except grpc.aio.AioRpcError as error:
            return answered, (error.code(), error.details() or "", retry_delay(error))
        finally:
            connection.queue.put_nowait(None)  # ends the request iterator of this call
            call.cancel()
        return answered, None

    def _answer(self, response: Any) -> None:
        pending = self._pending.pop(response.request_id, None)
        if pending is None:
            _log.warning("Sync answer for an unknown request_id %r ignored", response.request_id)
            return
        updates = pending.request.updates
        rejections = tuple(
            UpdateRejection(r.index, r.field, r.reason, updates[r.index])
            for r in response.rejected
            if 0 <= r.index < len(updates)
        )
        self.rejections.extend(rejections)
        if not pending.future.done():
            pending.future.set_result(
                SyncResult(
                    request_id=response.request_id,
                    accepted=response.accepted,
                    ack_sequence=response.ack_sequence,
                    rejections=rejections,
                    attempts=pending.attempts,
                )
            )


async def _requests(queue: asyncio.Queue[Any]) -> AsyncIterator[Any]:
    while (request := await queue.get()) is not None:
        yield request
