"""Tokens: cached per instance and client id, refreshed before expiry and on 601/602,
single-flight, bearer header only; bad credentials give one clear error."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from service.marketo.auth import TokenCache
from service.marketo.client import MarketoClient
from service.marketo.errors import AuthenticationError, UnavailableError
from tests.harness import retained_memory
from tests.marketo.conftest import SECRET, TOKEN, FakeClock, FakeMarketo, Seen, error, ok

PARTITIONS = "/rest/v1/leads/partitions.json"


def partitions(_: Seen) -> dict[str, object]:
    return ok([{"id": 1, "name": "Default", "description": "Initial system lead partition"}])


async def test_token_is_sent_as_bearer_header_only(
    marketo: FakeMarketo, make_client: Callable[..., MarketoClient]
) -> None:
    marketo.route("GET", PARTITIONS, partitions)
    client = make_client()
    assert [p.name for p in await client.partitions()] == ["Default"]
    (call,) = marketo.calls(PARTITIONS)
    assert call.headers["authorization"] == f"Bearer {TOKEN}"
    assert "access_token" not in call.params


async def test_credentials_travel_in_the_body_not_the_url(
    marketo: FakeMarketo, make_client: Callable[..., MarketoClient]
) -> None:
    await make_client().token()
    (call,) = marketo.calls("/identity/oauth/token")
    assert call.method == "POST"
    assert call.params == {}
    assert call.form()["client_secret"] == [SECRET]
    assert call.form()["grant_type"] == ["client_credentials"]


async def test_token_reused_until_less_than_60s_remain(
    marketo: FakeMarketo, make_client: Callable[..., MarketoClient], clock: FakeClock
) -> None:
    marketo.token_ttl = 300
    client = make_client()
    first = await client.token()
    clock.advance(239)
    assert await client.token() is first
    clock.advance(2)  # 59 s left
    await client.token()
    assert marketo.identity_calls == 2


async def test_token_shared_by_clients_of_one_instance_and_client_id(
    http: httpx.AsyncClient, marketo: FakeMarketo, clock: FakeClock
) -> None:
    def make(client_id: str) -> MarketoClient:
        return MarketoClient(
            http,
            base_url="https://123-ABC-456.mktorest.com/rest",
            client_id=client_id,
            client_secret=SECRET,
            clock=clock,
        )

    await make("a").token()
    await make("a").token()
    await make("b").token()
    assert marketo.identity_calls == 2


async def test_refresh_is_single_flight(
    marketo: FakeMarketo, make_client: Callable[..., MarketoClient]
) -> None:
    client = make_client()
    tokens = await asyncio.gather(*(client.token() for _ in range(20)))
    assert {t.value for t in tokens} == {TOKEN}
    assert marketo.identity_calls == 1


async def test_601_refreshes_and_retries_once(
    marketo: FakeMarketo, make_client: Callable[..., MarketoClient]
) -> None:
    answers = [error("601", "Access token invalid")]
    marketo.route("GET", PARTITIONS, lambda s: answers.pop() if answers else partitions(s))
    client = make_client()
    assert len(await client.partitions()) == 1
    assert marketo.identity_calls == 2
    assert len(marketo.calls(PARTITIONS)) == 2


async def test_concurrent_602s_cause_one_refresh(
    marketo: FakeMarketo, make_client: Callable[..., MarketoClient]
) -> None:
    expired = {TOKEN}
    tokens = iter(f"token-{i}" for i in range(100))

    def identity(_: Seen) -> dict[str, object]:
        return {"access_token": next(tokens), "token_type": "bearer", "expires_in": 3600}

    def handler(seen: Seen) -> dict[str, object]:
        if seen.headers["authorization"].removeprefix("Bearer ") in expired:
            return error("602", "Access token expired")
        return partitions(seen)

    marketo.route("POST", "/identity/oauth/token", identity)
    marketo.route("GET", PARTITIONS, handler)
    client = make_client()
    await client.token()  # token-0
    expired.add("token-0")
    await asyncio.gather(*(client.partitions() for _ in range(10)))
    assert marketo.identity_calls == 2


async def test_repeated_601_is_bounded(
    marketo: FakeMarketo, make_client: Callable[..., MarketoClient]
) -> None:
    marketo.route("GET", PARTITIONS, lambda s: error("601", "Access token invalid"))
    from service.settings import RetryPolicy

    client = make_client(retry=RetryPolicy(max_attempts=4))
    with pytest.raises(UnavailableError) as caught:
        await client.partitions()
    assert caught.value.code == "601"
    assert len(marketo.calls(PARTITIONS)) == 4


async def test_bad_credentials_give_one_clear_error(
    marketo: FakeMarketo, make_client: Callable[..., MarketoClient]
) -> None:
    marketo.route(
        "POST",
        "/identity/oauth/token",
        lambda s: httpx.Response(
            401, json={"error": "unauthorized", "error_description": "Bad Client Credentials"}
        ),
    )
    with pytest.raises(AuthenticationError) as caught:
        await make_client().partitions()
    assert str(caught.value).startswith("Marketo rejected the client id or secret")
    assert marketo.identity_calls == 1
    assert not marketo.calls(PARTITIONS)


async def test_identity_outage_is_retried(
    marketo: FakeMarketo, make_client: Callable[..., MarketoClient]
) -> None:
    failures = [httpx.Response(503), httpx.Response(502)]
    marketo.route(
        "POST",
        "/identity/oauth/token",
        lambda s: (
            failures.pop()
            if failures
            else httpx.Response(
                200, json={"access_token": TOKEN, "token_type": "bearer", "expires_in": 3600}
            )
        ),
    )
    assert (await make_client().token()).value == TOKEN
    assert marketo.identity_calls == 3


def test_token_repr_hides_the_value() -> None:
    from service.marketo.auth import AccessToken

    token = AccessToken(value=TOKEN, expires_at=1.0, scope="api@example.com")
    assert TOKEN not in repr(token)
    assert TOKEN not in str(token)


async def test_a_token_handed_back_near_expiry_is_used_until_it_expires(
    marketo: FakeMarketo, make_client: Callable[..., MarketoClient], clock: FakeClock
) -> None:
    marketo.token_ttl = 30  # Identity hands back the same token with 30 s left
    client = make_client()
    await client.token()
    clock.advance(20)
    await client.token()
    assert marketo.identity_calls == 1
    clock.advance(6)  # 4 s left
    await client.token()
    assert marketo.identity_calls == 2


class _Owner:
    """What clients share their token caches over (the service: its `httpx.AsyncClient`)."""


def test_token_caches_for_ever_new_instances_and_clients_stay_within_a_bound() -> None:
    """Callers choose munchkin and client ids (DescribeMarketo needs only view permission):
    each new pair must not be kept for ever."""
    owner = _Owner()
    kept = TokenCache.shared(owner, "https://111-AAA-111.mktorest.com", "the-client", "secret")
    with retained_memory() as retained:
        for n in range(20_000):
            TokenCache.shared(
                owner, f"https://{n:06}-ABC-123.mktorest.com", f"client-{n:06}", "secret"
            )
            if n % 100 == 0:  # in use: stays the one shared cache
                assert (
                    TokenCache.shared(
                        owner, "https://111-AAA-111.mktorest.com", "the-client", "secret"
                    )
                    is kept
                )
    # About 10 MiB when every pair is kept.
    assert retained.bytes < 4 * 1024 * 1024, f"{retained.mib:.1f} MiB retained"
