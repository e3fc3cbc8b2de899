"""Network seams for egress tests: nothing here ever sends a byte off loopback.

- `Listener`: a TCP server on 127.0.0.1 that records every connection and, when asked, answers
  each HTTP request with 200 (a webhook receiver, or a target that must receive nothing);
- `FakeResolver`: answers names from a table and records every look-up;
- `RecordingBackend`: httpcore's network backend that records where each connection would go
  and opens it only when that is a loopback address;
- `LoopbackOnly`: an httpx transport for Marketo calls that records every request and sends it
  only when its host is a loopback address (anything else fails as unreachable).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

import httpcore
import httpx


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Listener:
    """A loopback TCP server; `connections` counts accepted connections, `requests` holds the
    raw HTTP requests read when `answer` is set."""

    def __init__(self, *, answer: bool = False) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Listener:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.answer:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class FakeResolver:
    """Resolves names from `table`; `lookups` records every (host, port) asked for."""

    def __init__(self, table: dict[str, Sequence[str]]) -> None:
        self.table = table
        self.lookups: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.lookups.append((host, port))
        if host not in self.table:
            raise OSError(f"unknown name {host}")
        return self.table[host]


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Records every `(address, port)` a connection is opened to; opens loopback ones only."""

    def __init__(self) -> None:
        self.connects: list[tuple[str, int]] = []
        self._real = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        if not _loopback(host):
            raise httpcore.ConnectError("test backend: no connection off loopback")
        return await self._real.connect_tcp(host, port, timeout, local_address, socket_options)

    async def sleep(self, seconds: float) -> None:
        await self._real.sleep(seconds)


class LoopbackOnly(httpx.AsyncBaseTransport):
    """Marketo's transport in tests: records each request's URL; only loopback hosts are
    reached (for real), any other host fails with ConnectError before a byte is sent."""

    def __init__(self) -> None:
        self.urls: list[httpx.URL] = []
        self._real = httpx.AsyncHTTPTransport(trust_env=False)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.urls.append(request.url)
        if not _loopback(request.url.host):
            raise httpx.ConnectError("test transport: no connection off loopback", request=request)
        return await self._real.handle_async_request(request)

    async def aclose(self) -> None:
        await self._real.aclose()
