"""A field deleted from Marketo's lead schema pauses the destination instead of failing updates.

End to end through gRPC against the in-process sandbox, which answers a Sync Leads call naming a
field its schema lacks with a response-level 1006, as Marketo does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sandbox import SandboxSettings
from service._proto.marketo_destination.v1 import destination_pb2 as pb
from tests.e2e.test_sync import sync
from tests.harness import STANDARD_MAPPINGS, Service, running_service, spec, update

FIELD = "loyaltyTier"
MAPPINGS = (*STANDARD_MAPPINGS, pb.FieldMapping(source="person.tier", target=FIELD))
UPDATES = 300
REALIZED = pb.MEMBERSHIP_STATUS_REALIZED


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    settings = SandboxSettings(unknown_field_rejects_request=True)
    async with running_service(
        tmp_path, sandbox_settings=settings, schema_recheck_seconds=0.2
    ) as running:
        yield running


async def activate(service: Service, mappings: Any = MAPPINGS) -> str:
    """A destination that has delivered one update (so the instance's schema is cached)."""
    destination_id = (await service.stub.Configure(pb.ConfigureRequest(spec=spec()))).destination.id
    await service.stub.Activate(
        pb.ActivateRequest(
            destination_id=destination_id,
            audiences=[pb.Audience(id="a1", name=f"List {destination_id}")],
            mappings=mappings,
        )
    )
    warm_up = update("w", "w@example.com", tier="gold", audiences={"a1": REALIZED})
    await sync(service, destination_id, [[warm_up]])
    await delivered(service, destination_id)
    return destination_id


def updates(prefix: str = "p") -> list[pb.ProfileUpdate]:
    return [
        update(f"{prefix}{n}", f"{prefix}{n}@example.com", tier="gold", audiences={"a1": REALIZED})
        for n in range(UPDATES)
    ]


async def calls(service: Service) -> int:
    stats = await service.control("GET", "calls")
    return int(stats["requests"])


async def destination(service: Service, destination_id: str) -> pb.Destination:
    request = pb.GetDestinationRequest(destination_id=destination_id)
    return (await service.stub.GetDestination(request)).destination


async def dataflow(service: Service, destination_id: str) -> pb.Dataflow:
    request = pb.GetDataflowRequest(destination_id=destination_id)
    return (await service.stub.GetDataflow(request)).dataflow


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll `condition` for up to a minute (delivery runs in the background)."""
    for _ in range(1200):
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


async def paused(service: Service, destination_id: str) -> None:
    async def check() -> bool:
        state = (await destination(service, destination_id)).state
        return state == pb.DESTINATION_STATE_SCHEMA_PAUSED

    await until(check, "the destination is paused")


async def delivered(service: Service, destination_id: str) -> pb.Dataflow:
    async def check() -> bool:
        return (await dataflow(service, destination_id)).pending == 0

    await until(check, "every update is delivered")
    return await dataflow(service, destination_id)


async def test_a_deleted_field_pauses_with_few_calls_and_restoring_it_delivers_all(
    service: Service,
) -> None:
    destination_id = await activate(service)
    alerts = service.stub.WatchAlerts(pb.WatchAlertsRequest(destination_id=destination_id))
    await service.control("DELETE", f"fields/{FIELD}")
    before = await calls(service)

    responses = await sync(service, destination_id, [updates()])
    assert sum(r.accepted for r in responses) == UPDATES
    await paused(service, destination_id)
    await asyncio.sleep(1.0)  # several re-check periods: the pause makes no further calls
    spent = await calls(service) - before
    # a look-up, the rejected create and the schema reads that confirm the field is gone
    # (one per re-check period), instead of 599 calls splitting the request record by record
    assert spent <= 12, spent

    shown = await destination(service, destination_id)
    assert FIELD in shown.state_reason
    flow = await dataflow(service, destination_id)
    assert flow.state == pb.DESTINATION_STATE_SCHEMA_PAUSED
    assert FIELD in flow.state_reason
    assert (flow.pending, dict(flow.failed), flow.activated.created) == (UPDATES, {}, 1)
    async with asyncio.timeout(30):
        alert = (await alerts.read()).alert
    assert alert.type == pb.ALERT_TYPE_SCHEMA_MISMATCH
    assert FIELD in alert.message and not alert.resolved

    await service.control("POST", "fields", {"fields": [{"name": FIELD, "dataType": "string"}]})
    flow = await delivered(service, destination_id)
    assert (flow.activated.created, flow.activated.added, dict(flow.failed)) == (
        UPDATES + 1,
        UPDATES + 1,
        {},
    )
    # the warm-up lead lost its value with the field; every paused update wrote it
    tiers = [lead["fields"].get(FIELD) for lead in await service.leads()]
    assert (tiers.count("gold"), len(tiers)) == (UPDATES, UPDATES + 1)
    async with asyncio.timeout(30):
        resolved = (await alerts.read()).alert
    alerts.cancel()
    assert (resolved.type, resolved.resolved) == (pb.ALERT_TYPE_SCHEMA_MISMATCH, True)
    shown = await destination(service, destination_id)
    assert (shown.state, shown.state_reason) == (pb.DESTINATION_STATE_ACTIVE, "")


async def test_changing_the_mapping_resumes_a_paused_destination(service: Service) -> None:
    destination_id = await activate(service)
    await service.control("DELETE", f"fields/{FIELD}")
    await sync(service, destination_id, [updates()])
    await paused(service, destination_id)

    await service.stub.Activate(
        pb.ActivateRequest(
            destination_id=destination_id,
            audiences=[pb.Audience(id="a1", name=f"List {destination_id}")],
            mappings=STANDARD_MAPPINGS,
        )
    )
    flow = await delivered(service, destination_id)
    assert (flow.activated.created, dict(flow.failed)) == (UPDATES + 1, {})
    assert (await destination(service, destination_id)).state == pb.DESTINATION_STATE_ACTIVE


async def test_other_destinations_of_the_instance_keep_flowing(service: Service) -> None:
    broken = await activate(service)
    healthy = await activate(service, STANDARD_MAPPINGS)
    await service.control("DELETE", f"fields/{FIELD}")
    await sync(service, broken, [updates()])
    await paused(service, broken)

    await sync(service, healthy, [updates("q")])
    flow = await delivered(service, healthy)
    # its warm-up updated the lead the other destination's warm-up created
    assert (flow.activated.created, flow.activated.updated, dict(flow.failed)) == (UPDATES, 1, {})
    assert (await dataflow(service, broken)).pending == UPDATES
