"""The service's configuration: `Settings`, read from the environment once, and the tuning
types each component takes.

Every field of :class:`Settings` is set by the environment variable
``MARKETO_DEST_<FIELD NAME IN CAPITALS>`` (:func:`env_var`); :meth:`Settings.from_env` is called
in ``service.__main__`` only, and every other module receives the :class:`Settings` instance (or
the values it needs) as an argument.

The tuning types are frozen dataclasses, one per component, with defaults that suit production:
:class:`RetryPolicy` (Marketo call retries), :class:`LimitSettings` (this process's share of each
Marketo instance; :attr:`Settings.limits` builds it, and the ``marketo_*`` fields take their
defaults from it), :class:`WebhookSettings` (alert webhooks) and :class:`ExtractPolling` (list
extract status polls). Tests and benchmarks build them with their own numbers.

OpenTelemetry is configured by the standard ``OTEL_*`` variables (``OTEL_SERVICE_NAME``,
``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_TRACES_SAMPLER``, ``OTEL_SDK_DISABLED`` ...). They are not
fields here: they pass straight through to the OpenTelemetry SDK.

To add a setting, add a field with a default and a docstring; give a secret ``repr=False``.
The README's settings table must list it (a test checks).
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from service.backoff import exponential_delay, jittered
from service.delivery.egress import DEFAULT_ALLOWED_ENDPOINTS, OriginList, endpoint_allowlist
from service.marketo.codes import Action

__all__ = [
    "DEFAULT_LIMITS",
    "ENV_PREFIX",
    "ExtractPolling",
    "InvalidSetting",
    "LimitSettings",
    "RetryPolicy",
    "Settings",
    "WebhookSettings",
    "env_var",
    "field_docs",
    "parse_address",
]

ENV_PREFIX = "MARKETO_DEST_"
# Read by the operator commands (marketo_destination_client.cli), not by the service: an
# operator's shell may hold it when it starts the service.
CLIENT_VARIABLES = frozenset({"MARKETO_DEST_TOKEN"})
"""Prefix of every environment variable read into :class:`Settings`."""

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class InvalidSetting(ValueError):
    """A setting has a value the service cannot use; the message names where it came from."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


def env_var(field_name: str) -> str:
    """The environment variable that sets the field ``field_name``."""
    return ENV_PREFIX + field_name.upper()


def parse_address(value: str) -> str:
    """Checks a ``HOST:PORT`` listen address (``[::1]:50051`` for IPv6) and returns it unchanged.

    Raises ``ValueError`` saying what is wrong.
    """
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port must be a number from 0 to 65535, got {port!r}")
    return value


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a Marketo call is retried: backoff with jitter, bounded by attempts and a deadline per
    HTTP call."""

    max_attempts: int = 8
    """Calls made for one request at most (the first included)."""
    deadline: float = 300.0
    """Seconds from the first attempt after which no retry is started."""
    base_delay: float = 1.0
    """First backoff for transient failures (604/608/611/713/719, 5xx, connection errors)."""
    throttle_delay: float = 2.0
    """First backoff after 606 (rate limit) or a busy import queue."""
    concurrency_delay: float = 0.5
    """First backoff after 615 (concurrency limit)."""
    max_delay: float = 30.0
    """Cap on any single backoff."""
    multiplier: float = 2.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)
    """Source of jitter; seed it in tests for reproducible delays."""

    def delay(self, action: Action, retry_number: int, code: str | None = None) -> float:
        """Seconds to wait before retry `retry_number` (1-based): exponential, jittered
        between half and all of the nominal delay."""
        if action is Action.THROTTLED:
            base = self.concurrency_delay if code == "615" else self.throttle_delay
        else:
            base = self.base_delay
        nominal = exponential_delay(
            base, retry_number, multiplier=self.multiplier, maximum=self.max_delay
        )
        return jittered(nominal, 0.5, self.rng)


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """How much of each Marketo instance this process may use. The service builds it from its
    settings (:attr:`Settings.limits`), whose ``marketo_*`` fields default to these values, as
    do the arguments of ``service.marketo.limits.InstanceLimits`` (no daily reserve there)."""

    share: float = 0.8
    """Share of the instance's 100 calls / 20 s left to this service (others keep the rest)."""
    window_seconds: float = 20.0
    concurrency: int = 8
    daily_quota: int = 50_000
    daily_reserve: int = 5_000
    """Calls a day left for the instance's other integrations."""


DEFAULT_LIMITS = LimitSettings()
"""Where the defaults of the ``marketo_*`` limit settings (and of
``service.marketo.limits.InstanceLimits``) come from."""

_LEAST_LEASE_TTL = 30.0
"""Seconds: the automatic lease TTL with the embedded store, and the least with PostgreSQL."""


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """How alert webhooks are delivered."""

    max_attempts: int = 6
    """Tries per event before it is given up (logged)."""
    base_delay: float = 1.0
    """Seconds before the first retry; doubled on each retry."""
    max_delay: float = 60.0
    timeout: float = 5.0
    """Seconds per request (connect, read, write and pool wait each)."""
    queue_size: int = 100
    """Events waiting per destination; beyond it the oldest is dropped (logged)."""

    @property
    def attempt_seconds(self) -> float:
        """The longest one attempt lasts, from the pool wait to the answer's headers: each of
        its four phases at its own `timeout` (a receiver trickling its answer is cut there)."""
        return 4 * self.timeout

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt `attempt` (1-based): exponential, jittered
        between half and all of the nominal delay."""
        nominal = exponential_delay(
            self.base_delay, attempt, multiplier=2.0, maximum=self.max_delay
        )
        return jittered(nominal, 0.5, rng)


@dataclass(frozen=True, slots=True)
class ExtractPolling:
    """How a list extract's status is polled: first after `initial` seconds, then growing."""

    initial: float = 2.0
    maximum: float = 30.0
    multiplier: float = 1.5
    timeout: float = 3600.0
    """An extract not Completed after this many seconds is cancelled and the run fails."""

    def delay(self, poll_number: int) -> float:
        """Seconds to wait before status poll `poll_number` (1-based)."""
        return exponential_delay(
            self.initial, poll_number, multiplier=self.multiplier, maximum=self.maximum
        )


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the service can be configured with. Defaults suit a local run."""

    address: str = "127.0.0.1:50051"
    """gRPC listen address, ``HOST:PORT``; port 0 picks a free port."""

    metrics_address: str = ""
    """Prometheus endpoint, ``HOST:PORT`` (e.g. ``127.0.0.1:9464``), serving the service's metrics
    at ``/metrics`` beside the OTLP export; no authentication, aggregated figures only (see
    docs/observability.md). Empty: off."""

    data_dir: Path = Path("data")
    """Directory of the embedded store (SQLite) and other local state; created owner-only
    (0700) if missing, its files owner-only (0600)."""

    sandbox: bool = False
    """Start the embedded Marketo sandbox and use it for destinations that give no endpoint."""

    default_marketo_endpoint: str = ""
    """Marketo REST base URL for destinations that give none. Empty: each instance's own
    ``https://<munchkin-id>.mktorest.com``. Set to the embedded sandbox's URL by ``--sandbox``."""

    allowed_endpoints: str = DEFAULT_ALLOWED_ENDPOINTS
    """Comma-separated origins (``scheme://host[:port]``; the host may start with ``*.``, the
    port may be ``*``) that destinations' Marketo endpoints may point to; the origin of
    ``default_marketo_endpoint`` (the embedded sandbox's with ``--sandbox``) is always added.
    Any other endpoint is refused; see docs/access-control.md."""

    allowed_webhook_origins: str = ""
    """Comma-separated origins (same syntax) that alert webhooks may be sent to as given (``http``
    and loopback or private addresses included). Any other webhook must be ``https`` to a host
    that resolves to public addresses only."""

    grace_seconds: float = 10.0
    """On SIGTERM/SIGINT, how long in-flight calls may take to finish before they are cancelled."""

    log_level: str = "INFO"
    """Log level: DEBUG, INFO, WARNING, ERROR or CRITICAL."""

    log_json: bool = False
    """Write logs as JSON lines (with trace and span ids) instead of plain text."""

    secret_key: str = field(default="", repr=False)
    """Fernet key that seals stored Marketo and webhook secrets. Empty: a key generated on first
    start into ``<data_dir>/secret.key`` (owner-only permissions)."""

    sqlite_synchronous: str = "FULL"
    """Durability of the embedded store's commits: ``FULL`` (an acknowledged update survives a
    power loss) or ``NORMAL`` (it survives a crash of the service; faster commits)."""

    principals_file: Path | None = None
    """JSON file of callers (bearer-token hashes or mTLS subjects, tenant, permissions); see
    docs/access-control.md. Unset: no authentication, and the server only binds loopback."""

    tls_cert_file: Path | None = None
    """PEM certificate of the gRPC listener. Set with ``tls_key_file`` to serve TLS."""

    tls_key_file: Path | None = field(default=None, repr=False)
    """PEM private key of the gRPC listener."""

    tls_client_ca_file: Path | None = None
    """PEM CA bundle of client certificates; when set, clients must present one (mTLS)."""

    policies_file: Path | None = None
    """JSON file of data-usage policies (labels a marketing action may not export); see
    docs/governance.md. Unset: no policy."""

    blocked_plugins: str = ""
    """Comma-separated names of mapping plugins (entry-point names) not to load."""

    list_folder: str = "Marketo Destination"
    """Marketo folder (in each destination's workspace) where audience lists are created."""

    batch_size: int = 300
    """Most updates one dispatched batch carries."""

    bulk_threshold: int = 5_000
    """Due updates of one destination from which they go through Marketo's bulk lead import
    instead of REST (see docs/bulk-import.md); 0 never uses bulk import."""

    linger_seconds: float = 1.0
    """How long the dispatcher waits for a batch to fill before sending what it has."""

    max_backlog: int = 1_000_000
    """Pending updates per destination above which Sync slows down, then refuses."""

    backpressure_wait_seconds: float = 30.0
    """How long a Sync request waits for the backlog to drop below the bound before it is
    refused with RESOURCE_EXHAUSTED."""

    marketo_share: float = DEFAULT_LIMITS.share
    """Share of each Marketo instance's 100 calls / 20 s this service may use."""

    marketo_window_seconds: float = DEFAULT_LIMITS.window_seconds
    """Length of Marketo's rate window (100 calls per 20 s); only a time-scaled sandbox (demo,
    benchmarks) has a shorter one."""

    marketo_concurrency: int = DEFAULT_LIMITS.concurrency
    """Concurrent Marketo calls per instance (Marketo allows 10 in all)."""

    marketo_daily_quota: int = DEFAULT_LIMITS.daily_quota
    """Daily API quota of each Marketo instance."""

    marketo_daily_reserve: int = DEFAULT_LIMITS.daily_reserve
    """Calls a day left for each instance's other integrations."""

    replica_id: str = ""
    """Name of this replica in instance leases. Empty: host name and process id."""

    database_url: str = field(default="", repr=False)
    """PostgreSQL URL (``postgresql://user:password@host:5432/db``) of the store shared by every
    replica; see docs/deploying.md. Empty: the embedded SQLite store in ``data_dir``."""

    lease_ttl_seconds: float = 0.0
    """How long a replica's lease on a Marketo instance lasts without a heartbeat (renewed every
    third of it); a dead replica's instances are taken over after it, and with PostgreSQL their
    first Marketo call waits the call margin more. 0: 30 s with the embedded store; with
    PostgreSQL 1.8 times the call margin (``marketo_timeout_seconds +
    lease_clock_skew_seconds``, 180 s by default), at least 30 s; a value set with PostgreSQL
    must exceed 1.5 times the call margin."""

    marketo_timeout_seconds: float = 95.0
    """Longest wait for Marketo's answer to one HTTP exchange (Sync Leads may take it 90 s). A
    drainer starts a call only while its lease is confirmed for more than this plus
    ``lease_clock_skew_seconds`` (see docs/deploying.md)."""

    lease_clock_skew_seconds: float = 5.0
    """How far apart the clocks of the replicas may be; part of the call margin."""

    marketo_replica_header: bool = False
    """Send this replica's id in an ``X-Marketo-Dest-Replica`` header of every Marketo call (for
    a sandbox that logs who called; never needed against Marketo)."""

    schema_recheck_seconds: float = 60.0
    """How long a destination paused because Marketo's lead schema lacks a mapped field waits
    before the schema is read again; the wait doubles after each unchanged read, up to ten
    times this."""

    reconcile_interval_seconds: float = 21600.0
    """How often each destination's lists are reconciled against Marketo (their real members
    read back, drift repaired) without any RPC; 0 turns periodic reconciliation off."""

    reconcile_budget_share: float = 0.05
    """The share of the instance's daily call quota reconciliation may spend: a periodic run is
    skipped while its estimated calls would take today's reconciliation calls past it."""

    outcome_retention_days: float = 30.0
    """How long each update's outcome (``ListProfileOutcomes``) and each profile's resync source
    (its latest applied profile, kept for Resync) are kept; older ones are deleted in the
    background. 0 keeps them for ever."""

    max_clock_skew_seconds: int = 300
    """How far in the future an update's ``event_time`` may be (callers' clocks drift); Sync
    and PreviewSync reject an update further ahead, naming ``updates[i].event_time``."""

    def __post_init__(self) -> None:
        try:
            parse_address(self.address)
        except ValueError as error:
            raise InvalidSetting("address", str(error)) from None
        if self.metrics_address:
            try:
                parse_address(self.metrics_address)
            except ValueError as error:
                raise InvalidSetting("metrics_address", str(error)) from None
        if not self.grace_seconds >= 0:
            raise InvalidSetting("grace_seconds", f"must be 0 or more, got {self.grace_seconds}")
        if self.log_level.upper() not in _LOG_LEVELS:
            raise InvalidSetting(
                "log_level", f"must be one of {', '.join(_LOG_LEVELS)}, got {self.log_level!r}"
            )
        object.__setattr__(self, "log_level", self.log_level.upper())
        if self.sqlite_synchronous.upper() not in ("FULL", "NORMAL"):
            raise InvalidSetting(
                "sqlite_synchronous", f"must be FULL or NORMAL, got {self.sqlite_synchronous!r}"
            )
        object.__setattr__(self, "sqlite_synchronous", self.sqlite_synchronous.upper())
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise InvalidSetting("tls_cert_file", "set both tls_cert_file and tls_key_file")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise InvalidSetting("tls_client_ca_file", "mTLS needs tls_cert_file and tls_key_file")
        for name in ("batch_size", "max_backlog", "marketo_concurrency", "marketo_daily_quota"):
            if getattr(self, name) < 1:
                raise InvalidSetting(name, f"must be 1 or more, got {getattr(self, name)}")
        if not 0 < self.marketo_share <= 1:
            raise InvalidSetting("marketo_share", f"must be in (0, 1], got {self.marketo_share}")
        if self.marketo_window_seconds <= 0:
            raise InvalidSetting("marketo_window_seconds", "must be more than 0")
        if self.bulk_threshold < 0:
            raise InvalidSetting("bulk_threshold", f"must be 0 or more, got {self.bulk_threshold}")
        if self.linger_seconds < 0 or self.marketo_daily_reserve < 0:
            raise InvalidSetting("linger_seconds", "linger and reserve must not be negative")
        if self.database_url and not self.database_url.startswith(("postgresql://", "postgres://")):
            raise InvalidSetting("database_url", "must be a postgresql:// URL or empty")
        if not self.lease_ttl_seconds >= 0:
            raise InvalidSetting("lease_ttl_seconds", "must be 0 (automatic) or more")
        if not self.marketo_timeout_seconds > 0 or not self.lease_clock_skew_seconds >= 0:
            raise InvalidSetting(
                "marketo_timeout_seconds", "the timeout must be more than 0, the skew 0 or more"
            )
        if self.database_url and not self.lease_ttl * 2 / 3 > self.call_margin_seconds:
            raise InvalidSetting(
                "lease_ttl_seconds",
                f"must be more than 1.5 times the call margin ({self.call_margin_seconds:g} s: "
                "marketo_timeout_seconds + lease_clock_skew_seconds), "
                f"got {self.lease_ttl_seconds:g}",
            )
        if not self.schema_recheck_seconds > 0:
            raise InvalidSetting("schema_recheck_seconds", "must be more than 0")
        if not self.reconcile_interval_seconds >= 0:
            raise InvalidSetting("reconcile_interval_seconds", "must be 0 or more")
        if not 0 <= self.reconcile_budget_share <= 1:
            raise InvalidSetting("reconcile_budget_share", "must be between 0 and 1")
        if not self.outcome_retention_days >= 0:
            raise InvalidSetting(
                "outcome_retention_days", f"must be 0 or more, got {self.outcome_retention_days}"
            )
        if not 0 <= self.max_clock_skew_seconds <= 86_400:
            raise InvalidSetting(
                "max_clock_skew_seconds",
                f"must be from 0 to 86400, got {self.max_clock_skew_seconds}",
            )
        endpoint = self.default_marketo_endpoint
        if endpoint and not endpoint.startswith(("http://", "https://")):
            raise InvalidSetting(
                "default_marketo_endpoint", f"must be an http(s) URL, got {endpoint!r}"
            )
        for name in ("allowed_endpoints", "allowed_webhook_origins"):
            try:
                OriginList.parse(getattr(self, name))
            except ValueError as error:
                raise InvalidSetting(name, str(error)) from None
        try:
            endpoint_allowlist(self.allowed_endpoints, endpoint)
        except ValueError as error:
            raise InvalidSetting("default_marketo_endpoint", str(error)) from None

    @property
    def call_margin_seconds(self) -> float:
        """Confirmed lease under which a drainer of a replica (PostgreSQL) starts no Marketo
        call: timeout plus skew. The embedded store has one process, no other holder."""
        return self.marketo_timeout_seconds + self.lease_clock_skew_seconds

    @property
    def lease_ttl(self) -> float:
        """The lease TTL in seconds, `lease_ttl_seconds` or the automatic one."""
        if self.lease_ttl_seconds:
            return self.lease_ttl_seconds
        if not self.database_url:
            return _LEAST_LEASE_TTL
        return max(_LEAST_LEASE_TTL, 1.8 * self.call_margin_seconds)

    @property
    def limits(self) -> LimitSettings:
        """The ``marketo_*`` limits: how much of each Marketo instance this process may use."""
        return LimitSettings(
            share=self.marketo_share,
            window_seconds=self.marketo_window_seconds,
            concurrency=self.marketo_concurrency,
            daily_quota=self.marketo_daily_quota,
            daily_reserve=self.marketo_daily_reserve,
        )

    @property
    def endpoint_allowlist(self) -> OriginList:
        """The Marketo endpoints allowed: :attr:`allowed_endpoints` plus the default endpoint."""
        return endpoint_allowlist(self.allowed_endpoints, self.default_marketo_endpoint)

    @property
    def webhook_allowlist(self) -> OriginList:
        """:attr:`allowed_webhook_origins`, parsed."""
        return OriginList.parse(self.allowed_webhook_origins)

    @property
    def blocked_plugin_names(self) -> tuple[str, ...]:
        """:attr:`blocked_plugins` as a tuple of names."""
        return tuple(name.strip() for name in self.blocked_plugins.split(",") if name.strip())

    @property
    def log_level_number(self) -> int:
        """:attr:`log_level` as a :mod:`logging` level number."""
        level: int = logging.getLevelNamesMapping()[self.log_level]
        return level

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Builds the settings from ``environ``; unset variables keep their defaults.

        Raises :class:`InvalidSetting` naming the variable when a value cannot be used, or when a
        ``MARKETO_DEST_*`` variable matches no setting (a typo would otherwise go unnoticed).
        """
        names = {env_var(f.name): f.name for f in dataclasses.fields(cls)}
        unknown = sorted(
            k
            for k in environ
            if k.startswith(ENV_PREFIX) and k not in names and k not in CLIENT_VARIABLES
        )
        if unknown:
            raise InvalidSetting(unknown[0], f"unknown setting; known: {', '.join(sorted(names))}")
        types = get_type_hints(cls)
        values: dict[str, Any] = {}
        for var, name in names.items():
            if var in environ:
                try:
                    values[name] = _convert(environ[var], types[name])
                except ValueError as error:
                    raise InvalidSetting(var, str(error)) from None
        try:
            return cls(**values)
        except InvalidSetting as error:
            raise InvalidSetting(env_var(error.name), error.problem) from None

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (validated like the original)."""
        return dataclasses.replace(self, **changes)


def field_docs() -> dict[str, str]:
    """Each field's docstring, by field name (read from the source: used for documentation)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(Settings))
    body = tree.body[0]
    assert isinstance(body, ast.ClassDef)
    docs: dict[str, str] = {}
    for node, following in zip(body.body, body.body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = inspect.cleandoc(following.value.value)
    return docs


def _convert(raw: str, kind: Any) -> Any:
    if kind is bool:
        value = raw.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise ValueError(f"expected true or false (1/0, yes/no, on/off), got {raw!r}")
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"expected a whole number, got {raw!r}") from None
    if kind is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
    if kind == Path | None:
        return Path(raw) if raw else None
    if kind is Path:
        if not raw:
            raise ValueError("expected a directory path, got an empty value")
        return Path(raw)
    if kind is str:
        return raw
    raise TypeError(f"no conversion from the environment to {kind!r}")
