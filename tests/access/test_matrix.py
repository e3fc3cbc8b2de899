"""Permission matrix through a real server: every RPC with exactly its permissions, and with each
one of them missing."""

from __future__ import annotations

import grpc
import pytest

from service.api.access import RPC_PERMISSIONS, AccessInterceptor, parse_principals
from tests.access.harness import (
    METHODS,
    bearer,
    call,
    method_path,
    principals_json,
    serve,
    token_for,
)

CASES_OK = sorted(METHODS)
CASES_DENIED = sorted(
    (name, missing)
    for name in METHODS
    for missing in RPC_PERMISSIONS.get(method_path(name), frozenset())
)


def _interceptor(*permission_sets: frozenset[str]) -> AccessInterceptor:
    return AccessInterceptor(parse_principals(principals_json(permission_sets)))


@pytest.mark.parametrize("rpc", CASES_OK)
async def test_needed_permissions_pass(rpc: str) -> None:
    needed = RPC_PERMISSIONS[method_path(rpc)]
    async with (
        serve(_interceptor(needed)) as running,
        grpc.aio.insecure_channel(running.target) as channel,
    ):
        code, details = await call(channel, rpc, bearer(token_for(needed)))
    assert code == grpc.StatusCode.OK, details
    assert running.recorder.seen, "the handler was not reached"
    assert {(name, p.permissions) for name, p in running.recorder.seen} == {(rpc, needed)}


@pytest.mark.parametrize(("rpc", "missing"), CASES_DENIED)
async def test_each_missing_permission_is_denied(rpc: str, missing: str) -> None:
    granted = RPC_PERMISSIONS[method_path(rpc)] - {missing}
    async with (
        serve(_interceptor(granted)) as running,
        grpc.aio.insecure_channel(running.target) as channel,
    ):
        code, details = await call(channel, rpc, bearer(token_for(granted)), refused=True)
    assert code == grpc.StatusCode.PERMISSION_DENIED, details
    assert missing in details
    assert running.recorder.seen == []


@pytest.mark.parametrize("rpc", CASES_OK)
@pytest.mark.parametrize(
    "metadata",
    [None, bearer("not-a-configured-token"), (("authorization", "Basic dXNlcjpwYXNz"),)],
    ids=["no-token", "wrong-token", "wrong-scheme"],
)
async def test_unauthenticated(rpc: str, metadata: object) -> None:
    needed = RPC_PERMISSIONS[method_path(rpc)]
    async with (
        serve(_interceptor(needed)) as running,
        grpc.aio.insecure_channel(running.target) as channel,
    ):
        code, _ = await call(channel, rpc, metadata, refused=True)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert running.recorder.seen == []
