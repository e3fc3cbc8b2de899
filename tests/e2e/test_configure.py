"""Configure, GetDestination, ListDestinations, DeleteDestination and DescribeMarketo through a
real gRPC client against the in-process Marketo sandbox."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from tests.harness import (
    CLIENT_SECRET,
    Service,
    connection,
    running_service,
    spec,
    violations,
)


async def configure_error(service: Service, request: pb.ConfigureRequest) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Configure(request)
    return caught.value


async def test_a_valid_destination_is_stored_and_its_secret_never_returned(
    service: Service,
) -> None:
    created = (await service.stub.Configure(pb.ConfigureRequest(spec=spec()))).destination
    assert created.id.startswith("dst_")
    assert created.client_secret_set
    assert created.spec.connection.client_secret == ""
    assert created.state == pb.DESTINATION_STATE_ACTIVE
    fetched = (
        await service.stub.GetDestination(pb.GetDestinationRequest(destination_id=created.id))
    ).destination
    assert fetched.spec == created.spec
    assert CLIENT_SECRET.encode() not in fetched.SerializeToString()
    listed = await service.stub.ListDestinations(pb.ListDestinationsRequest())
    assert [d.id for d in listed.destinations] == [created.id]


async def test_every_static_violation_is_reported_at_once(service: Service) -> None:
    bad = spec(
        name="",
        connection=connection(munchkin_id="12-ABC-456", client_id="", client_secret=""),
        sync_type=pb.SYNC_TYPE_AUDIENCE_ONLY,
        partition="Europe",
        person_action=pb.PERSON_ACTION_UPDATE_EXISTING_ONLY,
        dedupe_field="ecids",
    )
    found = violations(await configure_error(service, pb.ConfigureRequest(spec=bad)))
    assert set(found) == {
        "spec.name",
        "spec.connection.munchkin_id",
        "spec.connection.client_id",
        "spec.connection.client_secret",
        "spec.partition",
        "spec.person_action",
        "spec.dedupe_field",
    }
    assert "ECID" in found["spec.dedupe_field"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"sync_type": pb.SYNC_TYPE_UNSPECIFIED}, "spec.sync_type"),
        ({"person_action": pb.PERSON_ACTION_UNSPECIFIED}, "spec.person_action"),
        ({"dedupe_field": "id"}, "spec.dedupe_field"),
        ({"dedupe_field": ""}, "spec.dedupe_field"),
        ({"sync_type": 9}, "spec.sync_type"),
    ],
)
async def test_each_static_rule(service: Service, changes: dict[str, object], field: str) -> None:
    found = violations(await configure_error(service, pb.ConfigureRequest(spec=spec(**changes))))
    assert field in found


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"workspace": "Nowhere"}, "spec.workspace"),
        ({"partition": "Atlantis"}, "spec.partition"),
        ({"dedupe_field": "firstName"}, "spec.dedupe_field"),
    ],
)
async def test_live_checks_against_the_instance(
    service: Service, changes: dict[str, object], field: str
) -> None:
    found = violations(await configure_error(service, pb.ConfigureRequest(spec=spec(**changes))))
    assert list(found) == [field]
    listed = await service.stub.ListDestinations(pb.ListDestinationsRequest())
    assert not listed.destinations


async def test_a_searchable_custom_field_and_a_real_partition_are_accepted(
    service: Service,
) -> None:
    partitions = (
        await service.stub.DescribeMarketo(pb.DescribeMarketoRequest(connection=connection()))
    ).partitions
    other = next(p.name for p in partitions if p.name != "Default")
    created = await service.stub.Configure(
        pb.ConfigureRequest(spec=spec(dedupe_field="customerId", partition=other))
    )
    assert created.destination.spec.partition == other


async def test_bad_credentials_fail_the_precondition_and_store_nothing(service: Service) -> None:
    error = await configure_error(
        service,
        pb.ConfigureRequest(spec=spec(connection=connection(client_secret="wrong-secret"))),
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Marketo rejected the client id or secret" in (error.details() or "")
    assert "wrong-secret" not in (error.details() or "")
    assert not (await service.stub.ListDestinations(pb.ListDestinationsRequest())).destinations


async def test_an_api_user_without_write_access_is_permission_denied(service: Service) -> None:
    await service.control(
        "POST", "faults", [{"path_prefix": "/rest/v1/leads.json", "code": "603", "count": 1}]
    )
    error = await configure_error(service, pb.ConfigureRequest(spec=spec()))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    details = error.details() or ""
    assert "may write leads" in details and "603" in details
    assert "Access denied" not in details, "Marketo's own words stay out of the answer"


async def test_an_unreachable_marketo_is_unavailable_and_stores_nothing(service: Service) -> None:
    await service.control(
        "POST", "faults", [{"path_prefix": "/rest", "http_status": 503, "count": 100}]
    )
    error = await configure_error(service, pb.ConfigureRequest(spec=spec()))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert not (await service.stub.ListDestinations(pb.ListDestinationsRequest())).destinations


async def test_validate_only_stores_nothing(service: Service) -> None:
    answer = await service.stub.Configure(pb.ConfigureRequest(spec=spec(), validate_only=True))
    assert answer.destination.id == ""
    assert answer.destination.spec.name == "Marketing"
    assert not (await service.stub.ListDestinations(pb.ListDestinationsRequest())).destinations


async def test_update_keeps_the_stored_secret_when_none_is_given(service: Service) -> None:
    created = (await service.stub.Configure(pb.ConfigureRequest(spec=spec()))).destination
    renamed = spec(name="Renamed", connection=connection(client_secret=""))
    updated = (
        await service.stub.Configure(pb.ConfigureRequest(destination_id=created.id, spec=renamed))
    ).destination
    assert updated.id == created.id
    assert updated.spec.name == "Renamed"
    assert updated.client_secret_set


async def test_delete_removes_the_destination(service: Service) -> None:
    created = (await service.stub.Configure(pb.ConfigureRequest(spec=spec()))).destination
    await service.stub.DeleteDestination(pb.DeleteDestinationRequest(destination_id=created.id))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.GetDestination(pb.GetDestinationRequest(destination_id=created.id))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_pages(service: Service) -> None:
    ids = []
    for index in range(5):
        answer = await service.stub.Configure(pb.ConfigureRequest(spec=spec(name=f"d{index}")))
        ids.append(answer.destination.id)
    seen: list[str] = []
    token = ""
    while True:
        page = await service.stub.ListDestinations(
            pb.ListDestinationsRequest(page_size=2, page_token=token)
        )
        assert len(page.destinations) <= 2
        seen += [d.id for d in page.destinations]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.ListDestinations(pb.ListDestinationsRequest(page_size=5000))
    assert "page_size" in violations(caught.value)


async def test_describe_shows_the_pickers(service: Service) -> None:
    described = await service.stub.DescribeMarketo(
        pb.DescribeMarketoRequest(connection=connection())
    )
    assert {w.name for w in described.workspaces} >= {"Default"}
    assert "Default" in {p.name for p in described.partitions}
    assert "email" in described.dedupe_fields
    assert "id" not in described.dedupe_fields
    assert "ecids" not in described.dedupe_fields
    fields = {f.name: f for f in described.fields}
    assert fields["firstName"].data_type == "string"
    assert "createdAt" not in fields  # read-only fields are no mapping targets
    assert fields["email"].searchable


async def test_secrets_are_absent_from_logs_and_the_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    async with running_service(tmp_path) as service:
        created = (await service.stub.Configure(pb.ConfigureRequest(spec=spec()))).destination
        await service.stub.GetDestination(pb.GetDestinationRequest(destination_id=created.id))
    secret = CLIENT_SECRET.encode()
    for path in (tmp_path / "data").iterdir():
        assert secret not in path.read_bytes(), path
    assert CLIENT_SECRET not in caplog.text


# {"l":"destinations","p":["dst_a",5]} and {"l":"outcomes","p":[]}: well formed, never issued.
FORGED_DESTINATIONS_TOKEN = "eyJsIjoiZGVzdGluYXRpb25zIiwicCI6WyJkc3RfYSIsNV19"
FORGED_OUTCOMES_TOKEN = "eyJsIjoib3V0Y29tZXMiLCJwIjpbXX0"


async def test_forged_page_tokens_are_invalid_arguments(service: Service) -> None:
    created = (await service.stub.Configure(pb.ConfigureRequest(spec=spec()))).destination
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.ListDestinations(
            pb.ListDestinationsRequest(page_token=FORGED_DESTINATIONS_TOKEN)
        )
    assert "page_token" in violations(caught.value)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.ListProfileOutcomes(
            pb.ListProfileOutcomesRequest(
                destination_id=created.id, page_token=FORGED_OUTCOMES_TOKEN
            )
        )
    assert "page_token" in violations(caught.value)
