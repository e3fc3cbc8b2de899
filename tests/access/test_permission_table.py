"""The permission table is data; these tests pin it to the contract and to PRODUCT.md."""

from __future__ import annotations

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
