"""Settings: defaults, the environment, validation, command-line overrides, documentation."""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from service.__main__ import build_parser, settings_for
from service.api import convert, sync_checks
from service.app import delivery_settings
from service.delivery.config import DeliverySettings
from service.marketo.limits import InstanceLimits
from service.settings import (
    ENV_PREFIX,
    InvalidSetting,
    LimitSettings,
    Settings,
    env_var,
    field_docs,
)
from service.usecases.activation import Activations
from service.usecases.ingest import Ingest
from service.usecases.reconcile import Reconciliation

from .conftest import REPO

FIELDS = [f.name for f in dataclasses.fields(Settings)]


def test_defaults_suit_a_local_run() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.address == "127.0.0.1:50051"
    assert settings.data_dir == Path("data")
    assert settings.sandbox is False
    assert settings.grace_seconds > 0


def test_the_limit_settings_are_the_marketo_limits_of_the_settings() -> None:
    assert Settings().limits == LimitSettings()
    settings = Settings.from_env(
        {
            "MARKETO_DEST_MARKETO_SHARE": "0.5",
            "MARKETO_DEST_MARKETO_WINDOW_SECONDS": "2",
            "MARKETO_DEST_MARKETO_CONCURRENCY": "3",
            "MARKETO_DEST_MARKETO_DAILY_QUOTA": "1000",
            "MARKETO_DEST_MARKETO_DAILY_RESERVE": "10",
        }
    )
    assert settings.limits == LimitSettings(
        share=0.5, window_seconds=2.0, concurrency=3, daily_quota=1000, daily_reserve=10
    )


DEFAULTS = Settings()
FED_BY_SETTINGS: list[tuple[Callable[..., object], str, object]] = [
    (Reconciliation, "list_folder", DEFAULTS.list_folder),
    (Reconciliation, "interval", DEFAULTS.reconcile_interval_seconds),
    (Reconciliation, "budget_share", DEFAULTS.reconcile_budget_share),
    (Reconciliation, "daily_quota", DEFAULTS.marketo_daily_quota),
    (Activations, "list_folder", DEFAULTS.list_folder),
    (Ingest, "max_backlog", DEFAULTS.max_backlog),
    (Ingest, "max_wait", timedelta(seconds=DEFAULTS.backpressure_wait_seconds)),
    *(
        (DeliverySettings, name, getattr(delivery_settings(DEFAULTS), name))
        for name in ("batch_size", "linger", "lease_ttl", "bulk_threshold", "schema_recheck")
    ),
    (InstanceLimits, "share", DEFAULTS.marketo_share),
    (InstanceLimits, "window_seconds", DEFAULTS.marketo_window_seconds),
    (InstanceLimits, "concurrency", DEFAULTS.marketo_concurrency),
    (InstanceLimits, "daily_quota", DEFAULTS.marketo_daily_quota),
    (sync_checks.event_time_limit, "max_skew", timedelta(seconds=DEFAULTS.max_clock_skew_seconds)),
    (sync_checks.sync_request, "max_skew", timedelta(seconds=DEFAULTS.max_clock_skew_seconds)),
    (convert.profile_update, "max_skew", timedelta(seconds=DEFAULTS.max_clock_skew_seconds)),
]
"""(component, parameter, what the service passes it with the default settings)."""


@pytest.mark.parametrize(
    ("component", "parameter", "passed"),
    FED_BY_SETTINGS,
    ids=[f"{component.__qualname__}.{name}" for component, name, _ in FED_BY_SETTINGS],
)
def test_a_component_default_is_the_default_of_the_setting_that_feeds_it(
    component: Callable[..., object], parameter: str, passed: object
) -> None:
    """A parameter the service feeds from a setting has no default, or the one the service
    passes with the default settings: the two cannot drift apart."""
    default = inspect.signature(component).parameters[parameter].default
    assert default is inspect.Parameter.empty or default == passed


def test_every_field_is_read_from_its_variable() -> None:
    settings = Settings.from_env(
        {
            "MARKETO_DEST_ADDRESS": "0.0.0.0:6000",
            "MARKETO_DEST_DATA_DIR": "/var/lib/md",
            "MARKETO_DEST_SANDBOX": "yes",
            "MARKETO_DEST_DEFAULT_MARKETO_ENDPOINT": "http://marketo-sandbox:8080",
            "MARKETO_DEST_ALLOWED_ENDPOINTS": "https://*.mktorest.com, https://proxy.internal:*",
            "MARKETO_DEST_ALLOWED_WEBHOOK_ORIGINS": "http://127.0.0.1:9000",
            "MARKETO_DEST_GRACE_SECONDS": "2.5",
            "MARKETO_DEST_LOG_LEVEL": "debug",
            "MARKETO_DEST_LOG_JSON": "true",
            "MARKETO_DEST_SECRET_KEY": "k" * 44,
            "MARKETO_DEST_SQLITE_SYNCHRONOUS": "normal",
            "MARKETO_DEST_PRINCIPALS_FILE": "/etc/md/principals.json",
            "MARKETO_DEST_TLS_CERT_FILE": "/etc/md/tls.crt",
            "MARKETO_DEST_TLS_KEY_FILE": "/etc/md/tls.key",
            "MARKETO_DEST_TLS_CLIENT_CA_FILE": "/etc/md/clients.crt",
            "MARKETO_DEST_POLICIES_FILE": "/etc/md/policies.json",
            "MARKETO_DEST_BLOCKED_PLUGINS": "loyalty, other",
            "MARKETO_DEST_LIST_FOLDER": "CDP Lists",
            "MARKETO_DEST_BATCH_SIZE": "200",
            "MARKETO_DEST_BULK_THRESHOLD": "20000",
            "MARKETO_DEST_LINGER_SECONDS": "0.5",
            "MARKETO_DEST_MAX_BACKLOG": "5000",
            "MARKETO_DEST_BACKPRESSURE_WAIT_SECONDS": "2",
            "MARKETO_DEST_MARKETO_SHARE": "0.5",
            "MARKETO_DEST_MARKETO_WINDOW_SECONDS": "2",
            "MARKETO_DEST_MARKETO_CONCURRENCY": "4",
            "MARKETO_DEST_MARKETO_DAILY_QUOTA": "10000",
            "MARKETO_DEST_MARKETO_DAILY_RESERVE": "1000",
            "MARKETO_DEST_REPLICA_ID": "replica-a",
            "MARKETO_DEST_DATABASE_URL": "postgresql://md@db:5432/md",
            "MARKETO_DEST_LEASE_TTL_SECONDS": "10",
            "MARKETO_DEST_MARKETO_TIMEOUT_SECONDS": "5",
            "MARKETO_DEST_LEASE_CLOCK_SKEW_SECONDS": "1",
            "MARKETO_DEST_MARKETO_REPLICA_HEADER": "true",
            "MARKETO_DEST_SCHEMA_RECHECK_SECONDS": "30",
            "MARKETO_DEST_RECONCILE_INTERVAL_SECONDS": "3600",
            "MARKETO_DEST_RECONCILE_BUDGET_SHARE": "0.02",
            "MARKETO_DEST_OUTCOME_RETENTION_DAYS": "7.5",
            "MARKETO_DEST_MAX_CLOCK_SKEW_SECONDS": "60",
            "MARKETO_DEST_METRICS_ADDRESS": "127.0.0.1:9464",
            "OTEL_SERVICE_NAME": "ignored here",
            "PATH": "/bin",
        }
    )
    assert settings == Settings(
        address="0.0.0.0:6000",
        data_dir=Path("/var/lib/md"),
        sandbox=True,
        default_marketo_endpoint="http://marketo-sandbox:8080",
        allowed_endpoints="https://*.mktorest.com, https://proxy.internal:*",
        allowed_webhook_origins="http://127.0.0.1:9000",
        grace_seconds=2.5,
        log_level="DEBUG",
        log_json=True,
        secret_key="k" * 44,
        sqlite_synchronous="NORMAL",
        principals_file=Path("/etc/md/principals.json"),
        tls_cert_file=Path("/etc/md/tls.crt"),
        tls_key_file=Path("/etc/md/tls.key"),
        tls_client_ca_file=Path("/etc/md/clients.crt"),
        policies_file=Path("/etc/md/policies.json"),
        blocked_plugins="loyalty, other",
        list_folder="CDP Lists",
        batch_size=200,
        bulk_threshold=20000,
        linger_seconds=0.5,
        max_backlog=5000,
        backpressure_wait_seconds=2.0,
        marketo_share=0.5,
        marketo_window_seconds=2.0,
        marketo_concurrency=4,
        marketo_daily_quota=10000,
        marketo_daily_reserve=1000,
        replica_id="replica-a",
        database_url="postgresql://md@db:5432/md",
        lease_ttl_seconds=10.0,
        marketo_timeout_seconds=5.0,
        lease_clock_skew_seconds=1.0,
        marketo_replica_header=True,
        schema_recheck_seconds=30.0,
        reconcile_interval_seconds=3600.0,
        reconcile_budget_share=0.02,
        outcome_retention_days=7.5,
        max_clock_skew_seconds=60,
        metrics_address="127.0.0.1:9464",
    )
    assert settings.blocked_plugin_names == ("loyalty", "other")
    assert {f for f in FIELDS if getattr(settings, f) == getattr(Settings(), f)} == set()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("true", True), ("On", True), ("0", False), ("no", False), ("", False)],
)
def test_booleans(raw: str, expected: bool) -> None:
    assert Settings.from_env({"MARKETO_DEST_SANDBOX": raw}).sandbox is expected


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("MARKETO_DEST_ADDRESS", "localhost"),
        ("MARKETO_DEST_ADDRESS", "127.0.0.1:99999"),
        ("MARKETO_DEST_ADDRESS", ":50051"),
        ("MARKETO_DEST_METRICS_ADDRESS", "9464"),
        ("MARKETO_DEST_METRICS_ADDRESS", "127.0.0.1:http"),
        ("MARKETO_DEST_SANDBOX", "maybe"),
        ("MARKETO_DEST_GRACE_SECONDS", "soon"),
        ("MARKETO_DEST_GRACE_SECONDS", "-1"),
        ("MARKETO_DEST_GRACE_SECONDS", "nan"),
        ("MARKETO_DEST_LOG_LEVEL", "loud"),
        ("MARKETO_DEST_BULK_THRESHOLD", "-1"),
        ("MARKETO_DEST_OUTCOME_RETENTION_DAYS", "-1"),
        ("MARKETO_DEST_OUTCOME_RETENTION_DAYS", "a month"),
        ("MARKETO_DEST_SCHEMA_RECHECK_SECONDS", "0"),
        ("MARKETO_DEST_RECONCILE_INTERVAL_SECONDS", "-1"),
        ("MARKETO_DEST_RECONCILE_BUDGET_SHARE", "1.5"),
        ("MARKETO_DEST_DATA_DIR", ""),
        ("MARKETO_DEST_MAX_CLOCK_SKEW_SECONDS", "-1"),
        ("MARKETO_DEST_MAX_CLOCK_SKEW_SECONDS", "86401"),
        ("MARKETO_DEST_DEFAULT_MARKETO_ENDPOINT", "marketo.example.com"),
        ("MARKETO_DEST_DEFAULT_MARKETO_ENDPOINT", "http://user@marketo-sandbox:8080"),
        ("MARKETO_DEST_ALLOWED_ENDPOINTS", "ftp://files.mktorest.com"),
        ("MARKETO_DEST_ALLOWED_ENDPOINTS", "https://*.mktorest.com/rest"),
        ("MARKETO_DEST_ALLOWED_ENDPOINTS", "https://user@x.mktorest.com"),
        ("MARKETO_DEST_ALLOWED_ENDPOINTS", "https://evil.test#.mktorest.com"),
        ("MARKETO_DEST_ALLOWED_ENDPOINTS", "https://x.mktorest.com:99999"),
        ("MARKETO_DEST_ALLOWED_ENDPOINTS", "https://*.127.0.0.1"),
        ("MARKETO_DEST_ALLOWED_WEBHOOK_ORIGINS", "http://127.0.0.1:9000?x"),
        ("MARKETO_DEST_ALLOWED_WEBHOOK_ORIGINS", "127.0.0.1:9000"),
        ("MARKETO_DEST_ADRESS", "127.0.0.1:1"),
    ],
)
def test_bad_values_are_refused_naming_the_variable(var: str, raw: str) -> None:
    with pytest.raises(InvalidSetting) as caught:
        Settings.from_env({var: raw})
    assert caught.value.name == var
    assert str(caught.value).startswith(f"{var}: ")


def test_the_operator_token_variable_is_not_a_setting_and_not_refused() -> None:
    settings = Settings.from_env(
        {"MARKETO_DEST_TOKEN": "secret", "MARKETO_DEST_ADDRESS": "127.0.0.1:1"}
    )
    assert settings.address == "127.0.0.1:1" and "secret" not in repr(settings)


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().address = "0.0.0.0:1"  # type: ignore[misc]


def test_secrets_stay_out_of_repr() -> None:
    secretive = re.compile(r"secret|password|token|key|dsn|credential")
    for f in dataclasses.fields(Settings):
        if secretive.search(f.name):
            assert f.repr is False, f"{f.name} looks secret: declare it with repr=False"


def test_every_field_has_a_docstring() -> None:
    docs = field_docs()
    assert set(docs) == set(FIELDS)
    assert all(docs.values())


def test_flags_override_the_environment() -> None:
    environ = {
        "MARKETO_DEST_ADDRESS": "0.0.0.0:6000",
        "MARKETO_DEST_DATA_DIR": "/env",
        "MARKETO_DEST_GRACE_SECONDS": "3",
    }
    args = build_parser().parse_args(
        ["serve", "--address", "127.0.0.1:7000", "--data-dir", "/flag", "--sandbox"]
    )
    settings = settings_for(args, environ)
    assert settings.address == "127.0.0.1:7000"
    assert settings.data_dir == Path("/flag")
    assert settings.sandbox is True
    assert settings.grace_seconds == 3

    unflagged = settings_for(build_parser().parse_args(["serve"]), environ)
    assert unflagged == Settings.from_env(environ)


def test_a_bad_address_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["serve", "--address", "nowhere"])
    assert caught.value.code == 2
    assert "HOST:PORT" in capsys.readouterr().err


def _readme_settings_rows() -> dict[str, str]:
    rows = {}
    for line in (REPO / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 3 and cells[0].startswith(f"`{ENV_PREFIX}"):
            rows[cells[0].strip("`")] = cells[1]
    return rows


def test_the_readme_documents_every_setting_with_its_default() -> None:
    rows = _readme_settings_rows()
    expected = {env_var(name) for name in FIELDS}
    assert set(rows) == expected
    defaults = Settings()
    for name in FIELDS:
        value = getattr(defaults, name)
        if value is None:
            shown = "(unset)"
        elif value == "":
            shown = ""
        elif isinstance(value, bool):
            shown = "true" if value else "false"
        else:
            shown = str(value)
        assert shown in rows[env_var(name)], f"README default of {env_var(name)}"


def test_the_readme_documents_the_otel_pass_through() -> None:
    readme = (REPO / "README.md").read_text()
    for var in ("OTEL_SERVICE_NAME", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        assert var in readme
