"""The ASGI application: routing, the per-call pipeline (limits, auth, faults) and identity."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from sandbox import activities, assets, bulk, control, extract, leads, lists, stats
from sandbox.auth import Tokens
from sandbox.clock import Clock, SystemClock
from sandbox.faults import FAULT_CODES, Fault, Faults
from sandbox.http import (
    Call,
    MarketoError,
    Reply,
    asset_error,
    html_error,
    lead_error,
)
from sandbox.limits import (
    UNCOUNTED_CODES,
    CallStats,
    Limiter,
    concurrency_message,
    quota_day,
    rate_message,
)
from sandbox.settings import SandboxSettings
from sandbox.state import SandboxState

Handler = Callable[[Call], Awaitable[Reply]]

REPLICA_HEADER = "X-Marketo-Dest-Replica"
"""The header naming the calling service replica (logged with `log_calls`)."""

HTTP_REASONS = {502: "Bad Gateway", 503: "Service Temporarily Unavailable", 504: "Gateway Time-out"}


class ConnectionDropped(Exception):
    """Raised to the ASGI server when a fault drops the connection without a response."""


class Sandbox:
    """One emulated instance: settings, state, limits, tokens, faults and counters."""

    def __init__(self, settings: SandboxSettings, clock: Clock) -> None:
        settings.validate()
        self.base_settings = settings
        self.clock = clock
        self.reset(settings)

    def reset(self, settings: SandboxSettings) -> None:
        """Forget everything and start over with `settings`."""
        self.settings = settings
        self.state = SandboxState(settings, self.clock.now())
        self.limiter = Limiter(settings)
        self.stats = CallStats()
        self.faults = Faults()
        self.tokens = Tokens()
        self._request_ids = itertools.count(0x1A2B)

    def request_id(self, now: float) -> str:
        """`<hex>#<hex epoch ms>`, like `6227#17d4f044661`."""
        return f"{next(self._request_ids):x}#{int(now * 1000):x}"


GZIP_THRESHOLD = 1024
"""Marketo compresses response bodies of 1024 bytes and more when asked to, bulk APIs never."""


def _render(sandbox: Sandbox, reply: Reply, now: float, request: Request) -> Response:
    if isinstance(reply.body, dict) and "success" in reply.body:
        body: object = {"requestId": sandbox.request_id(now), **reply.body}
    else:
        body = reply.body
    if isinstance(body, str):
        content = body.encode()
    else:
        content = json.dumps(body, separators=(",", ":")).encode()
    headers = {"Server": "nginx", **reply.headers}
    if (
        len(content) >= GZIP_THRESHOLD
        and "gzip" in request.headers.get("accept-encoding", "").lower()
        and not request.url.path.startswith("/bulk/")
    ):
        # Level 1: the emulator's CPU matters more than the bytes on a loopback socket.
        content = gzip.compress(content, compresslevel=1)
        headers["Content-Encoding"] = "gzip"
    return Response(content, status_code=reply.status, headers=headers, media_type=reply.media_type)


async def _drop(request: Request) -> Response:
    """Close the connection without answering.

    Under uvicorn the ASGI `receive` callable is bound to the request cycle, which holds the
    socket transport; aborting it is the only way ASGI offers to hang up mid-request.
    In-process (httpx.ASGITransport) the exception reaches `asgi_transport`, which turns it
    into an httpx transport error.
    """
    transport = getattr(getattr(request.receive, "__self__", None), "transport", None)
    if isinstance(transport, asyncio.Transport):
        transport.abort()
        # Let connection_lost run so the server knows nothing can be sent any more.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return Response(status_code=500)
    raise ConnectionDropped


def _fault_reply(sandbox: Sandbox, fault: Fault, family: str) -> Reply | None:
    if fault.http_status is not None:
        return html_error(fault.http_status, HTTP_REASONS.get(fault.http_status, "Error"))
    if fault.code is None:
        return None
    message = FAULT_CODES[fault.code]
    if fault.code == "606":
        message = rate_message(sandbox.settings)
    elif fault.code == "615":
        message = concurrency_message(sandbox.settings)
    return _error(family, fault.code, message)


def _error(family: str, code: str, message: str) -> Reply:
    return asset_error(code, message) if family == "asset" else lead_error(code, message)


def _params(request: Request, body: bytes) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        params.setdefault(key, []).append(value)
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        for key, values in form.items():
            params.setdefault(key, []).extend(values)
    return params


def _auth_refusal(
    sandbox: Sandbox, request: Request, params: dict[str, list[str]], now: float
) -> tuple[str, str] | None:
    """Check the Bearer header; the legacy `access_token` parameter only behind its switch."""
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return sandbox.tokens.check(header[7:].strip(), now)
    values = params.get("access_token")
    if values and not sandbox.settings.accept_access_token_param:
        return ("601", "Access token invalid")
    return sandbox.tokens.check(values[0] if values else "", now)


def _family(template: str) -> str:
    """Whose error envelope a path answers with: "asset" for the Asset API, else "lead" (Lead
    DB, Bulk and User Management)."""
    return "asset" if template.startswith("/rest/asset/") else "lead"


def marketo_endpoint(
    sandbox: Sandbox, template: str, handlers: dict[str, Handler]
) -> Callable[[Request], Awaitable[Response]]:
    """Wrap handlers in the pipeline every Marketo call goes through."""
    family = _family(template)

    async def endpoint(request: Request) -> Response:
        stats = sandbox.stats
        stats.requests += 1
        method = request.method
        now = sandbox.clock.now()
        key = f"{method} {template}"
        logged: dict[str, Any] = {
            "call": key,
            "replica": request.headers.get(REPLICA_HEADER, ""),
            "at": now,
            "end": None,
            "code": None,
        }
        if sandbox.settings.log_calls:
            stats.log.append(logged)  # at its arrival: a call in flight shows with no end
        reply = await _pipeline(sandbox, request, handlers, family, key, now)
        logged.update(end=sandbox.clock.now(), code="dropped" if reply is None else reply.code)
        if reply is None:
            stats.record(key, "dropped")
            return await _drop(request)
        stats.record(key, reply.code)
        if reply.code.isdigit():
            sandbox.state.usage.error(quota_day(now), reply.code)
        return _render(sandbox, reply, now, request)

    return endpoint


async def _pipeline(
    sandbox: Sandbox,
    request: Request,
    handlers: dict[str, Handler],
    family: str,
    key: str,
    now: float,
) -> Reply | None:
    settings = sandbox.settings
    raw_uri = request.scope.get("raw_path", b"") + b"?" + request.scope.get("query_string", b"")
    if len(raw_uri) > settings.uri_limit:
        return html_error(414, "Request-URI Too Large")
    limit = settings.bulk_file_limit if key.endswith("/bulk/v1/leads.json") else settings.body_limit
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return html_error(413, "Request Entity Too Large")
    body = await request.body()
    if len(body) > limit:
        return html_error(413, "Request Entity Too Large")
    stats = sandbox.stats
    stats.in_flight += 1
    stats.peak_concurrency = max(stats.peak_concurrency, stats.in_flight)
    admitted = False
    try:
        fault = sandbox.faults.match(request.url.path)
        if fault is not None:
            if fault.delay_ms:
                await asyncio.sleep(fault.delay_ms / 1000)
            if fault.drop:
                return None
            faulted = _fault_reply(sandbox, fault, family)
            if faulted is not None:
                # Injected failures never reach the counted part of the pipeline.
                return faulted
        params = _params(request, body)
        form = None
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            try:
                form = await request.form()
            except HTTPException:
                return _error(family, "613", "Invalid Multipart Request")
            token_field = form.get("access_token")
            if isinstance(token_field, str):
                params.setdefault("access_token", []).append(token_field)
        refusal = _auth_refusal(sandbox, request, params, now)
        if refusal is not None:
            return _error(family, *refusal)
        refusal = sandbox.limiter.admit(now, stats.in_flight)
        if refusal is not None:
            if settings.count_rejected_calls:
                stats.counted += 1
                sandbox.state.usage.count(quota_day(now), settings.api_user, key)
            return _error(family, *refusal)
        admitted = True
        stats.counted += 1
        method = request.method
        if method == "POST" and "GET" in params.get("_method", []):
            method = "GET"
        handler = handlers.get(method)
        if handler is None:
            reply = _error(family, "605", "HTTP Method not supported")
        else:
            if settings.latency_ms:
                await asyncio.sleep(settings.latency_ms / 1000)
            call = Call(
                request, method, params, body, sandbox.state, now, dict(request.path_params), form
            )
            try:
                reply = await handler(call)
            except MarketoError as error:
                reply = _error(family, error.code, error.message)
        if reply.code in UNCOUNTED_CODES:
            sandbox.limiter.give_back(now)
            stats.counted -= 1
        else:
            sandbox.state.usage.count(quota_day(now), settings.api_user, key)
        admitted = False
        return None if fault is not None and fault.drop_after else reply
    finally:
        if admitted:
            # The handler failed unexpectedly (a 611 as far as the client could tell).
            sandbox.limiter.give_back(now)
            stats.counted -= 1
        stats.in_flight -= 1


async def _identity(sandbox: Sandbox, request: Request) -> Response:
    sandbox.stats.requests += 1
    sandbox.stats.identity += 1
    now = sandbox.clock.now()
    key = f"{request.method} /identity/oauth/token"
    fault = sandbox.faults.match(request.url.path)
    if fault is not None:
        if fault.delay_ms:
            await asyncio.sleep(fault.delay_ms / 1000)
        if fault.drop:
            sandbox.stats.record(key, "dropped")
            return await _drop(request)
        if fault.http_status is not None:
            reply = html_error(fault.http_status, HTTP_REASONS.get(fault.http_status, "Error"))
            sandbox.stats.record(key, reply.code)
            return _render(sandbox, reply, now, request)
    body = await request.body()
    params = _params(request, body)
    settings = sandbox.settings

    def oauth_error(status: int, error: str, description: str) -> Response:
        sandbox.stats.record(key, f"http_{status}")
        return JSONResponse(
            {"error": error, "error_description": description},
            status_code=status,
            headers={"Cache-Control": "no-store", "Pragma": "no-cache", "Server": "nginx"},
        )

    def first(name: str) -> str:
        values = params.get(name)
        return values[0] if values else ""

    if first("grant_type") != "client_credentials":
        return oauth_error(400, "unsupported_grant_type", "Unsupported grant type")
    if first("client_id") != settings.client_id:
        return oauth_error(401, "unauthorized", "No client with requested id")
    if first("client_secret") != settings.client_secret:
        return oauth_error(401, "unauthorized", "Bad Client Credentials")
    token = sandbox.tokens.issue(settings.client_id, settings, now)
    sandbox.stats.record(key, "success")
    return Response(
        json.dumps(
            {
                "access_token": token.value,
                "token_type": "bearer",
                "expires_in": int(token.expires_at - now),
                "scope": settings.api_user,
            }
        ),
        media_type="application/json;charset=UTF-8",
        headers={"Cache-Control": "no-store", "Pragma": "no-cache", "Server": "nginx"},
    )


# Handlers by path template and method; the family of errors follows from the path (`_family`).
ROUTES: dict[str, dict[str, Handler]] = {
    "/rest/v1/leads.json": {
        "POST": leads.sync_leads,
        "GET": leads.get_leads,
        "DELETE": leads.delete_leads,
    },
    "/rest/v1/leads/{id}/merge.json": {"POST": leads.merge_leads},
    "/rest/v1/activities/pagingtoken.json": {"GET": activities.paging_token},
    "/rest/v1/activities/deletedleads.json": {"GET": activities.deleted_leads},
    "/rest/v1/lead/{id}.json": {"GET": leads.get_lead},
    "/rest/v1/leads/delete.json": {"POST": leads.delete_leads},
    "/rest/v1/leads/describe.json": {"GET": leads.describe},
    "/rest/v1/leads/describe2.json": {"GET": leads.describe2},
    "/rest/v1/leads/partitions.json": {
        "GET": leads.get_partitions,
        "POST": leads.update_partitions,
    },
    "/rest/v1/lists.json": {"GET": lists.get_lists},
    "/rest/v1/lists/{list_id}.json": {"GET": lists.get_list},
    "/rest/v1/lists/{list_id}/leads.json": {
        "GET": lists.get_members,
        "POST": lists.add_members,
        "DELETE": lists.remove_members,
    },
    "/rest/v1/list/{list_id}/leads.json": {"GET": lists.get_members},
    "/rest/v1/lists/{list_id}/leads/ismember.json": {"GET": lists.is_member},
    "/rest/asset/v1/staticLists.json": {"GET": assets.browse_lists, "POST": assets.create_list},
    "/rest/asset/v1/staticList/byName.json": {"GET": assets.list_by_name},
    "/rest/asset/v1/staticList/{list_id}.json": {
        "GET": assets.get_list,
        "POST": assets.update_list,
    },
    "/rest/asset/v1/staticList/{list_id}/delete.json": {"POST": assets.delete_list},
    "/rest/asset/v1/folder/byName.json": {"GET": assets.folder_by_name},
    "/rest/asset/v1/folders.json": {"GET": assets.browse_folders, "POST": assets.create_folder},
    "/bulk/v1/leads.json": {"POST": bulk.create_import},
    "/bulk/v1/leads/batch/{batch_id}.json": {"GET": bulk.import_status},
    "/bulk/v1/leads/batch/{batch_id}/failures.json": {"GET": bulk.import_failures},
    "/bulk/v1/leads/batch/{batch_id}/warnings.json": {"GET": bulk.import_warnings},
    "/bulk/v1/leads/export.json": {"GET": extract.list_exports},
    "/bulk/v1/leads/export/create.json": {"POST": extract.create_export},
    "/bulk/v1/leads/export/{export_id}/enqueue.json": {"POST": extract.enqueue_export},
    "/bulk/v1/leads/export/{export_id}/status.json": {"GET": extract.export_status},
    "/bulk/v1/leads/export/{export_id}/cancel.json": {"POST": extract.cancel_export},
    "/bulk/v1/leads/export/{export_id}/file.json": {"GET": extract.export_file},
    "/rest/v1/stats/usage.json": {"GET": stats.daily_usage},
    "/rest/v1/stats/usage/last7days.json": {"GET": stats.weekly_usage},
    "/rest/v1/stats/errors.json": {"GET": stats.daily_errors},
    "/rest/v1/stats/errors/last7days.json": {"GET": stats.weekly_errors},
    "/userservice/management/v1/users/workspaces.json": {"GET": leads.get_workspaces},
}

ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def create_app(settings: SandboxSettings | None = None, *, clock: Clock | None = None) -> Starlette:
    """Build the sandbox ASGI app; its `Sandbox` is at `app.state.sandbox`."""
    sandbox = Sandbox(settings or SandboxSettings(), clock or SystemClock())

    async def identity(request: Request) -> Response:
        return await _identity(sandbox, request)

    async def not_found(request: Request) -> Response:
        # Marketo answers an unknown resource inside a 200, like every other business error.
        sandbox.stats.requests += 1
        sandbox.stats.record("unknown", "610")
        now = sandbox.clock.now()
        return _render(sandbox, lead_error("610", "Requested resource not found"), now, request)

    routes = [
        Route("/identity/oauth/token", identity, methods=["GET", "POST"]),
        *control.routes(sandbox),
        *(
            Route(template, marketo_endpoint(sandbox, template, handlers), methods=ALL_METHODS)
            for template, handlers in ROUTES.items()
        ),
        Route("/{path:path}", not_found, methods=ALL_METHODS),
    ]
    app = Starlette(routes=routes)
    app.state.sandbox = sandbox
    return app


def port_router(apps: dict[int, ASGIApp]) -> ASGIApp:
    """One ASGI app serving several sandboxes, each on its own port (the scope's server port
    picks it): several instances in one process, each its own Marketo host to a client."""
    first = next(iter(apps.values()))

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await first(scope, receive, send)
            return
        server = scope.get("server")
        app = apps.get(server[1]) if server else None
        if app is None:
            response = Response("no sandbox on this port", status_code=404)
            await response(scope, receive, send)
            return
        await app(scope, receive, send)

    return route
