"""In-process transport: httpx.ASGITransport with dropped connections as transport errors."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette

from sandbox.app import ConnectionDropped


class _SandboxTransport(httpx.ASGITransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except ConnectionDropped:
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            ) from None


def asgi_transport(app: Starlette) -> httpx.AsyncBaseTransport:
    """A transport that serves requests from `app` in process."""
    return _SandboxTransport(app=app)
