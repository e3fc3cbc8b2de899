"""The daily budget counts the instance's other integrations, end to end: the service reads
Marketo's Usage API at start, GetDataflow shows ours, others' and what is left, and delivery stops
where MARKETO_DEST_MARKETO_DAILY_RESERVE calls are left to the others, across a restart.

Usage API: https://experienceleague.adobe.com/en/docs/marketo-developer/marketo/rest/lead-database/usage
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from sandbox import SandboxSettings, create_app
from service._proto.marketo_destination.v1 import destination_pb2 as pb
from tests.e2e.test_sync import REALIZED, setup, sync
from tests.harness import Service, running_service, update

QUOTA = 1_000
RESERVE = 100


async def dataflow(service: Service, destination_id: str) -> pb.Dataflow:
    request = pb.GetDataflowRequest(destination_id=destination_id)
    return (await service.stub.GetDataflow(request)).dataflow


async def test_the_reserve_holds_when_another_integration_spends_calls(tmp_path: Path) -> None:
    marketo = create_app(SandboxSettings(daily_quota=QUOTA))
    limits = {"marketo_daily_quota": QUOTA, "marketo_daily_reserve": RESERVE}
    async with running_service(tmp_path, marketo=marketo, **limits) as service:
        destination_id, _ = await setup(service)
        used = (await service.control("GET", "calls"))["quota_used"]
        calls = (await dataflow(service, destination_id)).marketo_calls
        assert (calls.ours, calls.others) == (used, 0)
        assert calls.remaining == QUOTA - RESERVE - used
        assert calls.HasField("usage_read_at")
        # Another integration spends all but 2 calls of our budget while the service is down.
        others = QUOTA - RESERVE - used - 2
        await service.control("POST", "usage", {"userId": "crm@example.com", "count": others})

    async with running_service(tmp_path, marketo=marketo, **limits) as service:
        await sync(
            service, destination_id, [[update("p1", "a@example.com", audiences={"a1": REALIZED})]]
        )
        async with asyncio.timeout(30):
            while True:
                request = pb.GetDestinationRequest(destination_id=destination_id)
                destination = (await service.stub.GetDestination(request)).destination
                if destination.state == pb.DESTINATION_STATE_QUOTA_PAUSED:
                    break
                await asyncio.sleep(0.05)
        calls = (await dataflow(service, destination_id)).marketo_calls
        assert calls.others == others
        assert calls.ours + calls.others == QUOTA - RESERVE
        assert calls.remaining == 0
        assert (await service.control("GET", "calls"))["quota_used"] == QUOTA - RESERVE
