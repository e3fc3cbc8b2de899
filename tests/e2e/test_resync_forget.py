"""Resync and ForgetProfile end to end (issue 23), through the gRPC API against the sandbox:
exact sandbox state (leads, list members), outcomes, and the calls the sandbox counted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from tests.e2e.test_sync import REALIZED, delivered, setup, sync
from tests.e2e.test_truthful_outcomes import leads_by_email
from tests.harness import ENDPOINT, Service, running_service, sandbox_token, update

T = 1_780_000_000.0


async def by_hand(service: Service, method: str, path: str, body: Any) -> None:
    """A call to Marketo's REST API as another integration would make it."""
    token = await sandbox_token(service)
    response = await service.http.request(
        method,
        f"{ENDPOINT}/rest/v1/{path}",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["success"], response.text


async def counted_calls(service: Service) -> int:
    """Calls the sandbox counted, the identity (token) calls aside."""
    dump = await service.control("GET", "calls")
    return sum(
        entry["calls"]
        for name, entry in dump["by_endpoint"].items()
        if "identity" not in name and "oauth" not in name
    )


async def two_members(service: Service) -> tuple[str, dict[str, int], dict[str, int]]:
    """A destination where ann (p1) is in a1 and a2 and bob (p2) in a1; returns the
    destination id, audience -> list id and e-mail -> lead id."""
    destination_id, lists = await setup(service, audiences=("a1", "a2"))
    await sync(
        service,
        destination_id,
        [
            [
                update("p1", "ann@x.io", time=T, audiences={"a1": REALIZED, "a2": REALIZED}),
                update("p2", "bob@x.io", first="Bob", time=T, audiences={"a1": REALIZED}),
            ]
        ],
    )
    await delivered(service, destination_id)
    leads = {email: lead["id"] for email, lead in leads_by_email(await service.leads()).items()}
    assert await service.lists() == {
        lists["a1"]: {leads["ann@x.io"], leads["bob@x.io"]},
        lists["a2"]: {leads["ann@x.io"]},
    }
    return destination_id, lists, leads


async def profile_outcomes(
    service: Service, destination_id: str, profile_id: str
) -> list[pb.ProfileOutcome]:
    answer = await service.stub.ListProfileOutcomes(
        pb.ListProfileOutcomesRequest(destination_id=destination_id, profile_id=profile_id)
    )
    return list(answer.outcomes)


# -- ForgetProfile ------------------------------------------------------------------------------


async def test_forget_removes_deletes_and_blocks_re_export(service: Service) -> None:
    destination_id, lists, leads = await two_members(service)
    ann, bob = leads["ann@x.io"], leads["bob@x.io"]

    answer = await service.stub.ForgetProfile(
        pb.ForgetProfileRequest(destination_id=destination_id, profile_id="p1", delete_lead=True)
    )

    assert (list(answer.lead_ids), answer.removed_from_lists, answer.lead_deleted) == (
        [ann],
        2,
        True,
    )
    assert [lead["id"] for lead in await service.leads()] == [bob]
    assert await service.lists() == {lists["a1"]: {bob}, lists["a2"]: set()}

    # a later Sync of the profile writes nothing
    later = update("p1", "ann@x.io", first="Again", time=T + 60, audiences={"a1": REALIZED})
    await sync(service, destination_id, [[later]])
    flow = await delivered(service, destination_id)

    assert [lead["id"] for lead in await service.leads()] == [bob]
    assert await service.lists() == {lists["a1"]: {bob}, lists["a2"]: set()}
    assert dict(flow.excluded) == {"forgotten": 1}
    newest, forgotten, first = await profile_outcomes(service, destination_id, "p1")
    assert (newest.kind, newest.exclusion_code, list(newest.actions)) == (
        pb.OUTCOME_KIND_EXCLUDED,
        "forgotten",
        [],
    )
    assert (forgotten.kind, forgotten.exclusion_code, forgotten.lead_id) == (
        pb.OUTCOME_KIND_EXCLUDED,
        "forgotten",
        ann,
    )
    assert forgotten.update_id.startswith("forget:")
    assert sorted((a.type, a.audience_id) for a in forgotten.actions) == [
        (pb.ACTION_TYPE_REMOVED, "a1"),
        (pb.ACTION_TYPE_REMOVED, "a2"),
    ]
    assert f"lead {ann} deleted" in forgotten.reason
    assert forgotten.dedupe_value == "", "the tombstone keeps no personal data"
    assert first.kind == pb.OUTCOME_KIND_ACTIVATED


async def test_forget_without_delete_keeps_the_lead_and_resync_skips_it(service: Service) -> None:
    destination_id, lists, leads = await two_members(service)
    ann, bob = leads["ann@x.io"], leads["bob@x.io"]

    answer = await service.stub.ForgetProfile(
        pb.ForgetProfileRequest(destination_id=destination_id, profile_id="p1")
    )
    again = await service.stub.ForgetProfile(
        pb.ForgetProfileRequest(destination_id=destination_id, profile_id="p1")
    )

    assert (list(answer.lead_ids), answer.removed_from_lists, answer.lead_deleted) == (
        [ann],
        2,
        False,
    )
    assert (list(again.lead_ids), again.removed_from_lists) == ([], 0), "nothing left to remove"
    assert sorted(lead["id"] for lead in await service.leads()) == sorted([ann, bob])
    assert await service.lists() == {lists["a1"]: {bob}, lists["a2"]: set()}

    resync = await service.stub.Resync(pb.ResyncRequest(destination_id=destination_id))
    await delivered(service, destination_id)

    assert resync.profiles == 1, "only bob"
    assert await service.lists() == {lists["a1"]: {bob}, lists["a2"]: set()}


async def test_forget_leaves_a_lead_in_the_lists_another_profile_of_it_still_wants(
    service: Service,
) -> None:
    destination_id, lists = await setup(service, audiences=("a1", "a2"))
    await sync(
        service,
        destination_id,
        [
            [
                update("p1", "ann@x.io", time=T, audiences={"a1": REALIZED, "a2": REALIZED}),
                update("p3", "ann@x.io", time=T + 1, audiences={"a1": REALIZED}),
            ]
        ],
    )
    await delivered(service, destination_id)
    (ann,) = [lead["id"] for lead in await service.leads()]
    assert await service.lists() == {lists["a1"]: {ann}, lists["a2"]: {ann}}

    answer = await service.stub.ForgetProfile(
        pb.ForgetProfileRequest(destination_id=destination_id, profile_id="p1")
    )

    # p3, the same person, is still a member of a1: only a2 lets the lead go
    assert (list(answer.lead_ids), answer.removed_from_lists) == ([ann], 1)
    assert await service.lists() == {lists["a1"]: {ann}, lists["a2"]: set()}
    drift = await service.stub.Reconcile(
        pb.ReconcileRequest(destination_id=destination_id, dry_run=True)
    )
    assert all(not (d.missing or d.unexpected) for d in drift.lists), "nothing to repair"


async def test_forget_needs_a_profile_id(service: Service) -> None:
    destination_id, _ = await setup(service)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.ForgetProfile(pb.ForgetProfileRequest(destination_id=destination_id))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "profile_id" in (caught.value.details() or "")


# -- Resync -------------------------------------------------------------------------------------


async def test_resync_restores_drift_made_by_hand_within_its_estimate(service: Service) -> None:
    destination_id, lists, leads = await two_members(service)
    ann, bob = leads["ann@x.io"], leads["bob@x.io"]
    # another integration overwrites ann's name and takes bob and ann out of lists
    await by_hand(
        service,
        "POST",
        "leads.json",
        {"action": "updateOnly", "lookupField": "id", "input": [{"id": ann, "firstName": "X"}]},
    )
    await by_hand(service, "DELETE", f"lists/{lists['a1']}/leads.json", {"input": [{"id": bob}]})
    await by_hand(service, "DELETE", f"lists/{lists['a2']}/leads.json", {"input": [{"id": ann}]})
    drifted = {lists["a1"]: {ann}, lists["a2"]: set()}
    assert await service.lists() == drifted
    before = await counted_calls(service)

    estimate = await service.stub.Resync(
        pb.ResyncRequest(destination_id=destination_id, dry_run=True)
    )

    assert await counted_calls(service) == before, "a dry run makes no call"
    assert await service.lists() == drifted
    assert leads_by_email(await service.leads())["ann@x.io"]["fields"]["firstName"] == "X"
    assert estimate.profiles == 2
    assert estimate.estimated_marketo_calls > 0
    assert estimate.estimated_seconds > 0
    assert 0 < estimate.share_of_daily_quota < 1

    run = await service.stub.Resync(pb.ResyncRequest(destination_id=destination_id))
    await delivered(service, destination_id)
    spent = await counted_calls(service) - before

    assert (run.profiles, run.estimated_marketo_calls) == (2, estimate.estimated_marketo_calls)
    assert abs(spent - estimate.estimated_marketo_calls) <= 2, (spent, estimate)
    assert await service.lists() == {lists["a1"]: {ann, bob}, lists["a2"]: {ann}}
    restored = leads_by_email(await service.leads())
    assert sorted(lead["id"] for lead in restored.values()) == sorted([ann, bob])
    assert restored["ann@x.io"]["fields"]["firstName"] == "Ada"
    assert restored["bob@x.io"]["fields"]["firstName"] == "Bob"
    (resynced, _) = await profile_outcomes(service, destination_id, "p1")
    assert resynced.update_id.startswith("resync:")
    assert resynced.kind == pb.OUTCOME_KIND_ACTIVATED
    assert sorted((a.type, a.audience_id) for a in resynced.actions) == [
        (pb.ACTION_TYPE_UPDATED, ""),
        (pb.ACTION_TYPE_ADDED, "a1"),
        (pb.ACTION_TYPE_ADDED, "a2"),
    ]


async def test_resync_of_some_profiles_leaves_the_others(service: Service) -> None:
    destination_id, lists, leads = await two_members(service)
    ann, bob = leads["ann@x.io"], leads["bob@x.io"]
    await by_hand(
        service,
        "DELETE",
        f"lists/{lists['a1']}/leads.json",
        {"input": [{"id": ann}, {"id": bob}]},
    )

    run = await service.stub.Resync(
        pb.ResyncRequest(destination_id=destination_id, profile_ids=["p2", "unknown"])
    )
    await delivered(service, destination_id)

    assert run.profiles == 1
    assert await service.lists() == {lists["a1"]: {bob}, lists["a2"]: {ann}}


async def test_resync_refuses_an_empty_profile_id(service: Service) -> None:
    destination_id, _ = await setup(service)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Resync(
            pb.ResyncRequest(destination_id=destination_id, profile_ids=["p1", " "])
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "profile_ids[1]" in (caught.value.details() or "")


async def test_resync_estimate_holds_over_several_dispatcher_batches(tmp_path: Path) -> None:
    async with running_service(tmp_path, batch_size=20) as service:
        destination_id, lists = await setup(service, audiences=("a1", "a2"))
        people = [
            update(
                f"p{n}",
                f"user{n}@x.io",
                time=T,
                audiences={"a1": REALIZED, **({"a2": REALIZED} if n % 2 else {})},
            )
            for n in range(50)
        ]
        await sync(service, destination_id, [people[:25], people[25:]])
        await delivered(service, destination_id)
        members = await service.lists()
        leads = {e: lead["id"] for e, lead in leads_by_email(await service.leads()).items()}
        # drift: a lead deleted by hand (resolved and created again), members taken out
        await by_hand(
            service, "POST", "leads/delete.json", {"input": [{"id": leads["user0@x.io"]}]}
        )
        await by_hand(
            service,
            "DELETE",
            f"lists/{lists['a1']}/leads.json",
            {"input": [{"id": leads[f"user{n}@x.io"]} for n in range(1, 30)]},
        )
        before = await counted_calls(service)

        estimate = await service.stub.Resync(
            pb.ResyncRequest(destination_id=destination_id, dry_run=True)
        )
        await service.stub.Resync(pb.ResyncRequest(destination_id=destination_id))
        await delivered(service, destination_id)
        spent = await counted_calls(service) - before

        assert estimate.profiles == 50
        assert abs(spent - estimate.estimated_marketo_calls) <= 0.2 * spent, (spent, estimate)
        after = leads_by_email(await service.leads())
        assert sorted(after) == sorted(leads)
        assert await service.lists() == {
            lists["a1"]: {lead["id"] for lead in after.values()},
            lists["a2"]: {after[f"user{n}@x.io"]["id"] for n in range(1, 50, 2)},
        }
        assert len(members[lists["a1"]]) == 50
