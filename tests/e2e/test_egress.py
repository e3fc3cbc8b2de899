"""The egress policy through the API: which Marketo endpoints Configure and DescribeMarketo
accept, where alert webhooks may go and through which client, and what a caller learns of a
remote answer.

Marketo calls go through `LoopbackOnly` (recorded; only loopback hosts reached), so a refusal is
seen both as no recorded request and as a loopback listener that received nothing.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from service.api import convert
from service.store.base import NewDestination
from tests.harness import (
    STANDARD_MAPPINGS,
    Service,
    connection,
    running_service,
    spec,
    violations,
)
from tests.netfakes import Listener, LoopbackOnly

HOSTILE = "root:x:0:0 INTERNAL-ONLY-TEXT"
"""What a remote answer says that must never reach a caller."""


@contextlib.asynccontextmanager
async def guarded(tmp_path: Path, **settings: Any) -> AsyncIterator[tuple[Service, LoopbackOnly]]:
    """The service whose Marketo calls go through a recording, loopback-only transport."""
    transport = LoopbackOnly()
    async with (
        httpx.AsyncClient(transport=transport, timeout=10.0) as http,
        running_service(tmp_path, marketo_http=http, **settings) as service,
    ):
        yield service, transport


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_the_default_allowlist_lets_a_marketo_host_through(tmp_path: Path) -> None:
    async with guarded(tmp_path) as (service, transport):
        error = await rpc_error(
            service.stub.Configure(pb.ConfigureRequest(spec=spec(connection=connection())))
        )
    # Allowed: the token request went out (the test transport then fails it as unreachable).
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert [url.host for url in transport.urls][:1] == ["123-abc-456.mktorest.com"]


async def test_configure_refuses_a_loopback_endpoint_before_connecting(tmp_path: Path) -> None:
    async with Listener() as target, guarded(tmp_path) as (service, transport):
        endpoint = f"http://127.0.0.1:{target.port}"
        error = await rpc_error(
            service.stub.Configure(
                pb.ConfigureRequest(spec=spec(connection=connection(endpoint=endpoint)))
            )
        )
        found = violations(error)
        assert set(found) == {"spec.connection.endpoint"}
        assert "MARKETO_DEST_ALLOWED_ENDPOINTS" in found["spec.connection.endpoint"]
        assert transport.urls == []
        assert target.connections == 0
        listed = await service.stub.ListDestinations(pb.ListDestinationsRequest())
        assert not listed.destinations


async def test_describe_marketo_refuses_a_loopback_endpoint_before_connecting(
    tmp_path: Path,
) -> None:
    async with Listener() as target, guarded(tmp_path) as (service, transport):
        endpoint = f"http://127.0.0.1:{target.port}"
        error = await rpc_error(
            service.stub.DescribeMarketo(
                pb.DescribeMarketoRequest(connection=connection(endpoint=endpoint))
            )
        )
        assert set(violations(error)) == {"connection.endpoint"}
        assert transport.urls == []
        assert target.connections == 0


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://evil.example.test#.123-abc-456.mktorest.com",
        "https://123-abc-456.mktorest.com@127.0.0.1:{port}",
        "https://123-abc-456.mktorest.com\\@127.0.0.1:{port}",
        "https://123-abc-456.mktorest.com.example.test",
        "http://123-abc-456.mktorest.com",
        "https://123-abc-456.mktorest.com:{port}",
        "https://mktorest.com",
        "https://[::1]:{port}",
        "https://2130706433:{port}",
        "https://123-abc-456.mktorest.com/rest?x=1",
    ],
)
async def test_tricky_endpoints_are_refused_naming_the_field(tmp_path: Path, endpoint: str) -> None:
    async with Listener() as target, guarded(tmp_path) as (service, transport):
        bad = connection(endpoint=endpoint.format(port=target.port))
        configured = await rpc_error(
            service.stub.Configure(pb.ConfigureRequest(spec=spec(connection=bad)))
        )
        described = await rpc_error(
            service.stub.DescribeMarketo(pb.DescribeMarketoRequest(connection=bad))
        )
        assert set(violations(configured)) == {"spec.connection.endpoint"}
        assert set(violations(described)) == {"connection.endpoint"}
        assert transport.urls == []
        assert target.connections == 0


async def test_an_allowlisted_loopback_endpoint_is_used(tmp_path: Path) -> None:
    async with Listener(answer=True) as target:
        async with guarded(tmp_path, allowed_endpoints="http://127.0.0.1:*") as (service, _):
            endpoint = f"http://127.0.0.1:{target.port}"
            await rpc_error(
                service.stub.DescribeMarketo(
                    pb.DescribeMarketoRequest(connection=connection(endpoint=endpoint))
                )
            )
        assert target.connections >= 1


def answering(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler), timeout=10.0)


def token(request: httpx.Request) -> httpx.Response | None:
    if request.url.path == "/identity/oauth/token":
        return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
    return None


@pytest.mark.parametrize(
    ("answer", "status", "code"),
    [
        (
            lambda r: httpx.Response(401, json={"error": "x", "error_description": HOSTILE}),
            grpc.StatusCode.FAILED_PRECONDITION,
            "401",
        ),
        (
            lambda r: (
                token(r)
                or httpx.Response(
                    200, json={"success": False, "errors": [{"code": "603", "message": HOSTILE}]}
                )
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            "603",
        ),
        (
            lambda r: (
                token(r)
                or httpx.Response(
                    200, json={"success": False, "errors": [{"code": "1003", "message": HOSTILE}]}
                )
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "1003",
        ),
        (
            # A code Marketo never sends reads as a transient failure; its text stays out.
            lambda r: (
                token(r)
                or httpx.Response(
                    200, json={"success": False, "errors": [{"code": HOSTILE, "message": "m"}]}
                )
            ),
            grpc.StatusCode.UNAVAILABLE,
            None,
        ),
    ],
)
async def test_no_remote_text_reaches_the_caller(
    tmp_path: Path,
    answer: Callable[[httpx.Request], httpx.Response],
    status: grpc.StatusCode,
    code: str | None,
) -> None:
    async with (
        answering(answer) as http,
        running_service(tmp_path, marketo_http=http) as service,
    ):
        errors = [
            await rpc_error(
                service.stub.DescribeMarketo(pb.DescribeMarketoRequest(connection=connection()))
            ),
            await rpc_error(service.stub.Configure(pb.ConfigureRequest(spec=spec()))),
        ]
    for error in errors:
        details = error.details() or ""
        assert error.code() == status
        assert "INTERNAL-ONLY-TEXT" not in details and "root:x" not in details
        if code is not None:
            assert code in details


async def test_webhooks_must_be_https_unless_their_origin_is_listed(tmp_path: Path) -> None:
    async with (
        Listener() as receiver,
        guarded(tmp_path, allowed_webhook_origins="") as (
            service,
            transport,
        ),
    ):
        for url in (
            f"http://127.0.0.1:{receiver.port}/hook",
            "http://hooks.example.test/hook",
            "https://user@hooks.example.test/hook",
            "https://hooks.example.test/hook#x",
            "ftp://hooks.example.test/hook",
        ):
            alerts = pb.AlertSubscription(webhook_url=url)
            error = await rpc_error(
                service.stub.Configure(pb.ConfigureRequest(spec=spec(alerts=alerts)))
            )
            assert set(violations(error)) == {"spec.alerts.webhook_url"}, url
        assert transport.urls == []
        assert receiver.connections == 0


async def test_a_listed_loopback_webhook_is_delivered_by_its_own_client(tmp_path: Path) -> None:
    # Marketo's client here is the sandbox's in-process transport, which reaches no socket:
    # only a client of the webhooks' own reaches the receiver.
    async with Listener(answer=True) as receiver:
        async with running_service(tmp_path, allowed_webhook_origins=receiver.origin) as service:
            alerts = pb.AlertSubscription(webhook_url=f"{receiver.origin}/hook")
            created = await service.stub.Configure(pb.ConfigureRequest(spec=spec(alerts=alerts)))
            await service.app.alerts.authentication_failing(created.destination.id, "test")
            await service.app.alerts.idle()
        assert len(receiver.requests) == 1
        head, _, body = receiver.requests[0].partition(b"\r\n\r\n")
        assert head.startswith(b"POST /hook HTTP/1.1")
        assert json.loads(body)["type"] == "authentication_failing"


async def test_a_stored_endpoint_the_policy_no_longer_allows_is_a_failed_precondition(
    tmp_path: Path,
) -> None:
    # Stored under an earlier policy; this service allows only other hosts.
    async with guarded(tmp_path, allowed_endpoints="https://*.example.test") as (
        service,
        transport,
    ):
        stored = convert.destination_spec(spec())
        record = await service.app.store.create_destination(
            NewDestination(
                tenant="default",
                name=stored.name,
                spec=stored,
                instance_key="123-abc-456.mktorest.com",
            )
        )
        activated = await rpc_error(
            service.stub.Activate(
                pb.ActivateRequest(
                    destination_id=record.id,
                    audiences=[pb.Audience(id="a1", name="List")],
                    mappings=STANDARD_MAPPINGS,
                )
            )
        )
        described = await rpc_error(
            service.stub.DescribeMarketo(pb.DescribeMarketoRequest(destination_id=record.id))
        )
        for error in (activated, described):
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "MARKETO_DEST_ALLOWED_ENDPOINTS" in (error.details() or "")
        assert transport.urls == []
