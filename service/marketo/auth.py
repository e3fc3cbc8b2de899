"""Access tokens: one per (Marketo instance, client id, client secret), reused, refreshed
single-flight.

Marketo's Identity service returns the same token until it expires, so every client of one
custom service on one instance shares one cached token. A token is reused until fewer than
`REFRESH_MARGIN` seconds remain, and dropped when Marketo answers 601/602 with it. A token that
arrives with `FINAL_MARGIN` seconds or less to live (`expires_in: 0` in its last second) is never
sent: the cache waits for it to expire and asks again. Only this
module and the client's request builder ever see the token's value; it never reaches a repr,
a log line, a span or an exception.
"""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from service.caches import BytesBoundedCache, deep_size
from service.marketo.clock import Clock
from service.marketo.errors import UnavailableError
from service.marketo.limits import instance_key

REFRESH_MARGIN = 60.0
"""Seconds of remaining life below which a token is refreshed before use."""
FINAL_MARGIN = 5.0
"""Identity hands back the same token until it expires: a token that arrives with less than
`REFRESH_MARGIN` left is used until this many seconds before its expiry; one that arrives with
this much or less is not used at all."""
EXPIRY_SLACK = 1.0
"""Seconds waited past the expiry of a token handed back at its end before asking again."""
DYING_FETCHES = 3
"""Tokens fetched at most for one `get` while Identity keeps handing back dying ones."""


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A bearer token and when it expires (epoch seconds). The value is never shown."""

    value: str = field(repr=False)
    expires_at: float
    scope: str = field(default="", repr=False)
    refresh_at: float | None = None
    """When to stop using the token (default: `REFRESH_MARGIN` before expiry)."""

    def __str__(self) -> str:
        return f"AccessToken(expires_at={self.expires_at:.0f})"

    def usable(self, now: float) -> bool:
        """Whether the token may still be sent."""
        refresh_at = (
            self.expires_at - REFRESH_MARGIN if self.refresh_at is None else self.refresh_at
        )
        return now < refresh_at


SHARED_TOKEN_CACHES_BYTES = 2 * 1024 * 1024
"""The most the shared token caches of one owner hold (about 2,500 pairs of instance and
client id): callers choose munchkin and client ids (DescribeMarketo, Configure), so each new
pair must not stay for ever. A cache pushed out costs the next client one token fetch."""
_TOKEN_CACHE_BYTES = 512
"""What one `TokenCache` holds besides its key (the object, its lock and a token; measured)."""

_TokenKey = tuple[str, str, str]
_SHARED: weakref.WeakKeyDictionary[Any, BytesBoundedCache[_TokenKey, TokenCache]] = (
    weakref.WeakKeyDictionary()
)


def _token_cache_size(key: _TokenKey, cache: TokenCache) -> int:
    return deep_size(key) + _TOKEN_CACHE_BYTES


class TokenCache:
    """The token of one custom service on one instance; refreshes are single-flight."""

    def __init__(self) -> None:
        self._token: AccessToken | None = None
        self._lock = asyncio.Lock()
        self.refreshes = 0
        """How many tokens were fetched from Identity (for tests and metrics)."""

    @classmethod
    def shared(
        cls, owner: object, base_url: str, client_id: str, client_secret: str = ""
    ) -> TokenCache:
        """The cache for (`base_url`'s instance, `client_id`, `client_secret`) among clients
        built over `owner`. The secret is part of the key (as a digest): a token obtained with
        the right secret must never serve a client that holds a wrong one. The least recently
        used caches are forgotten past `SHARED_TOKEN_CACHES_BYTES`."""
        per_owner = _SHARED.get(owner)
        if per_owner is None:
            per_owner = _SHARED[owner] = BytesBoundedCache(
                SHARED_TOKEN_CACHES_BYTES, _token_cache_size
            )
        digest = hashlib.sha256(client_secret.encode()).hexdigest()
        key = (instance_key(base_url), client_id, digest)
        _, cache = per_owner.lookup(key)
        if cache is None:
            cache = cls()
            per_owner.put(key, cache)
        return cache

    async def get(self, clock: Clock, fetch: Callable[[], Awaitable[AccessToken]]) -> AccessToken:
        """The cached token, or a fresh one from `fetch` (one fetch for concurrent callers).

        A token fetched with `FINAL_MARGIN` seconds or less to live is not returned: the cache
        waits until it has expired and fetches again (`UnavailableError` after `DYING_FETCHES`).
        """
        token = self._token
        if token is not None and token.usable(clock.now()):
            return token
        async with self._lock:
            token = self._token
            if token is not None and token.usable(clock.now()):
                return token
            for _ in range(DYING_FETCHES):
                token = await fetch()
                self.refreshes += 1
                left = token.expires_at - clock.now()
                if left > FINAL_MARGIN:
                    break
                # Identity hands back the live token until it expires: wait that out.
                await clock.sleep(max(0.0, left) + EXPIRY_SLACK)
            else:
                raise UnavailableError(
                    f"Identity handed back {DYING_FETCHES} tokens about to expire",
                    code=None,
                    attempts=DYING_FETCHES,
                    endpoint="identity",
                )
            if not token.usable(clock.now()):
                token = replace(token, refresh_at=token.expires_at - FINAL_MARGIN)
            self._token = token
            return token

    def invalidate(self, token: AccessToken) -> None:
        """Drop `token` after Marketo rejected it (601/602), unless it was already replaced."""
        if self._token is token or (self._token is not None and self._token.value == token.value):
            self._token = None

    def __repr__(self) -> str:
        state = "empty" if self._token is None else str(self._token)
        return f"TokenCache({state})"
