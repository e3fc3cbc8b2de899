"""Reconcile end to end (issue 23): lists changed by hand through Marketo's REST API are found
by a dry run and repaired by a real run, a deleted list is created again, a periodic run repairs
without any RPC, GetDataflow shows per-list figures, the DRIFT alert is raised and delivery's
1013 on a deleted list is repaired, all through the gRPC API against the sandbox."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from sandbox import SandboxSettings
from service._proto.marketo_destination.v1 import destination_pb2 as pb
from service.marketo.client import MarketoClient
from service.marketo.clock import SystemClock
from service.settings import ExtractPolling
from service.usecases.reconcile import read_members
from tests.e2e.test_sync import REALIZED, delivered, seed, setup, sync
from tests.harness import (
    CLIENT_ID,
    CLIENT_SECRET,
    ENDPOINT,
    Service,
    running_service,
    sandbox_token,
    update,
)

T = 1_780_000_000.0


async def rest(service: Service, method: str, path: str, **kw: Any) -> Any:
    """A call to the sandbox's Marketo REST API, as a marketer's tool would make it."""
    response = await service.http.request(
        method,
        f"{ENDPOINT}{path}",
        headers={"Authorization": f"Bearer {await sandbox_token(service)}"},
        **kw,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body.get("success"), body
    return body


async def remove_by_hand(service: Service, list_id: int, leads: list[int]) -> None:
    await rest(
        service,
        "DELETE",
        f"/rest/v1/lists/{list_id}/leads.json",
        json={"input": [{"id": lead} for lead in leads]},
    )


async def add_by_hand(service: Service, list_id: int, leads: list[int]) -> None:
    await rest(
        service,
        "POST",
        f"/rest/v1/lists/{list_id}/leads.json",
        json={"input": [{"id": lead} for lead in leads]},
    )


async def members_synced(service: Service, count: int) -> tuple[str, int, dict[str, int]]:
    """A destination with audience a1 and `count` members delivered; returns its id, list id
    and lead id by e-mail."""
    destination_id, lists = await setup(service)
    await sync(
        service,
        destination_id,
        [[update(f"p{i}", f"m{i}@x.io", time=T, audiences={"a1": REALIZED}) for i in range(count)]],
    )
    await delivered(service, destination_id)
    leads = {lead["fields"]["email"]: lead["id"] for lead in await service.leads()}
    assert (await service.lists())[lists["a1"]] == set(leads.values())
    return destination_id, lists["a1"], leads


async def lists_equal(service: Service, list_id: int, members: set[int]) -> bool:
    return (await service.lists()).get(list_id) == members


async def reconciled(service: Service, destination_id: str) -> bool:
    """Whether GetDataflow shows a reconciliation of the destination's lists."""
    return bool((await delivered(service, destination_id)).lists)


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 30.0) -> None:
    """Wait until `check()` holds (at most `seconds`)."""
    async with asyncio.timeout(seconds):
        while True:
            if await check():
                return
            await asyncio.sleep(0.05)


async def reconcile(
    service: Service, destination_id: str, *, dry_run: bool = False
) -> list[tuple[str, int, int, int, int, int, bool]]:
    answer = await service.stub.Reconcile(
        pb.ReconcileRequest(destination_id=destination_id, dry_run=dry_run)
    )
    return [
        (d.audience_id, d.marketo_list_id, d.missing, d.unexpected, d.added, d.removed, d.recreated)
        for d in answer.lists
    ]


async def test_hand_edits_are_reported_by_a_dry_run_and_repaired_by_a_real_run(
    service: Service,
) -> None:
    destination_id, list_id, leads = await members_synced(service, 6)
    foreign = await seed(service, {"email": "f1@x.io"}, {"email": "f2@x.io"}, {"email": "f3@x.io"})
    await remove_by_hand(service, list_id, [leads["m0@x.io"], leads["m1@x.io"]])
    await add_by_hand(service, list_id, foreign)
    edited = (await service.lists())[list_id]

    assert await reconcile(service, destination_id, dry_run=True) == [
        ("a1", list_id, 2, 3, 0, 0, False)
    ]
    assert (await service.lists())[list_id] == edited, "a dry run changes nothing"
    flow = await delivered(service, destination_id)
    assert list(flow.lists) == [], "a dry run is not recorded"

    assert await reconcile(service, destination_id) == [("a1", list_id, 2, 3, 2, 3, False)]
    assert (await service.lists())[list_id] == set(leads.values())

    flow = await delivered(service, destination_id)
    (row,) = flow.lists
    assert (row.audience_id, row.marketo_list_id, row.drift_found, row.drift_repaired) == (
        "a1",
        list_id,
        5,
        5,
    )
    assert row.reconciled_at.seconds > 0
    # nothing left to repair
    assert await reconcile(service, destination_id) == [("a1", list_id, 0, 0, 0, 0, False)]


async def test_drift_above_one_percent_raises_the_alert_and_a_clean_run_resolves_it(
    service: Service,
) -> None:
    destination_id, list_id, leads = await members_synced(service, 3)
    alerts = service.stub.WatchAlerts(pb.WatchAlertsRequest(destination_id=destination_id))
    await remove_by_hand(service, list_id, [leads["m2@x.io"]])
    await reconcile(service, destination_id)
    async with asyncio.timeout(10):
        raised = (await alerts.read()).alert
    assert (raised.type, raised.resolved) == (pb.ALERT_TYPE_DRIFT, False)
    assert f"list {list_id}" in raised.message

    await reconcile(service, destination_id)
    async with asyncio.timeout(10):
        resolved = (await alerts.read()).alert
    assert (resolved.type, resolved.resolved) == (pb.ALERT_TYPE_DRIFT, True)
    alerts.cancel()


async def test_a_drift_within_one_percent_raises_no_alert(service: Service) -> None:
    destination_id, list_id, _ = await members_synced(service, 101)
    (foreign,) = await seed(service, {"email": "f@x.io"})
    await add_by_hand(service, list_id, [foreign])
    assert await reconcile(service, destination_id) == [("a1", list_id, 0, 1, 0, 1, False)]
    assert await service.app.store.open_alerts(destination_id) == []


async def test_a_list_deleted_in_marketo_is_created_again_with_its_members(
    service: Service,
) -> None:
    destination_id, list_id, leads = await members_synced(service, 4)
    await rest(service, "POST", f"/rest/asset/v1/staticList/{list_id}/delete.json")
    assert list_id not in await service.lists()

    assert await reconcile(service, destination_id, dry_run=True) == [
        ("a1", list_id, 4, 0, 0, 0, True)
    ]
    assert list_id not in await service.lists()

    ((audience, new_id, missing, unexpected, added, removed, recreated),) = await reconcile(
        service, destination_id
    )
    assert new_id != list_id
    assert (audience, missing, unexpected, added, removed, recreated) == ("a1", 4, 0, 4, 0, True)
    assert (await service.lists())[new_id] == set(leads.values())
    destination = (
        await service.stub.GetDestination(pb.GetDestinationRequest(destination_id=destination_id))
    ).destination
    assert [a.marketo_list_id for a in destination.audiences] == [new_id]

    # later updates go to the new list
    await sync(
        service, destination_id, [[update("p9", "m9@x.io", time=T, audiences={"a1": REALIZED})]]
    )
    await delivered(service, destination_id)
    assert len((await service.lists())[new_id]) == 5


async def test_a_deleted_bound_lead_is_resolved_again_and_its_profile_rebound(
    service: Service,
) -> None:
    destination_id, list_id, leads = await members_synced(service, 2)
    gone = leads["m0@x.io"]
    await rest(service, "POST", "/rest/v1/leads/delete.json", json={"input": [{"id": gone}]})
    (again,) = await seed(service, {"email": "m0@x.io", "firstName": "Ada"})

    assert await reconcile(service, destination_id) == [("a1", list_id, 1, 0, 1, 0, False)]
    assert (await service.lists())[list_id] == {again, leads["m1@x.io"]}
    state = await service.app.store.desired_state(destination_id, ["p0"])
    assert state.profiles["p0"].lead_id == again
    assert state.holders[("p0", "a1")] == again


async def test_a_merged_bound_lead_is_followed_to_the_winner(service: Service) -> None:
    destination_id, list_id, leads = await members_synced(service, 2)
    loser = leads["m0@x.io"]
    (winner,) = await seed(service, {"email": "m0@x.io", "firstName": "Dup"})
    await rest(service, "POST", f"/rest/v1/leads/{winner}/merge.json", params={"leadIds": loser})
    # Marketo moved the membership to the winner: nothing is missing or unexpected
    assert (await service.lists())[list_id] == {winner, leads["m1@x.io"]}

    assert await reconcile(service, destination_id) == [("a1", list_id, 0, 0, 0, 0, False)]
    state = await service.app.store.desired_state(destination_id, ["p0"])
    assert (state.profiles["p0"].lead_id, state.holders[("p0", "a1")]) == (winner, winner)


async def test_a_profile_only_destination_has_nothing_to_reconcile(service: Service) -> None:
    destination_id, _ = await setup(
        service,
        audiences=(),
        sync_type=pb.SYNC_TYPE_PROFILE_ONLY,
        person_action=pb.PERSON_ACTION_UPDATE_EXISTING_ONLY,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await reconcile(service, destination_id)
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION


async def test_reconcile_refuses_unknown_audiences(service: Service) -> None:
    destination_id, _, _ = await members_synced(service, 1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Reconcile(
            pb.ReconcileRequest(destination_id=destination_id, audience_ids=["nope"])
        )
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert "nope" in (caught.value.details() or "")


async def test_periodic_reconciliation_repairs_drift_without_any_rpc(tmp_path: Path) -> None:
    async with running_service(tmp_path, reconcile_interval_seconds=0.5) as service:
        destination_id, list_id, leads = await members_synced(service, 3)
        (foreign,) = await seed(service, {"email": "f@x.io"})
        await remove_by_hand(service, list_id, [leads["m0@x.io"]])
        await add_by_hand(service, list_id, [foreign])

        await eventually(lambda: lists_equal(service, list_id, set(leads.values())))
        await eventually(lambda: reconciled(service, destination_id))
        (row,) = (await delivered(service, destination_id)).lists
        assert (row.audience_id, row.marketo_list_id) == ("a1", list_id)


async def test_periodic_reconciliation_stays_within_its_budget_share(tmp_path: Path) -> None:
    async with running_service(
        tmp_path, reconcile_interval_seconds=0.3, reconcile_budget_share=0.00001
    ) as service:
        destination_id, list_id, leads = await members_synced(service, 2)
        await remove_by_hand(service, list_id, [leads["m0@x.io"]])
        await asyncio.sleep(1.5)
        assert (await service.lists())[list_id] == {leads["m1@x.io"]}
        flow = await delivered(service, destination_id)
        assert list(flow.lists) == []


async def test_delivery_meeting_a_deleted_list_creates_it_again_instead_of_failing(
    service: Service,
) -> None:
    destination_id, list_id, _ = await members_synced(service, 2)
    await rest(service, "POST", f"/rest/asset/v1/staticList/{list_id}/delete.json")

    await sync(
        service, destination_id, [[update("p9", "m9@x.io", time=T, audiences={"a1": REALIZED})]]
    )
    flow = await delivered(service, destination_id)

    assert dict(flow.failed) == {}
    destination = (
        await service.stub.GetDestination(pb.GetDestinationRequest(destination_id=destination_id))
    ).destination
    (new_id,) = [a.marketo_list_id for a in destination.audiences]
    assert new_id != list_id
    everyone = {lead["fields"]["email"]: lead["id"] for lead in await service.leads()}
    assert sorted(everyone) == ["m0@x.io", "m1@x.io", "m9@x.io"]
    assert (await service.lists())[new_id] == set(everyone.values())
    (row,) = flow.lists
    assert (row.marketo_list_id, row.drift_found, row.drift_repaired) == (new_id, 2, 2)


async def test_a_large_list_is_read_by_one_bulk_extract(tmp_path: Path) -> None:
    fast = SandboxSettings(bulk_queue_seconds=0.0, bulk_export_seconds=0.0)
    async with running_service(tmp_path, sandbox_settings=fast) as service:
        _, list_id, leads = await members_synced(service, 5)
        client = MarketoClient(
            service.http, base_url=ENDPOINT, client_id=CLIENT_ID, client_secret=CLIENT_SECRET
        )
        before = service_calls(await service.control("GET", "calls"))

        paged, paged_calls = await read_members(
            client, list_id, expected=5, clock=SystemClock(), extract_above=5
        )
        extracted, extract_calls = await read_members(
            client,
            list_id,
            expected=6,
            clock=SystemClock(),
            extract_above=5,
            polling=ExtractPolling(initial=0.01),
        )

        after = service_calls(await service.control("GET", "calls"))
        assert paged == extracted == set(leads.values())
        assert paged_calls == 1
        assert extract_calls >= 4
        assert after - before == paged_calls + extract_calls


def service_calls(stats: dict[str, Any]) -> int:
    """Marketo calls the sandbox counted, token calls left out."""
    return sum(
        entry["calls"]
        for name, entry in stats["by_endpoint"].items()
        if not name.endswith("/identity/oauth/token")
    )


async def test_a_reconcile_of_some_audiences_does_not_resolve_drift_of_the_others(
    service: Service,
) -> None:
    destination_id, lists = await setup(service, ("a1", "a2"))
    both = {"a1": REALIZED, "a2": REALIZED}
    await sync(
        service,
        destination_id,
        [[update(f"p{i}", f"m{i}@x.io", time=T, audiences=both) for i in range(3)]],
    )
    await delivered(service, destination_id)
    (lead, *_) = (await service.lists())[lists["a1"]]
    await remove_by_hand(service, lists["a1"], [lead])
    await remove_by_hand(service, lists["a2"], [lead])

    async def open_drift() -> list[str]:
        return [
            alert.message
            for alert in await service.app.store.open_alerts(destination_id)
            if alert.type == "drift"
        ]

    async def reconcile_only(audience_id: str) -> None:
        await service.stub.Reconcile(
            pb.ReconcileRequest(destination_id=destination_id, audience_ids=[audience_id])
        )

    await reconcile_only("a1")
    (message,) = await open_drift()
    assert f"list {lists['a1']}" in message
    await reconcile_only("a1")
    assert len(await open_drift()) == 1, "a2's list still drifts: a1's clean run says nothing"

    await reconcile(service, destination_id)
    (message,) = await open_drift()
    assert f"list {lists['a2']}" in message
    await reconcile(service, destination_id)
    assert await open_drift() == [], "a run of every list that finds no drift resolves it"
