"""The permission table is data; these tests pin it to the contract, to PRODUCT.md and to what
the proto and docs/access-control.md tell callers."""

from __future__ import annotations

import re

from service.api.access import (
    ALL_PERMISSIONS,
    DESTINATIONS_ACTIVATE,
    DESTINATIONS_MANAGE,
    DESTINATIONS_VIEW,
    IDENTITY_GRAPH_VIEW,
    PROFILES_VIEW,
    RPC_PERMISSIONS,
    SEGMENTS_VIEW,
    SERVICE_NAME,
)
from tests.access.harness import SERVICE, method_path
from tests.conftest import REPO

PERMISSION = re.compile("|".join(re.escape(p) for p in sorted(ALL_PERMISSIONS)))


def test_every_rpc_of_the_service_has_a_rule() -> None:
    expected = {method_path(m.name) for m in SERVICE.methods}
    assert SERVICE.full_name == SERVICE_NAME
    missing = expected - set(RPC_PERMISSIONS)
    assert not missing, f"RPCs without a permission rule: {sorted(missing)}"
    unknown = set(RPC_PERMISSIONS) - expected
    assert not unknown, f"rules for RPCs the service does not have: {sorted(unknown)}"


def test_every_rule_names_known_permissions_and_needs_view() -> None:
    for method, permissions in RPC_PERMISSIONS.items():
        assert permissions <= ALL_PERMISSIONS, method
        assert DESTINATIONS_VIEW in permissions, method


def test_the_table_is_the_one_of_the_design() -> None:
    view, manage, activate = DESTINATIONS_VIEW, DESTINATIONS_MANAGE, DESTINATIONS_ACTIVATE
    expected = {
        "Configure": {view, manage},
        "DeleteDestination": {view, manage},
        "GetDestination": {view},
        "ListDestinations": {view},
        "DescribeMarketo": {view},
        "GetDataflow": {view},
        "WatchAlerts": {view},
        "Activate": {view, activate, PROFILES_VIEW, SEGMENTS_VIEW},
        "Deactivate": {view, activate},
        "Reconcile": {view, activate},
        "Sync": {view, activate, PROFILES_VIEW},
        "PreviewSync": {view, PROFILES_VIEW},
        "ListProfileOutcomes": {view, PROFILES_VIEW},
        "Resync": {view, activate},
        "ForgetProfile": {view, manage, PROFILES_VIEW},
    }
    assert {m: set(p) for m, p in RPC_PERMISSIONS.items()} == {
        method_path(name): p for name, p in expected.items()
    }
    # Identity namespaces are checked by the Activate use case, not by the interceptor.
    assert all(IDENTITY_GRAPH_VIEW not in p for p in RPC_PERMISSIONS.values())


def table_by_name() -> dict[str, set[str]]:
    return {m.rsplit("/", 1)[1]: set(p) for m, p in RPC_PERMISSIONS.items()}


def test_the_proto_comments_name_what_each_rpc_needs() -> None:
    """Each rpc's comment says "Needs ..." (what the proto tells callers); a parenthesised
    condition, such as Activate's identity_graph.view, is the use case's own check."""
    proto = (REPO / "proto/marketo_destination/v1/destination.proto").read_text()
    documented: dict[str, set[str]] = {}
    comment: list[str] = []
    for line in proto.splitlines():
        line = line.strip()
        if line.startswith("//"):
            comment.append(line.removeprefix("//").strip())
            continue
        rpc = re.match(r"rpc (\w+)\(", line)
        if rpc is not None:
            text = " ".join(comment)
            needs = re.search(r"Needs (.*?)\.(?:\s|$)", text)
            assert needs is not None, f"{rpc[1]} does not say what it needs"
            documented[rpc[1]] = set(PERMISSION.findall(re.sub(r"\(.*?\)", "", needs[1])))
        comment = []
    assert documented == table_by_name()


def test_the_access_control_page_names_what_each_rpc_needs() -> None:
    """docs/access-control.md's table: an RPC per backquoted name, its needs before any ";"."""
    page = (REPO / "docs/access-control.md").read_text()
    names = table_by_name()
    documented: dict[str, set[str]] = {}
    for line in page.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 2:
            continue
        for rpc in re.findall(r"`(\w+)`", cells[0]):
            if rpc in names:
                documented[rpc] = set(PERMISSION.findall(cells[1].split(";")[0]))
    assert documented == names
