"""What one client connection may take of the server (`service.api.server.ServerLimits`), each limit
seen from a real client against a real server on port 0.

The defaults would take minutes (ages, idle times) or megabytes to reach, so most tests build the
server with small limits: what is checked is that `build_server` gives grpc each limit, and what
a client meets past it. Waits are generous: a limit that is not applied fails by a call that goes
through or a connection that stays up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import grpc
import pytest

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from service.api import sync_checks
from service.api.server import ServerLimits, build_server
from service.api.servicer import MarketoDestinationServicer
from service.settings import Settings
from tests.harness import Service


class _Calls:
    """The test service: calls held until released, answers of a chosen size, a stream that
    sends nothing."""

    def __init__(self) -> None:
        self.entered = 0
        self.release = asyncio.Event()
        self._changed = asyncio.Condition()

    async def hold(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        async with self._changed:
            self.entered += 1
            self._changed.notify_all()
        await self.release.wait()
        return b"released"

    async def wait_entered(self, count: int) -> None:
        """Until `count` Hold calls have reached the handler."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.entered >= count)

    async def echo(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return b"x" * int(request.decode())

    async def silent(
        self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        await asyncio.Event().wait()
        yield b""  # never reached: the stream only ends when the connection does

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        return grpc.method_handlers_generic_handler(
            "test.Limits",
            {
                "Hold": grpc.unary_unary_rpc_method_handler(self.hold),
                "Echo": grpc.unary_unary_rpc_method_handler(self.echo),
                "Silent": grpc.unary_stream_rpc_method_handler(self.silent),
            },
        )


Serve = Callable[..., AbstractAsyncContextManager[tuple[grpc.aio.Channel, _Calls]]]


@pytest.fixture
def serve(settings: Settings, service: Service) -> Serve:
    """Start a server with `limits`; yields a channel to it (with `client_options`)."""

    @asynccontextmanager
    async def start(
        limits: ServerLimits, client_options: list[tuple[str, Any]] | None = None
    ) -> AsyncIterator[tuple[grpc.aio.Channel, _Calls]]:
        calls = _Calls()
        server, port = await build_server(
            settings,
            servicer=MarketoDestinationServicer(service.app),
            extra_handlers=[calls.handler()],
            open_services={"test.Limits"},
            limits=limits,
        )
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=client_options)
        try:
            yield channel, calls
        finally:
            calls.release.set()
            await channel.close()
            await server.stop(None)

    return start


def _call(channel: grpc.aio.Channel, method: str, request: bytes, **kwargs: Any) -> Any:
    return channel.unary_unary(f"/test.Limits/{method}")(request, **kwargs)


async def _code(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code()


# -- message sizes -------------------------------------------------------------------------------


async def test_a_request_larger_than_the_receive_limit_is_resource_exhausted(serve: Serve) -> None:
    async with serve(ServerLimits(max_receive_message_bytes=64 * 1024)) as (channel, _):
        assert await _call(channel, "Echo", b"1".ljust(60 * 1024, b" ")) == b"x"
        too_large = b"1".ljust(65 * 1024, b" ")
        assert await _code(_call(channel, "Echo", too_large)) == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_an_answer_larger_than_the_send_limit_is_resource_exhausted(serve: Serve) -> None:
    async with serve(ServerLimits(max_send_message_bytes=64 * 1024)) as (channel, _):
        assert len(await _call(channel, "Echo", str(60 * 1024).encode())) == 60 * 1024
        too_large = _call(channel, "Echo", str(65 * 1024).encode())
        assert await _code(too_large) == grpc.StatusCode.RESOURCE_EXHAUSTED


def _largest_update(number: int) -> pb.ProfileUpdate:
    """A valid update at every limit: ids at their longest, the largest profile, every
    membership (64-character audience ids)."""
    update = pb.ProfileUpdate(
        profile_id=f"{number}".ljust(sync_checks.MAX_PROFILE_ID_LENGTH, "p"),
        update_id=f"{number}".ljust(sync_checks.MAX_UPDATE_ID_LENGTH, "u"),
    )
    update.event_time.FromSeconds(1_780_000_000)
    update.profile.update({"notes": ""})
    filler = sync_checks.MAX_PROFILE_BYTES - update.profile.ByteSize() - 8
    update.profile.update({"notes": "n" * filler})
    assert (
        sync_checks.MAX_PROFILE_BYTES - 8
        <= update.profile.ByteSize()
        <= sync_checks.MAX_PROFILE_BYTES
    )
    for index in range(sync_checks.MAX_MEMBERSHIPS):
        update.audiences.add(
            audience_id=f"{index}".ljust(64, "a"), status=pb.MEMBERSHIP_STATUS_REALIZED
        )
    return update


async def test_the_default_receive_limit_takes_ten_updates_at_every_limit(
    service: Service,
) -> None:
    request = pb.SyncRequest(destination_id="dst_unknown")
    request.updates.extend(_largest_update(n) for n in range(10))
    assert request.ByteSize() <= ServerLimits().max_receive_message_bytes
    call = service.stub.Sync(iter([request]))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    # The request was read: the destination was looked for.
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value.details()


async def test_the_default_receive_limit_refuses_a_larger_request(service: Service) -> None:
    request = pb.SyncRequest(destination_id="dst_unknown")
    request.updates.extend(_largest_update(n) for n in range(16))
    assert request.ByteSize() > ServerLimits().max_receive_message_bytes
    call = service.stub.Sync(iter([request]))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# -- streams per connection ----------------------------------------------------------------------


async def test_a_call_past_the_concurrent_streams_waits_for_one_to_end(serve: Serve) -> None:
    async with serve(ServerLimits(max_concurrent_streams=2)) as (channel, calls):
        first, second = _call(channel, "Hold", b""), _call(channel, "Hold", b"")
        async with asyncio.timeout(10):
            await calls.wait_entered(2)
        third = asyncio.ensure_future(_call(channel, "Hold", b""))
        await asyncio.sleep(0.5)
        assert calls.entered == 2, "the third call must wait for a stream"
        assert not third.done()

        first.cancel()
        async with asyncio.timeout(10):
            await calls.wait_entered(3)
        calls.release.set()
        assert await second == await third == b"released"


# -- keepalive and connection lifetime -----------------------------------------------------------


_EAGER = [
    ("grpc.keepalive_time_ms", 100),  # grpc's client sends about one a second at most
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
]
"""A client that pings as often as it can while its call sends nothing."""


async def test_a_client_pinging_too_often_is_disconnected(serve: Serve) -> None:
    limits = ServerLimits(min_ping_interval_seconds=10.0, max_ping_strikes=1)
    async with serve(limits, _EAGER) as (channel, _):
        silent = channel.unary_stream("/test.Limits/Silent")(b"")
        async with asyncio.timeout(20):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await silent.read()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "ping" in (caught.value.details() or "").lower()


async def test_a_client_pinging_within_the_limit_stays_connected(serve: Serve) -> None:
    limits = ServerLimits(min_ping_interval_seconds=0.05, max_ping_strikes=1)
    async with serve(limits, _EAGER) as (channel, _):
        silent = channel.unary_stream("/test.Limits/Silent")(b"")
        await asyncio.sleep(6.0)  # grpc's own default (5 minutes) would have closed it by now
        assert not silent.done()
        silent.cancel()


async def test_a_client_pinging_without_a_call_is_disconnected(serve: Serve) -> None:
    # Pings this often are allowed during a call (the test above), never without one.
    limits = ServerLimits(min_ping_interval_seconds=0.05, max_ping_strikes=1)
    async with serve(limits, _EAGER) as (channel, _):
        assert await _call(channel, "Echo", b"1") == b"x"
        async with asyncio.timeout(20):
            while channel.get_state() is grpc.ChannelConnectivity.READY:
                await channel.wait_for_state_change(grpc.ChannelConnectivity.READY)


async def test_an_idle_connection_is_closed(serve: Serve) -> None:
    async with serve(ServerLimits(max_connection_idle_seconds=0.3)) as (channel, _):
        assert await _call(channel, "Echo", b"1") == b"x"
        assert channel.get_state() is grpc.ChannelConnectivity.READY
        async with asyncio.timeout(10):
            while channel.get_state() is grpc.ChannelConnectivity.READY:
                await channel.wait_for_state_change(grpc.ChannelConnectivity.READY)
        assert await _call(channel, "Echo", b"1") == b"x"  # the client connects again


async def test_a_call_outliving_the_connection_age_and_grace_ends_unavailable(
    serve: Serve,
) -> None:
    limits = ServerLimits(max_connection_age_seconds=0.3, max_connection_age_grace_seconds=0.3)
    async with serve(limits) as (channel, _):
        silent = channel.unary_stream("/test.Limits/Silent")(b"")
        async with asyncio.timeout(10):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await silent.read()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert await _call(channel, "Echo", b"1") == b"x"  # on a new connection


def test_the_defaults_are_what_the_documentation_says() -> None:
    options = dict(ServerLimits().options())
    assert options == {
        "grpc.max_concurrent_streams": 100,
        "grpc.max_receive_message_length": 4 * 1024 * 1024,
        "grpc.max_send_message_length": 16 * 1024 * 1024,
        "grpc.keepalive_permit_without_calls": 0,
        "grpc.http2.min_ping_interval_without_data_ms": 30_000,
        "grpc.http2.max_ping_strikes": 2,
        "grpc.max_connection_idle_ms": 600_000,
        "grpc.max_connection_age_ms": 3_600_000,
        "grpc.max_connection_age_grace_ms": 300_000,
    }
