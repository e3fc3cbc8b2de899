"""Operator commands of ``marketo-destination``, on the client library: ``destinations list|get``,
``dataflow``, ``outcomes``, ``alerts``, ``reconcile``, ``resync`` and ``forget``.

Each command is one entry of :data:`COMMANDS`: its words, its help, its own arguments and one
small async function that calls the service and prints what it got (a Rich table for people,
``--json`` for scripts). The connection flags, the error handling and the exit codes are shared.

Exit codes: 0 ok, 1 any other failure, 2 usage (bad flags, INVALID_ARGUMENT), 3 not found,
4 permission denied or unauthenticated, 5 unavailable (also deadline exceeded and
RESOURCE_EXHAUSTED), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any, TextIO

import grpc
from google.protobuf import json_format
from rich.console import Console
from rich.table import Table

from marketo_destination_client.client import AsyncClient
from marketo_destination_client.connection import DEFAULT_ADDRESS, TLS, Connection
from marketo_destination_client.messages import pb

__all__ = [
    "COMMANDS",
    "EXIT_DENIED",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "Command",
    "Output",
    "add_commands",
    "run",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_DENIED = 4
EXIT_UNAVAILABLE = 5
EXIT_INTERRUPTED = 130

_EXIT_OF_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_USAGE,
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_DENIED,
    grpc.StatusCode.UNAUTHENTICATED: EXIT_DENIED,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: EXIT_UNAVAILABLE,
}

ADDRESS_VARIABLE = "MARKETO_DEST_ADDRESS"
TOKEN_VARIABLE = "MARKETO_DEST_TOKEN"


class Output:
    """Where a command prints: Rich tables, or JSON documents with ``--json``."""

    def __init__(self, json_mode: bool, stream: TextIO | None = None) -> None:
        self.json_mode = json_mode
        self.stream = stream or sys.stdout
        self.console = Console(file=self.stream, highlight=False, soft_wrap=False)

    def json(self, document: Any) -> None:
        """One JSON document on one line."""
        print(json.dumps(document, sort_keys=True), file=self.stream, flush=True)

    def table(
        self, title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> None:
        """A table of ``rows`` under ``columns``."""
        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*(str(cell) for cell in row))
        self.console.print(table)

    def fields(self, title: str | None, pairs: Iterable[tuple[str, Any]]) -> None:
        """A two-column table of names and values."""
        self.table(title, ("FIELD", "VALUE"), pairs)


def message_dict(message: Any) -> dict[str, Any]:
    """A message as JSON-ready data (proto field names, enums by name, int64 as strings)."""
    data: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return data


def enum_name(enum: Any, value: int, prefix: str) -> str:
    """An enum value's name without its type prefix: ACTIVE for DESTINATION_STATE_ACTIVE."""
    try:
        name: str = enum.Name(value)
    except ValueError:
        return str(value)
    return name.removeprefix(prefix)


def timestamp(stamp: Any) -> str:
    """An ISO 8601 UTC time, or empty when the timestamp is unset."""
    if not stamp.seconds and not stamp.nanos:
        return ""
    text: str = stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return text


# ---------------------------------------------------------------------------------------------
# The commands: one function each.

Run = Callable[[AsyncClient, argparse.Namespace, Output], Awaitable[int | None]]


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def _destination_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("destination_id", metavar="DEST", help="destination id")


@dataclass(frozen=True)
class Command:
    """One operator command: ``words`` after the program name, e.g. ("destinations", "list")."""

    words: tuple[str, ...]
    help: str
    run: Run
    arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments


async def destinations_list(client: AsyncClient, args: argparse.Namespace, out: Output) -> None:
    """Every destination of the caller's tenant."""
    destinations = [d async for d in client.all_destinations(page_size=args.page_size)]
    if out.json_mode:
        out.json({"destinations": [message_dict(d) for d in destinations]})
        return
    out.table(
        None,
        ("ID", "NAME", "STATE", "SYNC TYPE", "MUNCHKIN", "AUDIENCES"),
        (
            (
                d.id,
                d.spec.name,
                enum_name(pb.DestinationState, d.state, "DESTINATION_STATE_"),
                enum_name(pb.SyncType, d.spec.sync_type, "SYNC_TYPE_"),
                d.spec.connection.munchkin_id,
                len(d.audiences),
            )
            for d in destinations
        ),
    )


def _list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--page-size", type=int, default=100, help="destinations per call (default 100)"
    )


async def destinations_get(client: AsyncClient, args: argparse.Namespace, out: Output) -> None:
    """One destination: its spec, state, audiences and mapping."""
    d = await client.get_destination(args.destination_id)
    if out.json_mode:
        out.json(message_dict(d))
        return
    spec = d.spec
    out.fields(
        f"Destination {d.id}",
        (
            ("name", spec.name),
            ("description", spec.description),
            ("state", enum_name(pb.DestinationState, d.state, "DESTINATION_STATE_")),
            ("state reason", d.state_reason),
            ("paused until", timestamp(d.paused_until)),
            ("sync type", enum_name(pb.SyncType, spec.sync_type, "SYNC_TYPE_")),
            ("person action", enum_name(pb.PersonAction, spec.person_action, "PERSON_ACTION_")),
            ("dedupe field", spec.dedupe_field),
            ("munchkin id", spec.connection.munchkin_id),
            ("endpoint", spec.connection.endpoint),
            ("client secret set", "yes" if d.client_secret_set else "no"),
            ("workspace", spec.workspace),
            ("partition", spec.partition),
            ("created", timestamp(d.create_time)),
            ("updated", timestamp(d.update_time)),
        ),
    )
    out.table(
        "Audiences",
        ("AUDIENCE", "LIST ID", "LIST NAME"),
        ((a.audience_id, a.marketo_list_id, a.list_name) for a in d.audiences),
    )
    out.table(
        "Mapping",
        ("SOURCE", "TARGET", "TRANSFORM", "WRITE POLICY"),
        (
            (
                m.source,
                m.target,
                m.transform,
                enum_name(pb.WritePolicy, m.write_policy, "WRITE_POLICY_"),
            )
            for m in d.mappings
        ),
    )


async def dataflow(client: AsyncClient, args: argparse.Namespace, out: Output) -> None:
    """The destination's dataflow: totals, backlog, Marketo calls and hourly runs."""
    flow = await client.get_dataflow(args.destination_id, hours=args.hours)
    if out.json_mode:
        out.json(message_dict(flow))
        return
    age = flow.oldest_pending_age.ToTimedelta().total_seconds()
    out.fields(
        f"Dataflow of {flow.destination_id}",
        (
            ("state", enum_name(pb.DestinationState, flow.state, "DESTINATION_STATE_")),
            ("state reason", flow.state_reason),
            ("received", flow.received),
            ("created", flow.activated.created),
            ("updated", flow.activated.updated),
            ("added to lists", flow.activated.added),
            ("removed from lists", flow.activated.removed),
            ("excluded", sum(flow.excluded.values())),
            ("failed", sum(flow.failed.values())),
            ("superseded", flow.superseded),
            ("duplicates", flow.duplicates),
            ("pending", flow.pending),
            ("oldest pending age", f"{age:.1f}s" if flow.pending else ""),
            ("paused until", timestamp(flow.paused_until)),
            ("marketo calls today", flow.marketo_calls.ours),
            ("other integrations' calls", flow.marketo_calls.others),
            ("calls left today", flow.marketo_calls.remaining),
        ),
    )
    if flow.excluded or flow.failed:
        out.table(
            "Excluded and failed",
            ("OUTCOME", "CODE", "COUNT"),
            [("excluded", code, n) for code, n in sorted(flow.excluded.items())]
            + [("failed", code, n) for code, n in sorted(flow.failed.items())],
        )
    active = [r for r in flow.runs if r.received or r.activated or r.excluded or r.failed]
    out.table(
        f"Hourly runs ({len(flow.runs) - len(active)} without updates not shown)",
        ("START", "RECEIVED", "ACTIVATED", "EXCLUDED", "FAILED", "SKIPPED RATE"),
        (
            (
                timestamp(r.start_time),
                r.received,
                r.activated,
                r.excluded,
                r.failed,
                f"{r.skipped_rate:.2%}",
            )
            for r in active
        ),
    )


def _dataflow_arguments(parser: argparse.ArgumentParser) -> None:
    _destination_argument(parser)
    parser.add_argument(
        "--hours", type=int, default=0, help="hourly runs to show (default: the service's)"
    )


async def outcomes(client: AsyncClient, args: argparse.Namespace, out: Output) -> None:
    """What happened to one profile's updates, newest first (``--json`` adds every field, e.g.
    the update id)."""
    found: list[Any] = []
    token = ""
    while len(found) < args.limit:
        page = await client.list_profile_outcomes(
            args.destination_id,
            profile_id=args.profile,
            dedupe_value=args.dedupe_value,
            page_size=min(args.limit - len(found), 1000),
            page_token=token,
        )
        found += page.outcomes
        token = page.next_page_token
        if not token:
            break
    if out.json_mode:
        out.json({"outcomes": [message_dict(o) for o in found[: args.limit]]})
        return
    out.table(
        None,
        ("TIME", "PROFILE", "KIND", "ACTIONS", "LEAD", "REASON"),
        (
            (
                timestamp(o.outcome_time),
                o.profile_id,
                enum_name(pb.OutcomeKind, o.kind, "OUTCOME_KIND_"),
                " ".join(_action(a) for a in o.actions),
                o.lead_id or "",
                " ".join(filter(None, (o.marketo_code, o.exclusion_code, o.reason))),
            )
            for o in found[: args.limit]
        ),
    )


def _action(action: Any) -> str:
    name = enum_name(pb.ActionType, action.type, "ACTION_TYPE_")
    return f"{name}:{action.audience_id}" if action.audience_id else name


def _outcomes_arguments(parser: argparse.ArgumentParser) -> None:
    _destination_argument(parser)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--profile", metavar="P", help="the upstream profile id")
    which.add_argument("--dedupe-value", metavar="V", help="the deduplication value, e.g. an email")
    parser.add_argument(
        "--limit", type=int, default=50, help="outcomes to show at most (default 50)"
    )


async def alerts(client: AsyncClient, args: argparse.Namespace, out: Output) -> None:
    """The destination's open alerts; with --follow, every alert raised or resolved after."""
    stream = client.watch_alerts(args.destination_id, include_open=True)
    if not out.json_mode and not args.follow:
        out.console.print(f"Open alerts of {args.destination_id}:")
    try:
        while True:
            try:
                # Without --follow, the open alerts come at once: stop when the stream is quiet.
                timeout = None if args.follow else args.quiet
                alert = await asyncio.wait_for(anext(stream), timeout)
            except (TimeoutError, StopAsyncIteration):
                return
            _print_alert(alert, out)
    finally:
        await stream.aclose()


def _print_alert(alert: Any, out: Output) -> None:
    if out.json_mode:
        out.json(message_dict(alert))
        return
    kind = enum_name(pb.AlertType, alert.type, "ALERT_TYPE_")
    status = "RESOLVED" if alert.resolved else "RAISED"
    out.console.print(
        f"{timestamp(alert.raise_time)}  {status:<8}  {kind:<24}  {alert.message}", markup=False
    )


def _alerts_arguments(parser: argparse.ArgumentParser) -> None:
    _destination_argument(parser)
    parser.add_argument(
        "--follow", action="store_true", help="keep printing alerts until interrupted"
    )
    parser.add_argument(
        "--quiet",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="without --follow, stop after this long without an alert (default 1)",
    )


async def reconcile(client: AsyncClient, args: argparse.Namespace, out: Output) -> None:
    """Compare the destination's lists (or --audience ones) with Marketo's real members and,
    unless --dry-run, repair them."""
    drifts = await client.reconcile(
        args.destination_id, audience_ids=args.audience, dry_run=args.dry_run
    )
    if out.json_mode:
        out.json({"dry_run": args.dry_run, "lists": [message_dict(d) for d in drifts]})
        return
    out.table(
        f"Reconcile of {args.destination_id}"
        + (" (dry run: nothing changed)" if args.dry_run else ""),
        ("AUDIENCE", "LIST ID", "MISSING", "UNEXPECTED", "ADDED", "REMOVED", "RECREATED"),
        (
            (
                d.audience_id,
                d.marketo_list_id,
                d.missing,
                d.unexpected,
                d.added,
                d.removed,
                "yes" if d.recreated else "no",
            )
            for d in drifts
        ),
    )


def _destination_items_dry_run(
    parser: argparse.ArgumentParser, flag: str, metavar: str, item: str, dry_run: str
) -> None:
    """A destination, a repeatable `flag` naming some of its items (none: all), `--dry-run`."""
    _destination_argument(parser)
    parser.add_argument(
        flag, metavar=metavar, action="append", default=[], help=f"{item}; repeat for several"
    )
    parser.add_argument("--dry-run", action="store_true", help=dry_run)


def _reconcile_arguments(parser: argparse.ArgumentParser) -> None:
    _destination_items_dry_run(
        parser,
        "--audience",
        "A",
        "an audience whose list to reconcile (default: every list)",
        "report the drift, change nothing",
    )


async def resync(client: AsyncClient, args: argparse.Namespace, out: Output) -> None:
    """Write the desired state of the destination's profiles (or of --profile ones) again;
    with --dry-run, only show what it would cost."""
    answer = await client.resync(
        args.destination_id, profile_ids=args.profile, dry_run=args.dry_run
    )
    if out.json_mode:
        out.json({"dry_run": args.dry_run, **message_dict(answer)})
        return
    out.fields(
        f"Resync of {args.destination_id}" + (" (dry run: nothing queued)" if args.dry_run else ""),
        (
            ("profiles", answer.profiles),
            ("estimated Marketo calls", answer.estimated_marketo_calls),
            ("estimated time", f"{answer.estimated_seconds:.1f}s"),
            ("share of today's remaining quota", f"{answer.share_of_daily_quota:.2%}"),
        ),
    )


def _resync_arguments(parser: argparse.ArgumentParser) -> None:
    _destination_items_dry_run(
        parser,
        "--profile",
        "P",
        "a profile to resync (default: every profile)",
        "estimate the cost, queue nothing",
    )


async def forget(client: AsyncClient, args: argparse.Namespace, out: Output) -> None:
    """Take a profile out of the destination's lists (and delete its lead with --delete-lead);
    the destination never exports it again."""
    answer = await client.forget_profile(
        args.destination_id, args.profile_id, delete_lead=args.delete_lead
    )
    if out.json_mode:
        out.json(
            {
                "lead_ids": [str(lead) for lead in answer.lead_ids],
                "removed_from_lists": str(answer.removed_from_lists),
                "lead_deleted": answer.lead_deleted,
            }
        )
        return
    out.fields(
        f"Profile {args.profile_id} forgotten at {args.destination_id}",
        (
            ("leads", " ".join(str(lead) for lead in answer.lead_ids)),
            ("removed from lists", answer.removed_from_lists),
            ("lead deleted", "yes" if answer.lead_deleted else "no"),
        ),
    )


def _forget_arguments(parser: argparse.ArgumentParser) -> None:
    _destination_argument(parser)
    parser.add_argument("profile_id", metavar="PROFILE", help="the upstream profile id")
    parser.add_argument(
        "--delete-lead", action="store_true", help="also delete the Marketo lead(s)"
    )


COMMANDS: tuple[Command, ...] = (
    Command(("destinations", "list"), "list the destinations", destinations_list, _list_arguments),
    Command(
        ("destinations", "get"), "show one destination", destinations_get, _destination_argument
    ),
    Command(("dataflow",), "show a destination's dataflow", dataflow, _dataflow_arguments),
    Command(("outcomes",), "show what happened to one profile", outcomes, _outcomes_arguments),
    Command(("alerts",), "show (or --follow) a destination's alerts", alerts, _alerts_arguments),
    Command(
        ("reconcile",),
        "repair a destination's lists against Marketo (--dry-run)",
        reconcile,
        _reconcile_arguments,
    ),
    Command(
        ("resync",), "write profiles' desired state again (--dry-run)", resync, _resync_arguments
    ),
    Command(("forget",), "forget a profile at a destination", forget, _forget_arguments),
)


# ---------------------------------------------------------------------------------------------
# Registration, connection and exit codes.


def _connection_flags(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("connection")
    group.add_argument(
        "--address",
        default=environ.get(ADDRESS_VARIABLE) or DEFAULT_ADDRESS,
        metavar="HOST:PORT",
        help=f"the service (default ${ADDRESS_VARIABLE} or {DEFAULT_ADDRESS})",
    )
    group.add_argument(
        "--token",
        default=environ.get(TOKEN_VARIABLE) or None,
        help=f"bearer token (default ${TOKEN_VARIABLE}; prefer the variable: flags show in ps)",
    )
    group.add_argument("--tls", action="store_true", help="speak TLS (implied by the files below)")
    group.add_argument("--ca-file", type=Path, metavar="PEM", help="certificates to trust")
    group.add_argument("--client-cert", type=Path, metavar="PEM", help="client certificate (mTLS)")
    group.add_argument("--client-key", type=Path, metavar="PEM", help="key of --client-cert")
    group.add_argument("--server-name", help="name to check the server's certificate against")
    group.add_argument(
        "--timeout", type=float, default=30.0, metavar="SECONDS", help="per call (default 30)"
    )
    flags.add_argument("--json", action="store_true", help="print JSON for scripts")
    return flags


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    environ: Mapping[str, str] | None = None,
) -> None:
    """Add every command of :data:`COMMANDS` to a parser's subcommands (those of several words
    under a group command)."""
    flags = _connection_flags(os.environ if environ is None else environ)
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for command in COMMANDS:
        *group_words, name = command.words
        where = commands
        for word in group_words:
            if word not in groups:
                group = commands.add_parser(word, help=f"{word} commands")
                groups[word] = group.add_subparsers(dest=f"{word}_command", required=True)
            where = groups[word]
        parser = where.add_parser(name, help=command.help, parents=[flags])
        command.arguments(parser)
        parser.set_defaults(operator_command=command)


def connection_of(args: argparse.Namespace) -> Connection:
    """The connection the flags describe; ValueError names a bad one."""
    tls = None
    if args.tls or args.ca_file or args.client_cert or args.client_key or args.server_name:
        tls = TLS(
            ca_file=args.ca_file,
            client_cert=args.client_cert,
            client_key=args.client_key,
            server_name=args.server_name,
        )
    return Connection(address=args.address, token=args.token, tls=tls)


def run(args: argparse.Namespace, *, prog: str, stream: TextIO | None = None) -> int:
    """Run the operator command ``args`` was parsed for; its exit code."""
    command: Command = args.operator_command
    try:
        connection = connection_of(args)
    except ValueError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    out = Output(args.json, stream)

    async def call() -> int | None:
        async with AsyncClient(connection, timeout=args.timeout) as client:
            return await command.run(client, args, out)

    try:
        return asyncio.run(call()) or EXIT_OK
    except grpc.aio.AioRpcError as error:
        print(f"{prog}: {error.code().name}: {error.details()}", file=sys.stderr)
        return _EXIT_OF_CODE.get(error.code(), EXIT_FAILED)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except ValueError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
