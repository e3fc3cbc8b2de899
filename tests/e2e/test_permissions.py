"""Access control through the real servicer: every RPC with and without each permission it
needs, and tenants that cannot see each other's destinations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from service.api.access import ALL_PERMISSIONS, RPC_PERMISSIONS, parse_principals
from tests.harness import STANDARD_MAPPINGS, Service, connection, running_service, spec, update

PRINCIPALS: list[dict[str, Any]] = [
    {"name": "team-a", "tenant": "a", "token": "token-a", "permissions": sorted(ALL_PERMISSIONS)},
    {"name": "team-b", "tenant": "b", "token": "token-b", "permissions": sorted(ALL_PERMISSIONS)},
]
for _method, _needed in RPC_PERMISSIONS.items():
    for _permission in _needed:
        _name = f"{_method.rsplit('/', 1)[1]}-without-{_permission}"
        PRINCIPALS.append(
            {
                "name": _name,
                "tenant": "a",
                "token": f"token-{_name}",
                "permissions": sorted(ALL_PERMISSIONS - {_permission}),
            }
        )
    _name = f"{_method.rsplit('/', 1)[1]}-exactly"
    PRINCIPALS.append(
        {"name": _name, "tenant": "a", "token": f"token-{_name}", "permissions": sorted(_needed)}
    )


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[tuple[Service, str]]:
    """A service with principals, and a destination of tenant "a" (activated, one update)."""
    async with running_service(tmp_path, principals=parse_principals(PRINCIPALS)) as service:
        as_a = bearer("token-a")
        destination_id = (
            await service.stub.Configure(pb.ConfigureRequest(spec=spec()), metadata=as_a)
        ).destination.id
        await service.stub.Activate(
            pb.ActivateRequest(
                destination_id=destination_id,
                audiences=[pb.Audience(id="a1", name="Tenant A list")],
                mappings=STANDARD_MAPPINGS,
            ),
            metadata=as_a,
        )
        yield service, destination_id


async def call(service: Service, method: str, destination_id: str, token: str) -> None:
    """Call one RPC with a request that succeeds for a fully entitled caller of tenant a."""
    metadata = bearer(token)
    stub = service.stub
    if method == "Configure":
        await stub.Configure(
            pb.ConfigureRequest(destination_id=destination_id, spec=spec()), metadata=metadata
        )
    elif method == "GetDestination":
        await stub.GetDestination(
            pb.GetDestinationRequest(destination_id=destination_id), metadata=metadata
        )
    elif method == "ListDestinations":
        await stub.ListDestinations(pb.ListDestinationsRequest(), metadata=metadata)
    elif method == "DeleteDestination":
        await stub.DeleteDestination(
            pb.DeleteDestinationRequest(destination_id=destination_id), metadata=metadata
        )
    elif method == "DescribeMarketo":
        await stub.DescribeMarketo(
            pb.DescribeMarketoRequest(destination_id=destination_id), metadata=metadata
        )
    elif method == "Activate":
        await stub.Activate(
            pb.ActivateRequest(destination_id=destination_id, mappings=STANDARD_MAPPINGS),
            metadata=metadata,
        )
    elif method == "Deactivate":
        await stub.Deactivate(
            pb.DeactivateRequest(destination_id=destination_id, audience_ids=["a1"]),
            metadata=metadata,
        )
    elif method == "Reconcile":
        await stub.Reconcile(
            pb.ReconcileRequest(destination_id=destination_id, dry_run=True), metadata=metadata
        )
    elif method == "Sync":
        request = pb.SyncRequest(
            destination_id=destination_id, updates=[update("p1", "a@example.com")]
        )
        async for _ in stub.Sync(iter([request]), metadata=metadata):
            pass
    elif method == "PreviewSync":
        await stub.PreviewSync(
            pb.PreviewSyncRequest(
                destination_id=destination_id, updates=[update("p1", "a@example.com")]
            ),
            metadata=metadata,
        )
    elif method == "GetDataflow":
        await stub.GetDataflow(
            pb.GetDataflowRequest(destination_id=destination_id), metadata=metadata
        )
    elif method == "ListProfileOutcomes":
        await stub.ListProfileOutcomes(
            pb.ListProfileOutcomesRequest(destination_id=destination_id, profile_id="p1"),
            metadata=metadata,
        )
    elif method == "WatchAlerts":
        stream = stub.WatchAlerts(
            pb.WatchAlertsRequest(destination_id=destination_id), metadata=metadata, timeout=0.5
        )
        try:
            async for _ in stream:
                pass
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
    elif method == "Resync":
        await stub.Resync(
            pb.ResyncRequest(destination_id=destination_id, dry_run=True), metadata=metadata
        )
    elif method == "ForgetProfile":
        await stub.ForgetProfile(
            pb.ForgetProfileRequest(destination_id=destination_id, profile_id="p1"),
            metadata=metadata,
        )
    else:
        raise AssertionError(f"no call for {method}")


METHODS = sorted(m.rsplit("/", 1)[1] for m in RPC_PERMISSIONS)
CASES = [
    (m.rsplit("/", 1)[1], permission)
    for m, needed in sorted(RPC_PERMISSIONS.items())
    for permission in sorted(needed)
]


def test_every_rpc_has_a_call() -> None:
    assert set(METHODS) == set(
        pb.DESCRIPTOR.services_by_name["MarketoDestinationService"].methods_by_name
    )


@pytest.mark.parametrize("method", METHODS)
async def test_exactly_the_needed_permissions_suffice(
    secured: tuple[Service, str], method: str
) -> None:
    service, destination_id = secured
    await call(service, method, destination_id, f"token-{method}-exactly")


@pytest.mark.parametrize(("method", "permission"), CASES)
async def test_each_missing_permission_is_denied(
    secured: tuple[Service, str], method: str, permission: str
) -> None:
    service, destination_id = secured
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(service, method, destination_id, f"token-{method}-without-{permission}")
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert permission in (caught.value.details() or "")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("token", ["", "token-unknown"])
async def test_callers_without_a_valid_token_are_unauthenticated(
    secured: tuple[Service, str], method: str, token: str
) -> None:
    service, destination_id = secured
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(service, method, destination_id, token)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("method", [m for m in METHODS if m != "ListDestinations"])
async def test_another_tenants_destination_is_not_found(
    secured: tuple[Service, str], method: str
) -> None:
    service, destination_id = secured
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(service, method, destination_id, "token-b")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "Tenant A" not in (caught.value.details() or "")
    still = await service.stub.GetDestination(
        pb.GetDestinationRequest(destination_id=destination_id), metadata=bearer("token-a")
    )
    assert still.destination.spec.name == "Marketing"


async def test_tenants_list_only_their_own(secured: tuple[Service, str]) -> None:
    service, destination_id = secured
    as_b = bearer("token-b")
    mine = (
        await service.stub.Configure(pb.ConfigureRequest(spec=spec(name="B")), metadata=as_b)
    ).destination.id
    listed_b = await service.stub.ListDestinations(pb.ListDestinationsRequest(), metadata=as_b)
    listed_a = await service.stub.ListDestinations(
        pb.ListDestinationsRequest(), metadata=bearer("token-a")
    )
    assert [d.id for d in listed_b.destinations] == [mine]
    assert [d.id for d in listed_a.destinations] == [destination_id]


@pytest.mark.parametrize(
    "row",
    [
        pb.FieldMapping(source="identityMap.email", target="DedupeField"),
        pb.FieldMapping(
            source="person.firstName, identityMap.email", target="title", transform="concat"
        ),
    ],
    ids=["source", "one of a transform's sources"],
)
async def test_identity_namespaces_need_identity_graph_view(
    secured: tuple[Service, str], row: pb.FieldMapping
) -> None:
    service, destination_id = secured
    kept = STANDARD_MAPPINGS[1:] if row.target == "DedupeField" else STANDARD_MAPPINGS
    mappings = [*kept, row]
    request = pb.ActivateRequest(destination_id=destination_id, mappings=mappings)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Activate(request, metadata=bearer("token-Activate-exactly"))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "identity_graph.view" in (caught.value.details() or "")
    await service.stub.Activate(request, metadata=bearer("token-a"))


async def test_forged_metadata_does_not_change_the_tenant(secured: tuple[Service, str]) -> None:
    service, destination_id = secured
    forged = (*bearer("token-b"), ("x-tenant", "a"), ("x-principal", "team-a"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.GetDestination(
            pb.GetDestinationRequest(destination_id=destination_id), metadata=forged
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_describe_of_a_new_connection_needs_only_view(secured: tuple[Service, str]) -> None:
    service, _ = secured
    described = await service.stub.DescribeMarketo(
        pb.DescribeMarketoRequest(connection=connection()),
        metadata=bearer("token-DescribeMarketo-exactly"),
    )
    assert described.partitions
