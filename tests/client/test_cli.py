"""The operator commands run as processes (``python -m service ...``) against a service process
(``serve --sandbox``) that requires bearer tokens: tables, ``--json``, the address and token from
the environment or flags, and the exit codes."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from marketo_destination_client import Client, Connection, pb
from marketo_destination_client.cli import (
    EXIT_DENIED,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)
from service.api.access import ALL_PERMISSIONS
from tests.harness import CLIENT_ID, CLIENT_SECRET, MUNCHKIN, STANDARD_MAPPINGS, update
from tests.processes import ServiceProcess, kill_leftovers

ADMIN = "admin-token-for-cli-tests"
VIEWER = "viewer-token-for-cli-tests"
REALIZED = {"newsletter": pb.MEMBERSHIP_STATUS_REALIZED}


@dataclass
class Running:
    address: str
    sandbox: str
    destination_id: str


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("cli")
    principals = root / "principals.json"
    principals.write_text(
        json.dumps(
            [
                {
                    "name": "admin",
                    "tenant": "acme",
                    "permissions": sorted(ALL_PERMISSIONS),
                    "token": ADMIN,
                },
                {
                    "name": "viewer",
                    "tenant": "acme",
                    "permissions": ["destinations.view"],
                    "token": VIEWER,
                },
            ]
        )
    )
    service = ServiceProcess(
        root / "data",
        None,
        {"MARKETO_DEST_PRINCIPALS_FILE": str(principals)},
        args=("--sandbox",),
    )
    try:
        found = re.search(r"embedded Marketo sandbox at (http://\S+)", service.log.read_text())
        assert found, service.log.read_text()
        address = f"127.0.0.1:{service.port}"
        with Client(Connection(address, token=ADMIN)) as client:
            destination = client.configure(
                pb.DestinationSpec(
                    name="Marketing",
                    connection=pb.MarketoConnection(
                        munchkin_id=MUNCHKIN, client_id=CLIENT_ID, client_secret=CLIENT_SECRET
                    ),
                    sync_type=pb.SYNC_TYPE_AUDIENCE_AND_PROFILE,
                    person_action=pb.PERSON_ACTION_UPDATE_EXISTING_AND_CREATE_NEW,
                    dedupe_field="email",
                )
            )
            client.activate(
                destination.id,
                [pb.Audience(id="newsletter", name="Newsletter subscribers")],
                STANDARD_MAPPINGS,
            )
            with client.sync_stream(destination.id) as stream:
                stream.send([update("p1", "Ada@Example.com", audiences=REALIZED)])
                stream.send([update("p2", "grace@example.com", audiences=REALIZED)])
            deadline = time.monotonic() + 60
            while client.get_dataflow(destination.id).activated.created < 2:
                assert time.monotonic() < deadline, "the updates were not delivered"
                time.sleep(0.05)
        yield Running(address, found.group(1), destination.id)
    finally:
        service.stop()
        kill_leftovers()


def _environment(running: Running, token: str | None = ADMIN) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MARKETO_DEST_")}
    environment.update(MARKETO_DEST_ADDRESS=running.address, COLUMNS="200")
    if token is not None:
        environment["MARKETO_DEST_TOKEN"] = token
    return environment


def command(
    running: Running, *args: str, token: str | None = ADMIN
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=_environment(running, token),
        capture_output=True,
        text=True,
        timeout=60,
    )


def json_of(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_destinations_list_and_get(running: Running) -> None:
    listed = json_of(command(running, "destinations", "list", "--json"))
    assert [d["id"] for d in listed["destinations"]] == [running.destination_id]
    assert listed["destinations"][0]["spec"]["name"] == "Marketing"

    table = command(running, "destinations", "list")
    assert table.returncode == 0, table.stderr
    (row,) = [line for line in table.stdout.splitlines() if running.destination_id in line]
    assert re.search(r"Marketing\s.*ACTIVE\s.*AUDIENCE_AND_PROFILE\s.*123-ABC-456", row)

    got = json_of(command(running, "destinations", "get", running.destination_id, "--json"))
    assert got["id"] == running.destination_id
    assert [a["audience_id"] for a in got["audiences"]] == ["newsletter"]
    shown = command(running, "destinations", "get", running.destination_id)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"newsletter\s.*\d+\s.*Newsletter subscribers", shown.stdout)
    assert re.search(r"person\.email\s.*DedupeField\s.*lowercase", shown.stdout)


def test_dataflow(running: Running) -> None:
    flow = json_of(command(running, "dataflow", running.destination_id, "--json"))
    assert flow["received"] == "2"
    assert flow["activated"]["created"] == "2" and flow["activated"]["added"] == "2"
    table = command(running, "dataflow", running.destination_id)
    assert table.returncode == 0, table.stderr
    assert re.search(r"received\s.*\b2\b", table.stdout)
    assert re.search(r"added to lists\s.*\b2\b", table.stdout)


def test_outcomes_by_profile_and_by_dedupe_value(running: Running) -> None:
    found = json_of(
        command(running, "outcomes", running.destination_id, "--profile", "p1", "--json")
    )
    assert [o["kind"] for o in found["outcomes"]] == ["OUTCOME_KIND_ACTIVATED"]
    assert found["outcomes"][0]["dedupe_value"] == "ada@example.com"
    table = command(
        running, "outcomes", running.destination_id, "--dedupe-value", "grace@example.com"
    )
    assert table.returncode == 0, table.stderr
    (row,) = [line for line in table.stdout.splitlines() if " p2 " in line]
    assert re.search(r"ACTIVATED\s.*CREATED ADDED:newsletter", row)


def test_exit_codes(running: Running) -> None:
    missing = command(running, "destinations", "get", "dst_missing")
    assert missing.returncode == EXIT_NOT_FOUND and "NOT_FOUND" in missing.stderr
    assert command(running, "outcomes", running.destination_id).returncode == EXIT_USAGE
    assert command(running, "dataflow").returncode == EXIT_USAGE
    # The viewer may read destinations, not profiles' outcomes; no token is refused outright.
    viewer = command(running, "outcomes", running.destination_id, "--profile", "p1", token=VIEWER)
    assert viewer.returncode == EXIT_DENIED and "PERMISSION_DENIED" in viewer.stderr
    anonymous = command(running, "destinations", "list", token=None)
    assert anonymous.returncode == EXIT_DENIED and "UNAUTHENTICATED" in anonymous.stderr
    # The --token flag beats the variable.
    flagged = command(running, "destinations", "list", "--json", "--token", ADMIN, token=VIEWER)
    assert flagged.returncode == 0
    nobody = f"127.0.0.1:{_free_port()}"
    down = command(running, "destinations", "list", "--address", nobody, "--timeout", "2")
    assert down.returncode == EXIT_UNAVAILABLE, down.stderr
    bad = command(running, "destinations", "list", "--address", "no-port")
    assert bad.returncode == EXIT_USAGE and "address" in bad.stderr


def _members(running: Running, list_id: int) -> set[int]:
    dump = httpx.get(f"{running.sandbox}/_sandbox/lists").json()
    return {set_id for item in dump["lists"] if item["id"] == list_id for set_id in item["members"]}


def test_reconcile_reports_then_repairs(running: Running) -> None:
    destination = running.destination_id
    got = json_of(command(running, "destinations", "get", destination, "--json"))
    list_id = int(got["audiences"][0]["marketo_list_id"])
    before = _members(running, list_id)
    assert len(before) == 2
    # A marketer removes one member through Marketo's REST API.
    token = httpx.post(
        f"{running.sandbox}/identity/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        },
    ).json()["access_token"]
    removed = min(before)
    answer = httpx.request(
        "DELETE",
        f"{running.sandbox}/rest/v1/lists/{list_id}/leads.json",
        json={"input": [{"id": removed}]},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.json()["success"], answer.text
    assert _members(running, list_id) == before - {removed}

    dry = command(running, "reconcile", destination, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run" in dry.stdout
    assert re.search(rf"newsletter\s.*\b{list_id}\b\s.*\b1\b\s.*\b0\b", dry.stdout), dry.stdout
    assert _members(running, list_id) == before - {removed}, "a dry run changes nothing"

    done = json_of(command(running, "reconcile", destination, "--json"))
    assert done["dry_run"] is False
    (drift,) = done["lists"]
    assert (drift["audience_id"], drift["missing"], drift["added"]) == ("newsletter", "1", "1")
    assert _members(running, list_id) == before
    # A clean run finds nothing, and resolves the drift alert the repaired run raised.
    (clean,) = json_of(command(running, "reconcile", destination, "--json"))["lists"]
    assert (clean.get("missing", "0"), clean.get("unexpected", "0")) == ("0", "0")
    viewer = command(running, "reconcile", destination, token=VIEWER)
    assert viewer.returncode == EXIT_DENIED and "PERMISSION_DENIED" in viewer.stderr


def test_resync_dry_run_and_forget(running: Running) -> None:
    # before the alerts test, which leaves the instance paused on its daily quota
    destination = running.destination_id
    dry = json_of(command(running, "resync", destination, "--dry-run", "--json"))
    assert dry["dry_run"] is True
    assert dry["profiles"] == "2"
    assert int(dry["estimated_marketo_calls"]) >= 3  # look-up, update, list add
    one = command(running, "resync", destination, "--profile", "p1", "--dry-run")
    assert one.returncode == 0, one.stderr
    assert re.search(r"profiles\s.*\b1\b", one.stdout)
    assert "dry run" in one.stdout

    with Client(Connection(running.address, token=ADMIN)) as client:
        with client.sync_stream(destination) as stream:
            stream.send([update("p4", "turing@example.com", audiences=REALIZED)])
        deadline = time.monotonic() + 60
        while client.get_dataflow(destination).activated.created < 3:
            assert time.monotonic() < deadline, "the update was not delivered"
            time.sleep(0.05)

    forgotten = json_of(command(running, "forget", destination, "p4", "--delete-lead", "--json"))
    assert len(forgotten["lead_ids"]) == 1
    assert (forgotten["removed_from_lists"], forgotten["lead_deleted"]) == ("1", True)
    leads = httpx.get(f"{running.sandbox}/_sandbox/leads").json()["leads"]
    assert str(forgotten["lead_ids"][0]) not in {str(lead["id"]) for lead in leads}
    again = command(running, "forget", destination, "p4")
    assert again.returncode == 0, again.stderr
    assert re.search(r"removed from lists\s.*\b0\b", again.stdout)
    assert re.search(r"lead deleted\s.*\bno\b", again.stdout)
    shown = json_of(command(running, "outcomes", destination, "--profile", "p4", "--json"))
    assert shown["outcomes"][0]["exclusion_code"] == "forgotten"

    viewer = command(running, "forget", destination, "p4", token=VIEWER)
    assert viewer.returncode == EXIT_DENIED and "PERMISSION_DENIED" in viewer.stderr
    assert command(running, "forget", "dst_missing", "p1").returncode == EXIT_NOT_FOUND
    assert command(running, "forget", destination).returncode == EXIT_USAGE


def test_alerts_follow_prints_each_alert_until_interrupted(running: Running) -> None:
    follow = subprocess.Popen(
        [sys.executable, "-m", "service", "alerts", running.destination_id, "--follow", "--json"],
        env=_environment(running),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)  # the watch is open before the alert is raised
        assert follow.poll() is None, follow.stderr.read() if follow.stderr else ""
        # Marketo says the daily quota is spent: the destination pauses and raises an alert.
        faults = [{"path_prefix": "/rest/v1/leads.json", "code": "607", "count": 1}]
        httpx.post(f"{running.sandbox}/_sandbox/faults", json=faults).raise_for_status()
        with (
            Client(Connection(running.address, token=ADMIN)) as client,
            client.sync_stream(running.destination_id) as stream,
        ):
            stream.send(
                [update("p3", "alan@example.com", time=1_790_000_000.0, audiences=REALIZED)]
            )
        assert follow.stdout is not None
        alert = json.loads(follow.stdout.readline())
        assert alert["type"] == "ALERT_TYPE_QUOTA_EXHAUSTED" and not alert.get("resolved")
        follow.send_signal(signal.SIGINT)
        assert follow.wait(timeout=30) == EXIT_INTERRUPTED
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()

    # Without --follow: the open alerts, then the command ends.
    shown = command(running, "alerts", running.destination_id)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"RAISED\s+QUOTA_EXHAUSTED", shown.stdout)
