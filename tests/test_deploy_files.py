"""Dockerfile and docker-compose.yml agree with Settings and the command-line parsers."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2_grpc

from service.__main__ import build_parser, main, settings_for
from service.api.access import InsecureBindError, check_bind_address, load_principals
from service.api.tls import server_credentials
from service.settings import ENV_PREFIX, Settings
from service.store.secrets import SecretBox
from tests.access.harness import make_pki
from tests.scrape import Scrape

from .conftest import REPO


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    instructions = []
    logical = ""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        logical += line.rstrip()
        if logical.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        if logical.strip():
            keyword, _, rest = logical.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
        logical = ""
    return instructions


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in _dockerfile():
        if keyword == "ENV":
            env.update(dict(item.split("=", 1) for item in shlex.split(rest)))
    return env


def _exec_form(arguments: str) -> list[str]:
    value = yaml.safe_load(arguments)  # a JSON array is YAML too
    assert isinstance(value, list), f"use the exec form: {arguments}"
    return [str(v) for v in value]


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return data


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


def _stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's build stages, each its instructions from its FROM on."""
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in _dockerfile():
        if keyword == "FROM":
            stages.append([])
        stages[-1].append((keyword, rest))
    return stages


def test_dockerfile_runs_the_service_as_a_non_root_user() -> None:
    instructions = _stages()[-1]
    assert instructions[0] == ("FROM", "python:3.11-slim")
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    command = _exec_form(next(rest for keyword, rest in instructions if keyword == "CMD"))
    assert command[0] == "marketo-destination"
    assert build_parser().parse_args(command[1:]).command == "serve"


def test_dockerfile_installs_the_wheel_built_with_the_compiled_checks() -> None:
    """Without a compiler the extension is skipped and Sync checks every update in Python
    (several times slower): the image's build fails instead."""
    build, runtime = _stages()
    assert build[0] == ("FROM", "python:3.11-slim AS build")
    runs = " ".join(rest for keyword, rest in build if keyword == "RUN")
    assert "gcc" in runs.split()
    assert "pip wheel" in runs
    assert "service/api/_wirecheck\\..*\\.so" in runs, "the build fails without the extension"
    assert ("COPY", "--from=build /wheels /wheels") in runtime
    assert any(
        keyword == "RUN" and "pip install" in rest and "/wheels/" in rest
        for keyword, rest in runtime
    )
    ext = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["ext-modules"]
    assert [(e["name"], e["sources"]) for e in ext] == [
        ("service.api._wirecheck", ["service/api/_wirecheck.c"])
    ]
    assert (REPO / "service" / "api" / "_wirecheck.c").is_file()


def test_dockerfile_exposes_the_configured_port_and_probes_health() -> None:
    instructions = _dockerfile()
    settings = Settings.from_env(_dockerfile_env())
    assert settings.address.startswith("0.0.0.0:"), "reachable from outside the container"
    exposed = [rest for keyword, rest in instructions if keyword == "EXPOSE"]
    assert exposed == [str(_port(settings.address))]
    healthcheck = next(rest for keyword, rest in instructions if keyword == "HEALTHCHECK")
    probe = _exec_form(healthcheck.partition("CMD")[2].strip())
    assert probe[0] == "marketo-destination"
    assert build_parser().parse_args(probe[1:]).command == "health"


def test_compose_has_the_service_the_sandbox_and_the_telemetry_stack() -> None:
    services = _compose()["services"]
    default = {name for name, service in services.items() if "profiles" not in service}
    assert default == {
        "marketo-destination",
        "marketo-sandbox",
        "otel-collector",
        "jaeger",
        "prometheus",
        "grafana",
    }


def test_compose_scale_profile_runs_two_replicas_on_one_postgres() -> None:
    services = _compose()["services"]
    scale = {name for name, service in services.items() if "scale" in service.get("profiles", [])}
    assert scale == {"postgres", "replica-a", "replica-b"}
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:")
    database = postgres["environment"]
    replicas = [services["replica-a"], services["replica-b"]]
    settings = []
    for replica in replicas:
        assert replica["build"] == "." and replica["command"][0] == "marketo-destination"
        environment = {k: str(v) for k, v in replica["environment"].items()}
        args = build_parser().parse_args(replica["command"][1:])
        assert args.command == "serve"
        settings.append(
            settings_for(args, {k: v for k, v in environment.items() if k.startswith(ENV_PREFIX)})
        )
        assert {"postgres", "marketo-sandbox"} <= set(replica["depends_on"])
        assert replica["depends_on"]["postgres"]["condition"] == "service_healthy"
        internal = _port(settings[-1].address)
        assert replica["ports"][0].endswith(f":{internal}")
    a, b = settings
    expected_url = (
        f"postgresql://{database['POSTGRES_USER']}:{database['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{database['POSTGRES_DB']}"
    )
    assert a.database_url == b.database_url == expected_url
    assert a.secret_key and a.secret_key == b.secret_key, "replicas must share the secret key"
    assert {a.replica_id, b.replica_id} == {"replica-a", "replica-b"}
    assert len({replica["ports"][0] for replica in replicas}) == 2
    assert a.principals_file is not None  # beyond loopback: callers need tokens
    SecretBox(a.secret_key.encode())  # a usable Fernet key


def test_compose_service_agrees_with_settings_and_cli() -> None:
    services = _compose()["services"]
    service = services["marketo-destination"]
    environment = {k: str(v) for k, v in service["environment"].items()}
    ours = {k for k in environment if k.startswith(ENV_PREFIX)}
    args = build_parser().parse_args(service["command"][1:])
    assert service["command"][0] == "marketo-destination"
    assert args.command == "serve"
    settings = settings_for(args, {k: environment[k] for k in ours})

    assert service["ports"] == [f"127.0.0.1:{_port(settings.address)}:{_port(settings.address)}"]
    assert settings.address.startswith("0.0.0.0:")
    assert f"destination-data:{settings.data_dir}" in service["volumes"]
    assert not settings.sandbox, "compose runs the sandbox as its own service"

    sandbox_port = int(services["marketo-sandbox"]["ports"][0].rpartition(":")[2])
    assert settings.default_marketo_endpoint == f"http://marketo-sandbox:{sandbox_port}"
    assert environment["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"
    assert environment["OTEL_SERVICE_NAME"] == "marketo-destination"
    assert environment.get("OTEL_METRICS_EXPORTER", "otlp") == "otlp"
    assert {"marketo-sandbox", "otel-collector"} <= set(service["depends_on"])


def test_compose_sandbox_command_parses_with_the_sandbox_cli() -> None:
    sandbox_cli = pytest.importorskip("sandbox.__main__")
    sandbox = _compose()["services"]["marketo-sandbox"]
    command = sandbox["command"]
    assert command[:3] == ["python", "-m", "sandbox"]
    args = sandbox_cli.parse_args(command[3:])
    assert args.host == "0.0.0.0"
    assert sandbox["ports"] == [f"127.0.0.1:{args.port}:{args.port}"]
    probe = " ".join(sandbox["healthcheck"]["test"])
    assert str(args.port) in probe


def test_compose_jaeger_receives_otlp_and_serves_its_ui() -> None:
    jaeger = _compose()["services"]["jaeger"]
    image, _, tag = jaeger["image"].partition(":")
    assert image == "jaegertracing/jaeger"
    assert tag.startswith("2.")
    assert {"127.0.0.1:4317:4317", "127.0.0.1:16686:16686"} <= set(jaeger["ports"])


def test_both_images_come_from_this_repository() -> None:
    services = _compose()["services"]
    for name in ("marketo-destination", "marketo-sandbox"):
        assert services[name]["build"] == "."
        assert Path(REPO / services[name]["build"] / "Dockerfile").is_file()


def test_compose_service_may_listen_beyond_loopback_with_its_principals() -> None:
    service = _compose()["services"]["marketo-destination"]
    environment = {k: str(v) for k, v in service["environment"].items()}
    settings = settings_for(
        build_parser().parse_args(service["command"][1:]),
        {k: v for k, v in environment.items() if k.startswith(ENV_PREFIX)},
    )
    assert settings.principals_file is not None
    mounts = dict(
        reversed(volume.split(":")[:2]) for volume in service["volumes"] if volume.startswith(".")
    )
    principals = load_principals(REPO / mounts[str(settings.principals_file)])
    assert principals
    check_bind_address(settings.address, auth_enabled=bool(principals))
    with pytest.raises(InsecureBindError):
        check_bind_address(settings.address, auth_enabled=False)


def test_compose_publishes_every_port_on_loopback_only() -> None:
    published = [
        (name, str(port))
        for name, service in _compose()["services"].items()
        for port in service.get("ports", [])
    ]
    assert published
    for name, port in published:
        host, _, rest = port.partition(":")
        assert host == "127.0.0.1" and rest.count(":") == 1, (name, port)


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "TLS"])
async def test_the_dockerfile_health_probe_follows_the_listener(tmp_path: Path, tls: bool) -> None:
    """The HEALTHCHECK command, run with the image's environment, answers 0 against the
    service's listener, plaintext or TLS (the TLS settings in the environment)."""
    healthcheck = next(rest for keyword, rest in _dockerfile() if keyword == "HEALTHCHECK")
    probe = _exec_form(healthcheck.partition("CMD")[2].strip())
    environment = dict(_dockerfile_env())
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)  # type: ignore[attr-defined]
    if tls:
        pki = make_pki(tmp_path)
        credentials = server_credentials(pki.server_cert, pki.server_key)
        port = server.add_secure_port("127.0.0.1:0", credentials)
        environment[f"{ENV_PREFIX}TLS_CERT_FILE"] = str(pki.server_cert)
        environment[f"{ENV_PREFIX}TLS_KEY_FILE"] = str(pki.server_key)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    environment[f"{ENV_PREFIX}ADDRESS"] = f"0.0.0.0:{port}"
    await server.start()
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in environment.items():
                patch.setenv(name, value)
            assert await asyncio.to_thread(main, probe[1:]) == 0
    finally:
        await server.stop(None)


# -- the telemetry stack: collector, Prometheus, Grafana and its dashboard ----------------------


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> repository path of the service's bind mounts (``./...``)."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            found[target] = REPO / source
    return found


def _mounted_file(service: dict[str, Any], container_path: str) -> Path:
    """The repository file a service sees at ``container_path`` (directly or in a mounted
    directory); fails when nothing is mounted there or the file is missing."""
    for target, source in _mounts(service).items():
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            path = source / container_path[len(target) :].lstrip("/")
            assert path.exists(), f"{container_path} -> {path} is missing"
            return path
    raise AssertionError(f"nothing mounted at {container_path}")


def _flag(command: list[str], name: str) -> str:
    values = [arg.partition("=")[2] for arg in command if arg.startswith(f"{name}=")]
    assert len(values) == 1, (name, command)
    return values[0]


def _host_port(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.removeprefix("http://").rstrip("/").rpartition(":")
    return host, int(port)


def _collector() -> dict[str, Any]:
    service = _compose()["services"]["otel-collector"]
    config: dict[str, Any] = yaml.safe_load(
        _mounted_file(service, _flag(service["command"], "--config")).read_text()
    )
    return config


def _prometheus() -> dict[str, Any]:
    service = _compose()["services"]["prometheus"]
    config: dict[str, Any] = yaml.safe_load(
        _mounted_file(service, _flag(service["command"], "--config.file")).read_text()
    )
    return config


def _dashboards() -> list[dict[str, Any]]:
    """The dashboards Grafana's file provider loads, read from the repository."""
    grafana = _compose()["services"]["grafana"]
    provisioning = _mounted_file(grafana, "/etc/grafana/provisioning/dashboards")
    dashboards = []
    for provider_file in sorted(provisioning.glob("*.yaml")):
        for provider in yaml.safe_load(provider_file.read_text())["providers"]:
            folder = _mounted_file(grafana, provider["options"]["path"])
            dashboards += [json.loads(f.read_text()) for f in sorted(folder.glob("*.json"))]
    assert dashboards
    return dashboards


def test_every_depends_on_names_a_compose_service() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        assert set(service.get("depends_on", {})) <= set(services), name


def test_collector_sends_traces_to_jaeger_and_metrics_to_prometheus() -> None:
    config = _collector()
    pipelines = config["service"]["pipelines"]
    for pipeline in pipelines.values():
        for kind in ("receivers", "processors", "exporters"):
            assert set(pipeline.get(kind, [])) <= set(config.get(kind) or {}), (kind, pipeline)
    assert set(config["service"].get("extensions", [])) <= set(config.get("extensions") or {})
    assert pipelines["traces"]["receivers"] == pipelines["metrics"]["receivers"] == ["otlp"]

    # The service's OTLP endpoint is the collector's OTLP gRPC receiver.
    environment = _compose()["services"]["marketo-destination"]["environment"]
    host, port = _host_port(environment["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert host == "otel-collector"
    assert _host_port(config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"])[1] == port

    (traces,) = pipelines["traces"]["exporters"]
    assert traces.partition("/")[0] == "otlp"
    jaeger_host, jaeger_port = _host_port(config["exporters"][traces]["endpoint"])
    assert jaeger_host == "jaeger"
    assert f"127.0.0.1:{jaeger_port}:{jaeger_port}" in _compose()["services"]["jaeger"]["ports"]

    (metrics,) = pipelines["metrics"]["exporters"]
    assert metrics == "prometheus"
    exposed = _host_port(config["exporters"][metrics]["endpoint"])[1]
    targets = [
        target
        for job in _prometheus()["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    ]
    assert f"otel-collector:{exposed}" in targets


def test_prometheus_scrapes_only_known_services() -> None:
    services = _compose()["services"]
    jobs = _prometheus()["scrape_configs"]
    assert jobs
    for job in jobs:
        for static in job["static_configs"]:
            for target in static["targets"]:
                assert target.rpartition(":")[0] in services, target


def test_grafana_reads_the_composed_prometheus() -> None:
    grafana = _compose()["services"]["grafana"]
    folder = _mounted_file(grafana, "/etc/grafana/provisioning/datasources")
    sources = [
        source
        for f in sorted(folder.glob("*.yaml"))
        for source in yaml.safe_load(f.read_text())["datasources"]
    ]
    (prometheus,) = [s for s in sources if s["type"] == "prometheus"]
    port = int(_compose()["services"]["prometheus"]["ports"][0].rpartition(":")[2])
    assert prometheus["url"] == f"http://prometheus:{port}"
    for dashboard in _dashboards():
        for panel in dashboard["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == prometheus["uid"], panel["title"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert _mounted_file(grafana, home).is_file()


_KEYWORDS = frozenset({"and", "or", "unless", "offset", "bool"})
_LABEL_VALUES = re.compile(r"label_values\(\s*(\w+)\s*,\s*(\w+)\s*\)")


def _metric_names(query: str) -> set[str]:
    """The metric names a PromQL query reads: identifiers left once strings, label matchers,
    ranges, grouping clauses and function calls are taken out (``label_values(m, l)``: m)."""
    found = {metric for metric, _ in _LABEL_VALUES.findall(query)}
    query = _LABEL_VALUES.sub("", query)
    for pattern in (r'"[^"]*"', r"\{[^}]*\}", r"\[[^\]]*\]", r"\b(?:by|without)\s*\([^)]*\)"):
        query = re.sub(pattern, " ", query)
    identifiers = re.findall(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", query)
    return found | {name for name in identifiers if name not in _KEYWORDS}


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and template variable."""
    found = [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable["query"]
        found.append((variable["name"], query["query"] if isinstance(query, dict) else query))
    return found


def test_dashboard_covers_dataflow_backlog_marketo_calls_and_quota() -> None:
    (dashboard,) = _dashboards()
    rows = {panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"}
    assert rows == {"Dataflow", "Backlog", "Marketo calls", "Daily quota"}
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel.get("targets"), panel["title"]


def test_dashboard_queries_metrics_the_service_exports(scraped_metrics: Scrape) -> None:
    """Every metric a panel asks for is in a real scrape of the service after Sync traffic."""
    asked = set()
    for where, query in _queries(_dashboards()[0]):
        names = _metric_names(query)
        assert names, f"{where}: no metric in {query!r}"
        asked |= names
        missing = names - scraped_metrics.names
        assert not missing, f"{where} asks for {sorted(missing)}, not exported"
    # Labels the dashboard groups by are labels of those metrics.
    labels = {k for s in scraped_metrics.samples for k in s.labels}
    for where, query in _queries(_dashboards()[0]):
        for group in re.findall(r"by \(([^)]*)\)", query):
            grouped = {g.strip() for g in group.split(",")}
            assert grouped <= labels, (where, grouped - labels)
    assert len(asked) >= 8


def test_metric_names_are_read_from_promql() -> None:
    query = (
        'histogram_quantile(0.95, sum by (le, rpc_method) (rate(a_bucket{x="y z"}[5m]))) '
        "/ on() b + c"
    )
    assert _metric_names(query) == {"a_bucket", "b", "c"}
    assert _metric_names("label_values(m_total, l)") == {"m_total"}


def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package)")
    service = _compose()["services"]["prometheus"]
    config = _mounted_file(service, _flag(service["command"], "--config.file"))
    checked = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
