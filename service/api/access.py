"""Access control: principals, permissions, the per-RPC permission table and its interceptor.

A caller authenticates with a bearer token (``authorization: Bearer <token>`` metadata) or, when
the listener runs mutual TLS, with its client certificate. Either maps to a :class:`Principal`
from the principals file (``MARKETO_DEST_PRINCIPALS_FILE``)::

    [
      {"name": "crm-sync", "tenant": "acme",
       "permissions": ["destinations.view", "destinations.activate", "profiles.view"],
       "token_sha256": "<hex SHA-256 of the token>"},
      {"name": "batch", "tenant": "acme", "permissions": ["destinations.view"],
       "mtls_subject": "batch.acme.internal"}
    ]

:class:`AccessInterceptor` authenticates every call, checks :data:`RPC_PERMISSIONS` and puts the
principal in a context variable that use cases read with :func:`current_principal`; use cases check
further permissions with :func:`require`. Health and reflection need nothing.

With no principals configured every caller is :data:`LOCAL_PRINCIPAL` (tenant ``default``, every
permission), and :func:`check_bind_address` keeps the listener on loopback.

Tokens are kept only as SHA-256 digests, compared with :func:`hmac.compare_digest`, and never
logged.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import hmac
import inspect
import ipaddress
import json
import logging
import os
import re
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import grpc

from service.api.handlers import rewrap
from service.api.tls import client_identities
from service.errors import DestinationError, PermissionDenied, Unauthenticated

__all__ = [
    "ALL_PERMISSIONS",
    "DESTINATIONS_ACTIVATE",
    "DESTINATIONS_MANAGE",
    "DESTINATIONS_VIEW",
    "IDENTITY_GRAPH_VIEW",
    "LOCAL_PRINCIPAL",
    "PROFILES_VIEW",
    "PUBLIC_SERVICES",
    "RPC_PERMISSIONS",
    "SEGMENTS_VIEW",
    "SERVICE_NAME",
    "AccessInterceptor",
    "InsecureBindError",
    "Principal",
    "Principals",
    "PrincipalsFileError",
    "check_bind_address",
    "current_principal",
    "is_loopback_address",
    "load_principals",
    "parse_principals",
    "principal_scope",
    "require",
]

_log = logging.getLogger(__name__)

DESTINATIONS_VIEW: Final = "destinations.view"
DESTINATIONS_MANAGE: Final = "destinations.manage"
DESTINATIONS_ACTIVATE: Final = "destinations.activate"
PROFILES_VIEW: Final = "profiles.view"
SEGMENTS_VIEW: Final = "segments.view"
IDENTITY_GRAPH_VIEW: Final = "identity_graph.view"

ALL_PERMISSIONS: Final = frozenset(
    {
        DESTINATIONS_VIEW,
        DESTINATIONS_MANAGE,
        DESTINATIONS_ACTIVATE,
        PROFILES_VIEW,
        SEGMENTS_VIEW,
        IDENTITY_GRAPH_VIEW,
    }
)
"""Every permission a principal can hold (PRODUCT.md, "Permissions")."""

SERVICE_NAME: Final = "marketo_destination.v1.MarketoDestinationService"
"""Full name of the guarded service, as in the proto package."""


def _rpc(name: str) -> str:
    return f"/{SERVICE_NAME}/{name}"


RPC_PERMISSIONS: Final[Mapping[str, frozenset[str]]] = {
    _rpc("Configure"): frozenset({DESTINATIONS_VIEW, DESTINATIONS_MANAGE}),
    _rpc("GetDestination"): frozenset({DESTINATIONS_VIEW}),
    _rpc("ListDestinations"): frozenset({DESTINATIONS_VIEW}),
    _rpc("DeleteDestination"): frozenset({DESTINATIONS_VIEW, DESTINATIONS_MANAGE}),
    _rpc("DescribeMarketo"): frozenset({DESTINATIONS_VIEW}),
    # identity_graph.view is checked by the Activate use case, only for identityMap.* sources.
    _rpc("Activate"): frozenset(
        {DESTINATIONS_VIEW, DESTINATIONS_ACTIVATE, PROFILES_VIEW, SEGMENTS_VIEW}
    ),
    _rpc("Deactivate"): frozenset({DESTINATIONS_VIEW, DESTINATIONS_ACTIVATE}),
    _rpc("Reconcile"): frozenset({DESTINATIONS_VIEW, DESTINATIONS_ACTIVATE}),
    _rpc("Sync"): frozenset({DESTINATIONS_VIEW, DESTINATIONS_ACTIVATE, PROFILES_VIEW}),
    _rpc("PreviewSync"): frozenset({DESTINATIONS_VIEW, PROFILES_VIEW}),
    _rpc("GetDataflow"): frozenset({DESTINATIONS_VIEW}),
    _rpc("ListProfileOutcomes"): frozenset({DESTINATIONS_VIEW, PROFILES_VIEW}),
    _rpc("WatchAlerts"): frozenset({DESTINATIONS_VIEW}),
    _rpc("Resync"): frozenset({DESTINATIONS_VIEW, DESTINATIONS_ACTIVATE}),
    _rpc("ForgetProfile"): frozenset({DESTINATIONS_VIEW, DESTINATIONS_MANAGE, PROFILES_VIEW}),
}
"""Permissions each RPC needs, by full method name. A method missing here is refused."""

PUBLIC_SERVICES: Final = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
)
"""Services callable without credentials."""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    name: str
    """Name from the principals file; appears in logs, never a secret."""
    tenant: str
    """The tenant whose destinations the caller may see and touch."""
    permissions: frozenset[str]
    """Permissions held, from :data:`ALL_PERMISSIONS`."""

    def missing(self, required: Iterable[str]) -> tuple[str, ...]:
        """The permissions of ``required`` this principal lacks, sorted."""
        return tuple(sorted(set(required) - self.permissions))


LOCAL_PRINCIPAL: Final = Principal(name="local", tenant="default", permissions=ALL_PERMISSIONS)
"""Every caller when no principals are configured (loopback only)."""


# ---------------------------------------------------------------------------------------------
# Use-case side


_current: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "marketo_destination_principal"
)


def current_principal() -> Principal:
    """The principal of the RPC being handled.

    Raises :class:`~service.errors.Unauthenticated` outside an authenticated call.
    """
    try:
        return _current.get()
    except LookupError:
        raise Unauthenticated("no authenticated caller") from None


@contextlib.contextmanager
def principal_scope(principal: Principal) -> Iterator[Principal]:
    """Run a block as ``principal`` (tests and background work started on a caller's behalf)."""
    token = _current.set(principal)
    try:
        yield principal
    finally:
        _current.reset(token)


def require(principal: Principal, *permissions: str) -> None:
    """Raise :class:`~service.errors.PermissionDenied` naming what ``principal`` lacks."""
    missing = principal.missing(permissions)
    if missing:
        raise PermissionDenied(f"missing permission: {', '.join(missing)}")


# ---------------------------------------------------------------------------------------------
# The principals file


class PrincipalsFileError(ValueError):
    """The principals file cannot be used; the message says where and why (never a token)."""


_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class Principals:
    """The configured principals, looked up by token digest or client-certificate identity."""

    def __init__(
        self,
        by_token: Sequence[tuple[bytes, Principal]] = (),
        by_subject: Mapping[str, Principal] | None = None,
    ) -> None:
        self._by_token = tuple(by_token)
        self._by_subject = dict(by_subject or {})

    def __bool__(self) -> bool:
        return bool(self._by_token or self._by_subject)

    def __repr__(self) -> str:
        return f"Principals({len(self._by_token)} tokens, {len(self._by_subject)} subjects)"

    def by_token(self, token: str) -> Principal | None:
        """The principal holding ``token``, or ``None``."""
        digest = _digest(token)
        found: Principal | None = None
        # Compare against every entry so the time taken says nothing about which one matched.
        for candidate, principal in self._by_token:
            if hmac.compare_digest(candidate, digest):
                found = principal
        return found

    def by_subjects(self, subjects: Collection[str]) -> Principal | None:
        """The one principal whose ``mtls_subject`` is among ``subjects``, or ``None``."""
        matches = {self._by_subject[s] for s in subjects if s in self._by_subject}
        return matches.pop() if len(matches) == 1 else None


def _entry_error(where: str, message: str) -> PrincipalsFileError:
    return PrincipalsFileError(f"{where}: {message}")


def _str_field(entry: Mapping[str, Any], key: str, where: str) -> str | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _entry_error(where, f"{key!r} must be a non-empty string")
    return value


def parse_principals(data: Any, *, source: str = "principals") -> Principals:
    """Build :class:`Principals` from the decoded JSON of a principals file."""
    if not isinstance(data, list):
        raise PrincipalsFileError(f"{source}: expected a JSON list of principals")
    known_keys = {"name", "tenant", "permissions", "token", "token_sha256", "mtls_subject"}
    by_token: list[tuple[bytes, Principal]] = []
    by_subject: dict[str, Principal] = {}
    names: set[str] = set()
    for index, entry in enumerate(data):
        where = f"{source}[{index}]"
        if not isinstance(entry, dict):
            raise _entry_error(where, "expected an object")
        unknown = sorted(set(entry) - known_keys)
        if unknown:
            raise _entry_error(where, f"unknown keys {unknown}")
        name = _str_field(entry, "name", where)
        tenant = _str_field(entry, "tenant", where)
        if name is None or tenant is None:
            raise _entry_error(where, "'name' and 'tenant' are required")
        where = f"{where} ({name})"
        if name in names:
            raise _entry_error(where, "duplicate name")
        names.add(name)
        permissions = entry.get("permissions", [])
        if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
            raise _entry_error(where, "'permissions' must be a list of strings")
        unknown_permissions = sorted(set(permissions) - ALL_PERMISSIONS)
        if unknown_permissions:
            raise _entry_error(
                where,
                f"unknown permissions {unknown_permissions}; known: {sorted(ALL_PERMISSIONS)}",
            )
        principal = Principal(name=name, tenant=tenant, permissions=frozenset(permissions))

        token = _str_field(entry, "token", where)
        token_sha256 = _str_field(entry, "token_sha256", where)
        subject = _str_field(entry, "mtls_subject", where)
        if token is not None and token_sha256 is not None:
            raise _entry_error(where, "give 'token' or 'token_sha256', not both")
        if token is None and token_sha256 is None and subject is None:
            raise _entry_error(where, "needs 'token', 'token_sha256' or 'mtls_subject'")
        digest: bytes | None = None
        if token is not None:
            digest = _digest(token)
        elif token_sha256 is not None:
            if not _HEX_SHA256.fullmatch(token_sha256.lower()):
                raise _entry_error(where, "'token_sha256' must be 64 hexadecimal digits")
            digest = bytes.fromhex(token_sha256)
        if digest is not None:
            if any(hmac.compare_digest(digest, other) for other, _ in by_token):
                raise _entry_error(where, "token already used by another principal")
            by_token.append((digest, principal))
        if subject is not None:
            if subject in by_subject:
                raise _entry_error(where, f"mtls_subject {subject!r} already used")
            by_subject[subject] = principal
    return Principals(by_token, by_subject)


def load_principals(path: str | os.PathLike[str]) -> Principals:
    """Read a principals file (see the module docstring); :class:`PrincipalsFileError` if bad."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as file:
            data = json.load(file)
    except OSError as error:
        raise PrincipalsFileError(f"{source}: cannot read: {error.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        # The decoder's message may quote the file; keep only the position.
        position = f" at line {error.lineno}" if isinstance(error, json.JSONDecodeError) else ""
        raise PrincipalsFileError(f"{source}: not valid JSON{position}") from None
    return parse_principals(data, source=source)


# ---------------------------------------------------------------------------------------------
# Bind address


class InsecureBindError(ValueError):
    """A non-loopback listen address with no principals configured."""


def _host_of(address: str) -> str | None:
    """The host part of a gRPC listen address; ``None`` for a Unix socket."""
    if address.startswith(("unix:", "unix-abstract:")):
        return None
    if address.startswith("["):
        host, _, _ = address[1:].partition("]")
        return host
    host, sep, _ = address.rpartition(":")
    return host if sep else address


def is_loopback_address(address: str) -> bool:
    """Whether a gRPC listen address (``host:port``, ``[v6]:port``, ``unix:...``) is local only."""
    host = _host_of(address)
    if host is None:
        return True
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind_address(address: str, auth_enabled: bool) -> None:
    """Refuse to listen beyond loopback without principals; warn when running unauthenticated."""
    if auth_enabled:
        return
    if not is_loopback_address(address):
        raise InsecureBindError(
            f"refusing to listen on {address!r} without authentication: no principals are "
            "configured (set MARKETO_DEST_PRINCIPALS_FILE), so only a loopback address such as "
            "127.0.0.1:50051 or [::1]:50051 is allowed"
        )
    _log.warning(
        "no principals configured: the service is unauthenticated, every caller acts as the "
        "local principal (tenant %r, all permissions); listening on loopback %s only",
        LOCAL_PRINCIPAL.tenant,
        address,
    )


# ---------------------------------------------------------------------------------------------
# The interceptor


# grpc's classes are generic in the stubs only; subscripting them at run time fails.
if TYPE_CHECKING:
    _Handler = grpc.RpcMethodHandler[Any, Any]
    _Context = grpc.aio.ServicerContext[Any, Any]
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Handler = grpc.RpcMethodHandler
    _Context = grpc.aio.ServicerContext
    _ServerInterceptor = grpc.aio.ServerInterceptor
_Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]]
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +(\S+)")


def _service_of(method: str) -> str:
    return method.lstrip("/").partition("/")[0]


class AccessInterceptor(_ServerInterceptor):
    """Authenticates each call, enforces :data:`RPC_PERMISSIONS`, exposes the principal.

    ``principals``: the configured principals; empty or ``None`` means every caller is
    :data:`LOCAL_PRINCIPAL`. ``mtls``: trust the verified client certificate's identity (only
    when the listener requires client certificates). A bearer token, when sent, takes
    precedence over the certificate and must be valid.
    """

    def __init__(
        self,
        principals: Principals | None,
        *,
        mtls: bool = False,
        permissions: Mapping[str, frozenset[str]] = RPC_PERMISSIONS,
        public_services: Collection[str] = PUBLIC_SERVICES,
    ) -> None:
        self._principals = principals if principals else None
        self._mtls = mtls
        self._permissions = dict(permissions)
        self._public = frozenset(public_services)

    @property
    def auth_enabled(self) -> bool:
        """Whether callers must present credentials."""
        return self._principals is not None

    def authenticate(self, context: _Context) -> Principal:
        """The caller's principal; :class:`~service.errors.Unauthenticated` if none."""
        if self._principals is None:
            return LOCAL_PRINCIPAL
        values = [
            value
            for key, value in (context.invocation_metadata() or ())
            if key.lower() == "authorization"
        ]
        if len(values) > 1:
            raise Unauthenticated("more than one authorization header")
        if values:
            value = values[0]
            match = _BEARER.fullmatch(value.strip()) if isinstance(value, str) else None
            if match is None:
                raise Unauthenticated("authorization must be 'Bearer <token>'")
            principal = self._principals.by_token(match.group(1))
            if principal is None:
                raise Unauthenticated("invalid bearer token")
            return principal
        if self._mtls:
            subjects = client_identities(context.auth_context())
            if subjects:
                principal = self._principals.by_subjects(subjects)
                if principal is None:
                    raise Unauthenticated("client certificate is not mapped to a principal")
                return principal
        raise Unauthenticated("missing credentials: send 'authorization: Bearer <token>'")

    def authorize(self, method: str, principal: Principal) -> None:
        """Raise :class:`~service.errors.PermissionDenied` unless ``principal`` may call it."""
        required = self._permissions.get(method)
        if required is None:
            raise PermissionDenied(f"{method} is not open to any caller")
        require(principal, *required)

    async def _admit(self, method: str, context: _Context) -> Principal:
        try:
            principal = self.authenticate(context)
            self.authorize(method, principal)
        except DestinationError as error:
            _log.info(
                "%s refused: %s %s (peer %s)",
                method,
                error.status.name,
                error.message,
                context.peer(),
            )
            await context.abort(error.status, error.message)
        return principal

    async def intercept_service(
        self, continuation: _Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> _Handler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or _service_of(method) in self._public:
            return handler
        return _wrap(handler, lambda context: self._admit(method, context))


_Admit = Callable[[_Context], Awaitable[Principal]]


def _guard_unary(behavior: Callable[..., Any], admit: _Admit) -> Callable[..., Any]:
    async def guarded(request: Any, context: _Context) -> Any:
        principal = await admit(context)
        token = _current.set(principal)
        try:
            result = behavior(request, context)
            if inspect.isawaitable(result):
                result = await result
            return result
        finally:
            _current.reset(token)

    return guarded


def _guard_stream(behavior: Callable[..., Any], admit: _Admit) -> Callable[..., Any]:
    # grpc.aio picks the calling convention from the function type: an async generator yields
    # responses, a coroutine function writes them with context.write. Keep the original's type.
    if inspect.isasyncgenfunction(behavior):

        async def generator(request: Any, context: _Context) -> AsyncIterator[Any]:
            principal = await admit(context)
            token = _current.set(principal)
            try:
                async for response in behavior(request, context):
                    yield response
            finally:
                # Finalised from another context (garbage-collected generator): nothing to undo.
                with contextlib.suppress(ValueError):
                    _current.reset(token)

        return generator
    if inspect.iscoroutinefunction(behavior):
        return _guard_unary(behavior, admit)

    async def writer(request: Any, context: _Context) -> None:
        # A synchronous handler (e.g. the generated base class's "unimplemented"): run it inline.
        principal = await admit(context)
        token = _current.set(principal)
        try:
            for response in behavior(request, context) or ():
                await context.write(response)
        finally:
            _current.reset(token)

    return writer


def _wrap(handler: _Handler, admit: _Admit) -> _Handler:
    wrapped = rewrap(
        handler,
        unary=lambda behavior: _guard_unary(behavior, admit),
        stream=lambda behavior: _guard_stream(behavior, admit),
    )
    if wrapped is None:
        raise TypeError("RPC method handler with no behaviour")
    return wrapped
