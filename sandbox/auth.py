"""Identity: access tokens minted by `/identity/oauth/token` and checked on every API call."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sandbox.settings import SandboxSettings


@dataclass
class Token:
    value: str
    client_id: str
    expires_at: float


class Tokens:
    """Tokens per client id; a client gets the same token back until it expires."""

    def __init__(self) -> None:
        self._by_value: dict[str, Token] = {}
        self._by_client: dict[str, Token] = {}

    def issue(self, client_id: str, settings: SandboxSettings, now: float) -> Token:
        current = self._by_client.get(client_id)
        if current is not None and current.expires_at > now:
            return current
        # Real tokens are a UUID plus a short pod suffix, e.g. "...:ab".
        token = Token(f"{uuid.uuid4()}:sb", client_id, now + settings.token_ttl)
        self._by_value[token.value] = token
        self._by_client[client_id] = token
        return token

    def check(self, value: str | None, now: float) -> tuple[str, str] | None:
        """None when the token is good, else the (code, message) refusing the call."""
        if not value:
            return ("603", "Access denied")
        token = self._by_value.get(value)
        if token is None:
            return ("601", "Access token invalid")
        if token.expires_at <= now:
            return ("602", "Access token expired")
        return None
