"""The README and the docs link only to files that exist, name every docs page, and state what
the code does: commands that parse, request bodies that fit the API, and tables that list every
RPC, permission, exclusion code, metric and sandbox setting the code has."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from google.protobuf import json_format, message_factory
from grpc_health.v1 import health_pb2
from opentelemetry import metrics, trace

import sandbox.__main__ as sandbox_cli
from marketo_destination_client import AsyncClient, Client
from marketo_destination_client.cli import COMMANDS
from sandbox import SandboxSettings, create_app
from service.__main__ import build_parser
from service._proto.marketo_destination.v1 import destination_pb2
from service.api.access import RPC_PERMISSIONS
from service.domain import AlertType, ExclusionCode
from service.telemetry.core import Telemetry

from .conftest import REPO

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
API = destination_pb2.DESCRIPTOR.services_by_name["MarketoDestinationService"]
RPCS = {method.name for method in API.methods}


def page(name: str) -> str:
    return (REPO / name).read_text()


def table_rows(text: str, header: str) -> list[list[str]]:
    """The body rows (as stripped cells) of the Markdown table whose header row starts with
    the cell ``header``."""
    rows: list[list[str]] = []
    inside = False
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|"):
            if inside:
                return rows
            continue
        if not inside:
            inside = cells[0] == header
        elif not set(line) <= set("|-: "):
            rows.append(cells)
    assert rows, f"no table headed {header!r}"
    return rows


def quoted(cell: str) -> list[str]:
    """The `code` spans of a table cell."""
    return re.findall(r"`([^`]+)`", cell)


def test_every_relative_link_resolves_inside_the_repository() -> None:
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for doc in pages:
        for target in LINK.findall(doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            resolved = (doc.parent / target).resolve()
            if not resolved.is_relative_to(REPO) or not resolved.exists():
                broken.append(f"{doc.relative_to(REPO)} -> {target}")
    assert broken == []


def test_the_readme_lists_every_docs_page() -> None:
    readme = page("README.md")
    missing = [p.name for p in (REPO / "docs").glob("*.md") if f"docs/{p.name}" not in readme]
    assert missing == []


# -- commands -------------------------------------------------------------------------------


def console_commands(text: str, program: str) -> Iterator[list[str]]:
    """The arguments of every ``$ program ...`` line of the page's console blocks, optional
    ``[...]`` parts included and comments dropped."""
    for line in text.splitlines():
        if line.startswith(f"$ {program} "):
            words = shlex.split(line[2:].replace("[", "").replace("]", ""), comments=True)
            yield words[1:]


def test_every_documented_command_line_parses() -> None:
    parser = build_parser()
    commands = [
        *console_commands(page("README.md"), "marketo-destination"),
        *console_commands(page("docs/client.md"), "marketo-destination"),
    ]
    assert len(commands) > 10
    for argv in commands:
        parser.parse_args(argv)


def test_the_client_page_shows_every_operator_command() -> None:
    lines = list(console_commands(page("docs/client.md"), "marketo-destination"))
    missing = [
        command.words
        for command in COMMANDS
        if not any(argv[: len(command.words)] == list(command.words) for argv in lines)
    ]
    assert missing == []


def request_bodies(text: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(method, JSON body) of every grpcurl call of the page that sends one, with the shell
    variables of the walkthrough filled in."""
    text = text.replace("\"'$DEST'\"", '"dst_x"').replace("$DEST", "dst_x")
    text = text.replace("$API", API.full_name)
    for match in re.finditer(r"grpcurl[^\n]*?-d '([^']*)'\s*\\?\s+(?:\S+ )*?(\S+/\w+)\b", text):
        yield match.group(2), json.loads(match.group(1))
    heredoc = r"grpcurl [^\n]*-d @ [^\n]*? (\S+/\w+) <<'?(\w+)'?\n(.*?)\n\s*\2\n"
    for match in re.finditer(heredoc, text, re.DOTALL):
        body, decoder, at = match.group(3).strip(), json.JSONDecoder(), 0
        while at < len(body):
            document, at = decoder.raw_decode(body, at)
            yield match.group(1), document
            while at < len(body) and body[at].isspace():
                at += 1


def test_every_grpcurl_body_of_the_readme_fits_its_request_message() -> None:
    bodies = list(request_bodies(page("README.md")))
    assert {target.rsplit("/", 1)[1] for target, _ in bodies} >= {
        "Check",
        "Configure",
        "Activate",
        "Sync",
        "GetDataflow",
        "ListProfileOutcomes",
    }
    for target, body in bodies:
        service, method = target.rsplit("/", 1)
        if service == "grpc.health.v1.Health":
            message: Any = health_pb2.HealthCheckRequest()
        else:
            assert service == API.full_name
            input_type = API.methods_by_name[method].input_type
            message = message_factory.GetMessageClass(input_type)()
        json_format.ParseDict(body, message)  # unknown fields or enum names raise


# -- tables ---------------------------------------------------------------------------------


def test_the_client_page_names_a_method_for_every_rpc() -> None:
    rows = table_rows(page("docs/client.md"), "RPC")
    assert {row[0] for row in rows} == RPCS
    for row in rows:
        names = [m.group(1) for m in map(re.compile(r"(\w+)\(").match, quoted(row[1])) if m]
        assert names, row
        for name in names:
            assert hasattr(AsyncClient, name) and hasattr(Client, name), name


def test_the_access_page_gives_every_rpc_its_permissions() -> None:
    documented: dict[str, frozenset[str]] = {}
    for rpc_cell, needs in table_rows(page("docs/access-control.md"), "RPC"):
        permissions = frozenset(quoted(needs.split(";")[0]))
        for rpc in quoted(rpc_cell):
            documented[f"/{API.full_name}/{rpc}"] = permissions
    assert documented == dict(RPC_PERMISSIONS)


def test_the_observability_page_lists_every_exclusion_code() -> None:
    rows = table_rows(page("docs/observability.md"), "Code")
    assert [quoted(row[0])[0] for row in rows] == [code.value for code in ExclusionCode]


class _NamingMeter:
    """A no-op meter that remembers the name of every instrument created with it."""

    def __init__(self, names: list[str]) -> None:
        self._meter = metrics.NoOpMeter("naming")
        self.names = names

    def __getattr__(self, create: str) -> Callable[..., Any]:
        def named(name: str, *args: Any, **kwargs: Any) -> Any:
            self.names.append(name)
            return getattr(self._meter, create)(name, *args, **kwargs)

        return named


class _NamingMeterProvider(metrics.NoOpMeterProvider):
    """Hands out :class:`_NamingMeter`s that share one list of names."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def get_meter(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return _NamingMeter(self.names)


def test_the_observability_page_lists_every_metric() -> None:
    provider = _NamingMeterProvider()
    Telemetry(tracer_provider=trace.NoOpTracerProvider(), meter_provider=provider, enabled=True)
    assert len(provider.names) > 5
    rows = table_rows(page("docs/observability.md"), "Instrument")
    assert sorted(quoted(row[0])[0] for row in rows) == sorted(provider.names)


def test_the_sandbox_page_documents_every_setting_flag_and_control_call() -> None:
    text = page("docs/sandbox.md")
    settings_table = {name for row in table_rows(text, "Field") for name in quoted(row[0])}
    assert settings_table == set(SandboxSettings.__dataclass_fields__)

    usage = io.StringIO()
    with contextlib.redirect_stdout(usage), pytest.raises(SystemExit):
        sandbox_cli.parse_args(["--help"])
    flags = set(re.findall(r"(--[a-z][a-z-]+)", usage.getvalue())) - {"--help"}
    assert {quoted(row[0])[0] for row in table_rows(text, "Flag")} == flags

    routes = {
        f"{method} {route.path.replace('{', '<').replace('}', '>')}"
        for route in create_app(SandboxSettings()).routes
        if getattr(route, "path", "").startswith("/_sandbox/")
        for method in getattr(route, "methods", None) or ()
        if method != "HEAD"
    }
    assert {quoted(row[0])[0] for row in table_rows(text, "Call")} == routes


def test_the_delivery_page_explains_every_alert_type() -> None:
    rows = table_rows(page("docs/delivery.md"), "Type")
    assert [quoted(row[0])[0] for row in rows] == [alert.value for alert in AlertType]


def test_the_proto_names_every_exclusion_code() -> None:
    """The proto's comment on ProfileOutcome.exclusion_code names each `ExclusionCode`."""
    proto = (REPO / "proto/marketo_destination/v1/destination.proto").read_text()
    comment = proto.split("string exclusion_code = 11;")[0].rsplit("string update_id = 10;")[1]
    assert [code.value for code in ExclusionCode if f'"{code.value}"' not in comment] == []
