"""Authentication through a real server: credentials, forged metadata, the principal handed to
handlers, public services, and the unauthenticated local mode."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service._proto.marketo_destination.v1 import destination_pb2_grpc
from service.api.access import (
    ALL_PERMISSIONS,
    LOCAL_PRINCIPAL,
    RPC_PERMISSIONS,
    AccessInterceptor,
    Principal,
    parse_principals,
)
from service.errors import Unauthenticated
from tests.access.harness import bearer, call, method_path, principals_json, serve, token_for

ALL = ALL_PERMISSIONS
ACME_TOKEN = token_for(ALL, "acme")
OTHER_TOKEN = token_for(ALL, "other")


def _two_tenants() -> AccessInterceptor:
    other = {**principals_json([ALL], "other")[0], "name": "other-admin"}
    entries = [*principals_json([ALL], "acme"), other]
    return AccessInterceptor(parse_principals(entries))


def _acme() -> Principal:
    return Principal(name="p:" + "+".join(sorted(ALL)), tenant="acme", permissions=ALL)


async def _call_as(metadata: Any, rpc: str = "GetDestination") -> tuple[grpc.StatusCode, list[Any]]:
    async with (
        serve(_two_tenants()) as running,
        grpc.aio.insecure_channel(running.target) as channel,
    ):
        code, _ = await call(channel, rpc, metadata)
    return code, [p for _, p in running.recorder.seen]


async def test_token_selects_its_principal_and_tenant() -> None:
    code, seen = await _call_as(bearer(ACME_TOKEN))
    assert code == grpc.StatusCode.OK
    assert seen == [_acme()]
    code, seen = await _call_as(bearer(OTHER_TOKEN))
    assert code == grpc.StatusCode.OK
    assert [(p.name, p.tenant) for p in seen] == [("other-admin", "other")]


@pytest.mark.parametrize(
    "forged",
    [
        (("x-principal", "other-admin"),),
        (("x-tenant", "other"),),
        (("x-principal", "other-admin"), ("x-tenant", "other"), ("x-user", "root")),
        (("tenant", "other"), ("principal", "other-admin")),
    ],
)
async def test_forged_identity_headers_change_nothing(forged: tuple[tuple[str, str], ...]) -> None:
    code, seen = await _call_as(bearer(ACME_TOKEN) + forged)
    assert code == grpc.StatusCode.OK
    assert seen == [_acme()]
    code, seen = await _call_as(forged)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert seen == []


async def test_duplicated_authorization_headers_are_refused() -> None:
    for metadata in (
        bearer(ACME_TOKEN) + bearer(OTHER_TOKEN),
        bearer(ACME_TOKEN) + bearer(ACME_TOKEN),
        bearer(ACME_TOKEN) + bearer("wrong"),
    ):
        code, seen = await _call_as(metadata)
        assert code == grpc.StatusCode.UNAUTHENTICATED, metadata
        assert seen == []


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_bearer_scheme_is_case_insensitive(scheme: str) -> None:
    code, seen = await _call_as((("authorization", f"{scheme} {ACME_TOKEN}"),))
    assert code == grpc.StatusCode.OK
    assert seen == [_acme()]


@pytest.mark.parametrize(
    "value",
    [
        ACME_TOKEN,
        f"Bearer {ACME_TOKEN.upper()}",
        f"Bearer {ACME_TOKEN} extra",
        f"Bearer{ACME_TOKEN}",
        "Bearer ",
        f"Basic {ACME_TOKEN}",
    ],
)
async def test_malformed_or_altered_tokens_are_refused(value: str) -> None:
    code, seen = await _call_as((("authorization", value),))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert seen == []


async def test_upper_case_header_name_is_not_sent_by_grpc() -> None:
    # HTTP/2 header names are lower case; the gRPC client refuses others before sending.
    with pytest.raises(Exception, match="execute_batch"):
        await _call_as((("Authorization", f"Bearer {OTHER_TOKEN}"),))


class _FakeContext:
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}


@pytest.mark.parametrize("name", ["authorization", "Authorization", "AUTHORIZATION"])
def test_header_name_case_cannot_add_a_second_identity(name: str) -> None:
    # Should a client send a non-canonical header name, it counts as the same header.
    interceptor = _two_tenants()
    alone = _FakeContext(((name, f"Bearer {ACME_TOKEN}"),))
    assert interceptor.authenticate(alone) == _acme()  # type: ignore[arg-type]
    twice = _FakeContext((*bearer(ACME_TOKEN), (name, f"Bearer {OTHER_TOKEN}")))
    with pytest.raises(Unauthenticated):
        interceptor.authenticate(twice)  # type: ignore[arg-type]


async def test_principal_is_visible_in_unary_and_streaming_handlers() -> None:
    code, seen = await _call_as(bearer(ACME_TOKEN), "GetDestination")
    assert (code, seen) == (grpc.StatusCode.OK, [_acme()])
    # Sync records at start and after each of the two requests it awaits.
    code, seen = await _call_as(bearer(ACME_TOKEN), "Sync")
    assert (code, seen) == (grpc.StatusCode.OK, [_acme()] * 3)
    code, seen = await _call_as(bearer(OTHER_TOKEN), "WatchAlerts")
    assert code == grpc.StatusCode.OK
    assert [p.tenant for p in seen] == ["other"]


async def test_concurrent_calls_keep_their_own_principal() -> None:
    async with (
        serve(_two_tenants()) as running,
        grpc.aio.insecure_channel(running.target) as channel,
    ):
        results = await asyncio.gather(
            *(call(channel, "Sync", bearer(token)) for token in [ACME_TOKEN, OTHER_TOKEN] * 5)
        )
    assert all(code == grpc.StatusCode.OK for code, _ in results)
    tenants = [p.tenant for _, p in running.recorder.seen]
    assert sorted(tenants) == ["acme"] * 15 + ["other"] * 15


async def test_health_needs_no_credentials() -> None:
    async with (
        serve(_two_tenants()) as running,
        grpc.aio.insecure_channel(running.target) as channel,
    ):
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=30)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_method_missing_from_the_table_is_refused() -> None:
    table = dict(RPC_PERMISSIONS)
    del table[method_path("GetDestination")]
    entries = principals_json([ALL])
    interceptor = AccessInterceptor(parse_principals(entries), permissions=table)
    async with serve(interceptor) as running, grpc.aio.insecure_channel(running.target) as channel:
        code, _ = await call(channel, "GetDestination", bearer(ACME_TOKEN))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        code, _ = await call(channel, "Configure", bearer(ACME_TOKEN))
        assert code == grpc.StatusCode.OK


async def test_synchronous_handlers_are_guarded_too() -> None:
    # The generated base class answers UNIMPLEMENTED from plain functions: still behind auth.
    def base(_recorder: Any) -> Any:
        return destination_pb2_grpc.MarketoDestinationServiceServicer()

    interceptor = AccessInterceptor(parse_principals(principals_json([ALL])))
    async with (
        serve(interceptor, servicer_factory=base) as running,
        grpc.aio.insecure_channel(running.target) as channel,
    ):
        for rpc in ("GetDestination", "WatchAlerts", "Sync"):
            code, _ = await call(channel, rpc, refused=True)
            assert code == grpc.StatusCode.UNAUTHENTICATED, rpc
            code, _ = await call(channel, rpc, bearer(ACME_TOKEN), refused=True)
            assert code == grpc.StatusCode.UNIMPLEMENTED, rpc


async def test_without_principals_every_caller_is_local() -> None:
    for principals in (None, parse_principals([])):
        interceptor = AccessInterceptor(principals)
        assert not interceptor.auth_enabled
        async with (
            serve(interceptor) as running,
            grpc.aio.insecure_channel(running.target) as channel,
        ):
            for metadata in (None, bearer("anything"), (("x-tenant", "other"),)):
                code, _ = await call(channel, "Configure", metadata)
                assert code == grpc.StatusCode.OK
            code, _ = await call(channel, "Sync")
            assert code == grpc.StatusCode.OK
        assert {p for _, p in running.recorder.seen} == {LOCAL_PRINCIPAL}
    assert LOCAL_PRINCIPAL.tenant == "default"
    assert LOCAL_PRINCIPAL.permissions == ALL_PERMISSIONS


async def test_tokens_never_reach_the_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-token-that-must-not-be-logged"
    for metadata in (bearer(ACME_TOKEN), bearer(wrong), bearer(ACME_TOKEN) + bearer(wrong)):
        await _call_as(metadata, "Configure")
    limited = AccessInterceptor(parse_principals(principals_json([{"destinations.view"}])))
    async with serve(limited) as running, grpc.aio.insecure_channel(running.target) as channel:
        code, _ = await call(channel, "Configure", bearer(token_for({"destinations.view"})))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "refused" in caplog.text, "refusals are logged (without the token)"
    for secret in (ACME_TOKEN, wrong, token_for({"destinations.view"})):
        assert secret not in caplog.text
