"""Egress policy: where the service may send requests.

Two kinds of outgoing requests exist, each with its own rule:

- **Marketo endpoints** must match ``MARKETO_DEST_ALLOWED_ENDPOINTS`` (an :class:`OriginList`).
  Configure and DescribeMarketo refuse any other endpoint before a connection is opened, and
  :class:`service.usecases.connections.MarketoConnections` refuses to build a client for one.
- **Alert webhooks** go through :class:`WebhookTransport`: an origin listed in
  ``MARKETO_DEST_ALLOWED_WEBHOOK_ORIGINS`` is sent to as given; any other URL must be ``https``
  and its host must resolve to public addresses only. The name is resolved once per connection,
  every address is checked, and the connection goes to a checked address (TLS still names the
  host), so a second, different DNS answer cannot redirect it (DNS rebinding).

An origin is ``scheme://host[:port]``: scheme ``http`` or ``https``, a host name (compared in
lower case after IDNA encoding) or an IP literal (``[::1]`` for IPv6), and a port (the scheme's
default when omitted). In a list, the host may start with ``*.`` (any subdomain, at any depth,
of the rest; not the rest itself) and the port may be ``*`` (any port).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx
import idna

__all__ = [
    "DEFAULT_ALLOWED_ENDPOINTS",
    "EgressRefused",
    "Origin",
    "OriginList",
    "Resolver",
    "WebhookTransport",
    "endpoint_allowlist",
    "is_public_address",
    "parse_url",
    "system_resolver",
]

DEFAULT_ALLOWED_ENDPOINTS = "https://*.mktorest.com"
"""Marketo's REST hosts (``https://<munchkin-id>.mktorest.com``)."""

DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# Characters no well-formed URL of ours needs, and that parsers disagree on.
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f\\]")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""Resolves ``(host, port)`` to IP address strings (tests inject one that records look-ups)."""


class EgressRefused(httpx.ConnectError):
    """A request the egress policy does not allow; nothing was sent."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a request goes: scheme, normalised host, port (the default one filled in)."""

    scheme: str
    host: str
    """Lower-case ASCII host name (IDNA), or an IP address in its compressed form."""
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class _Pattern:
    scheme: str
    host: str
    any_subdomain: bool
    port: int | None
    """None: any port."""

    def matches(self, origin: Origin) -> bool:
        if origin.scheme != self.scheme or self.port not in (None, origin.port):
            return False
        if self.any_subdomain:
            return _ip(origin.host) is None and origin.host.endswith("." + self.host)
        return origin.host == self.host


@dataclass(frozen=True, slots=True)
class OriginList:
    """Origins a setting allows; empty allows nothing."""

    patterns: tuple[_Pattern, ...] = ()

    @classmethod
    def parse(cls, text: str) -> OriginList:
        """Parses comma-separated origins; raises ``ValueError`` naming the bad one."""
        patterns = []
        for item in (part.strip() for part in text.split(",")):
            if item:
                patterns.append(_parse_pattern(item))
        return cls(tuple(patterns))

    def including(self, url: str) -> OriginList:
        """This list plus the origin of ``url`` (exact host and port)."""
        origin = parse_url(url, what="URL")
        extra = _Pattern(origin.scheme, origin.host, any_subdomain=False, port=origin.port)
        return OriginList((*self.patterns, extra))

    def allows(self, origin: Origin) -> bool:
        return any(pattern.matches(origin) for pattern in self.patterns)


def endpoint_allowlist(allowed: str, default_endpoint: str) -> OriginList:
    """The Marketo endpoints allowed: ``allowed`` plus the origin of ``default_endpoint``."""
    origins = OriginList.parse(allowed)
    return origins.including(default_endpoint) if default_endpoint else origins


def parse_url(url: str, *, what: str, query: bool = False) -> Origin:
    """The origin of an ``http(s)`` URL, parsed strictly; ``what`` names it in messages.

    Refused (``ValueError`` saying why): other schemes, user information, a fragment, a query
    unless ``query``, blanks, control characters and backslashes, a bad host name or port, and
    any URL whose host or port httpx would read differently.
    """
    if _FORBIDDEN.search(url):
        raise ValueError(f"{what} must not contain blanks, control characters or backslashes")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in DEFAULT_PORTS:
        raise ValueError(f"{what} must be an http:// or https:// URL")
    authority, tail = _split_authority(rest)
    if "@" in authority:
        raise ValueError(f"{what} must not contain user information (@)")
    if "#" in tail:
        raise ValueError(f"{what} must not have a fragment (#)")
    if "?" in tail and not query:
        raise ValueError(f"{what} must not have a query (?)")
    host, port, _ = _host_port(authority, what, wildcards=False)
    origin = Origin(scheme, host, DEFAULT_PORTS[scheme] if port is None else port)
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise ValueError(f"{what} is not a valid URL") from None
    if _origin_of(parsed) != origin:
        raise ValueError(f"{what} is ambiguous")
    return origin


def _request_origin(url: httpx.URL) -> Origin | None:
    """The origin httpx connects to for ``url``; None for a host that is no valid name."""
    try:
        return _origin_of(url)
    except ValueError:
        return None


def _origin_of(url: httpx.URL) -> Origin:
    scheme = url.scheme.lower()
    port = url.port if url.port is not None else DEFAULT_PORTS.get(scheme, 0)
    return Origin(scheme, _normal_host(url.raw_host.decode("ascii"), "URL"), port)


def _split_authority(rest: str) -> tuple[str, str]:
    """``host[:port]`` and what follows it (path, query, fragment)."""
    for index, char in enumerate(rest):
        if char in "/?#":
            return rest[:index], rest[index:]
    return rest, ""


def _parse_pattern(text: str) -> _Pattern:
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in DEFAULT_PORTS:
        raise ValueError(f"{text!r}: an origin is http:// or https:// then a host")
    if _FORBIDDEN.search(text) or any(c in rest for c in "/?#@"):
        raise ValueError(f"{text!r}: an origin is scheme://host[:port], nothing more")
    host, port, any_port = _host_port(rest, repr(text), wildcards=True)
    any_subdomain = host.startswith("*.")
    if any_subdomain:
        host = host[2:]
    if port is None and not any_port:
        port = DEFAULT_PORTS[scheme]
    return _Pattern(scheme, host, any_subdomain, port)


def _host_port(authority: str, what: str, *, wildcards: bool) -> tuple[str, int | None, bool]:
    """Host, port (None when absent) and whether the port is ``*`` (``wildcards`` only)."""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ValueError(f"{what} has an unclosed [ in its host")
        raw_host, rest = authority[1:end], authority[end + 1 :]
        if _ip(raw_host) is None or ":" not in raw_host:
            raise ValueError(f"{what} must hold an IPv6 address between [ and ]")
        if rest and not rest.startswith(":"):
            raise ValueError(f"{what} has text after its IPv6 address")
        raw_port = rest[1:] if rest else None
    else:
        raw_host, sep, port_text = authority.partition(":")
        raw_port = port_text if sep else None
        if ":" in port_text:
            raise ValueError(f"{what} must write an IPv6 host between [ and ]")
    any_port = wildcards and raw_port == "*"
    port: int | None = None
    if raw_port is not None and not any_port:
        if not (raw_port.isascii() and raw_port.isdigit() and 1 <= int(raw_port) <= 65535):
            raise ValueError(f"{what} has a bad port {raw_port!r} (1 to 65535)")
        port = int(raw_port)
    if wildcards and raw_host.startswith("*."):
        name = _normal_host(raw_host[2:], what)
        if _ip(name) is not None:
            raise ValueError(f"{what}: *. must be followed by a host name, not an address")
        return "*." + name, port, any_port
    return _normal_host(raw_host, what), port, any_port


def _normal_host(raw: str, what: str) -> str:
    if not raw:
        raise ValueError(f"{what} has no host")
    address = _ip(raw)
    if address is not None:
        return address.compressed
    try:
        name = idna.encode(raw, uts46=True).decode("ascii")
    except idna.IDNAError:
        raise ValueError(f"{what} has an invalid host name {raw!r}") from None
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{what} has an invalid host name {raw!r}")
    if labels[-1].isdigit():
        # "2130706433" or "127.1": read as IPv4 addresses by some resolvers.
        raise ValueError(f"{what} has a host that is neither a name nor an IP address")
    return name


def _ip(text: str) -> IPAddress | None:
    """The IP address ``text`` spells, or None (an IPv6 scope, ``%eth0``, spells none)."""
    if "%" in text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_public_address(address: IPAddress) -> bool:
    """Whether ``address`` is a global unicast address: not loopback, private, link-local,
    multicast, reserved, unspecified or shared, nor an IPv6 form of such an IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and not is_public_address(embedded):
            return False
    return bool(
        address.is_global
        and not address.is_multicast
        and not address.is_reserved
        and not address.is_loopback
        and not address.is_link_local
        and not address.is_private
        and not address.is_unspecified
    )


async def system_resolver(host: str, port: int) -> Sequence[str]:
    """The system's addresses for ``host`` (``getaddrinfo``), in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Resolves once, checks every address, connects to a checked address."""

    def __init__(
        self, resolver: Resolver, backend: httpcore.AsyncNetworkBackend, *, public_only: bool
    ) -> None:
        self._resolver = resolver
        self._backend = backend
        self._public_only = public_only

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        literal = _ip(host.strip("[]"))
        if literal is not None:
            addresses: list[IPAddress] = [literal]
        else:
            try:
                answers = await asyncio.wait_for(self._resolver(host, port), timeout)
            except (OSError, TimeoutError):
                raise httpcore.ConnectError(f"{host} could not be resolved") from None
            addresses = [a for a in (_ip(str(x).partition("%")[0]) for x in answers) if a]
        if not addresses:
            raise httpcore.ConnectError(f"{host} has no address")
        if self._public_only and not all(is_public_address(a) for a in addresses):
            raise EgressRefused(f"webhook host {host} resolves to a non-public address")
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._backend.connect_tcp(
                    address.compressed, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                failure = error
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise EgressRefused("webhooks never go to a Unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


def _pinned_transport(backend: _PinnedBackend) -> httpx.AsyncHTTPTransport:
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    # httpx takes no network backend: give it a pool (httpcore's public API) that has ours.
    # No keep-alive: every request resolves and checks its host again.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=20,
        max_keepalive_connections=0,
        network_backend=backend,
    )
    return transport


class WebhookTransport(httpx.AsyncBaseTransport):
    """The transport of alert webhooks, enforcing the egress policy (see the module docstring).

    Refusals raise :class:`EgressRefused` before anything is sent. ``resolver`` and ``backend``
    (which opens the TCP connection to a checked address) are the seams tests replace.
    """

    def __init__(
        self,
        allowed: OriginList,
        *,
        resolver: Resolver | None = None,
        backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._allowed = allowed
        resolve = resolver or system_resolver
        connect = backend or httpcore.AnyIOBackend()
        self._listed = _pinned_transport(_PinnedBackend(resolve, connect, public_only=False))
        self._public = _pinned_transport(_PinnedBackend(resolve, connect, public_only=True))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        origin = _request_origin(request.url)
        if origin is None:
            raise EgressRefused("the webhook URL has an invalid host", request=request)
        if self._allowed.allows(origin):
            return await self._listed.handle_async_request(request)
        if origin.scheme != "https":
            raise EgressRefused(
                f"webhook origin {origin} is not https and not in "
                "MARKETO_DEST_ALLOWED_WEBHOOK_ORIGINS",
                request=request,
            )
        return await self._public.handle_async_request(request)

    async def aclose(self) -> None:
        await self._listed.aclose()
        await self._public.aclose()
