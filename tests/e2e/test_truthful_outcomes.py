"""Truthful outcomes and dataflow end to end (issue 21, item 11): GetDataflow counts what Marketo
confirmed, once per lead and list, and each profile's outcome lists only its own actions."""

from __future__ import annotations

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from tests.e2e.test_sync import EXITED, REALIZED, delivered, seed, setup, sync
from tests.harness import Service, update

T = 1_780_000_000.0

Actions = set[tuple[int, str]]


def coalesced_batch() -> list[pb.ProfileUpdate]:
    """Three updates of one person (profiles p1 and p2, one e-mail in two spellings) and two
    other persons (bob a member of no audience)."""
    return [
        update("p1", "ann@x.io", first="A1", time=T, audiences={"a1": REALIZED}),
        update("p1", "ann@x.io", first="A2", time=T + 1, audiences={"a2": REALIZED}),
        update("p2", "Ann@X.io", first="A3", time=T + 2, audiences={}),
        update("p3", "bob@x.io", time=T, audiences={}),
        update("p4", "carl@x.io", time=T, audiences={"a1": REALIZED}),
    ]


def actions(outcome: pb.ProfileOutcome) -> Actions:
    return {(a.type, a.audience_id) for a in outcome.actions}


async def outcomes_of(
    service: Service, destination_id: str, profile_id: str
) -> dict[float, tuple[int, Actions]]:
    """event time -> (kind, actions) of the profile's outcomes."""
    answer = await service.stub.ListProfileOutcomes(
        pb.ListProfileOutcomesRequest(destination_id=destination_id, profile_id=profile_id)
    )
    return {o.event_time.seconds: (o.kind, actions(o)) for o in answer.outcomes}


def leads_by_email(leads: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    found: dict[str, dict[str, object]] = {}
    for lead in leads:
        fields = lead["fields"]
        assert isinstance(fields, dict)
        email = str(fields["email"]).lower()
        assert email not in found, f"two leads for {email}"
        found[email] = lead
    return found


ACTIVATED = pb.OUTCOME_KIND_ACTIVATED
EXCLUDED = pb.OUTCOME_KIND_EXCLUDED
CREATED = (pb.ACTION_TYPE_CREATED, "")
UPDATED = (pb.ACTION_TYPE_UPDATED, "")


async def test_coalesced_updates_are_counted_once_and_shown_on_their_own_outcomes(
    service: Service,
) -> None:
    destination_id, lists = await setup(service, audiences=("a1", "a2"))
    await sync(service, destination_id, [coalesced_batch()])
    flow = await delivered(service, destination_id)

    leads = leads_by_email(await service.leads())
    assert sorted(leads) == ["ann@x.io", "carl@x.io"]  # bob is in no audience: not exported
    assert leads["ann@x.io"]["fields"]["firstName"] == "A3"  # type: ignore[index]
    ann, carl = leads["ann@x.io"]["id"], leads["carl@x.io"]["id"]
    assert await service.lists() == {lists["a1"]: {ann, carl}, lists["a2"]: {ann}}
    # two leads created, three memberships added, once each (not per update)
    assert (flow.received, flow.superseded, dict(flow.excluded), flow.failed) == (
        5,
        0,
        {"no_audience": 1},
        {},
    )
    counts = flow.activated
    assert (counts.created, counts.updated, counts.added, counts.removed) == (2, 0, 3, 0)
    assert await outcomes_of(service, destination_id, "p1") == {
        int(T): (ACTIVATED, {(pb.ACTION_TYPE_ADDED, "a1")}),
        int(T + 1): (ACTIVATED, {(pb.ACTION_TYPE_ADDED, "a2")}),
    }
    # the profile without memberships of its own shows no list change
    assert await outcomes_of(service, destination_id, "p2") == {int(T + 2): (ACTIVATED, {CREATED})}
    assert await outcomes_of(service, destination_id, "p3") == {int(T): (EXCLUDED, set())}
    assert await outcomes_of(service, destination_id, "p4") == {
        int(T): (ACTIVATED, {CREATED, (pb.ACTION_TYPE_ADDED, "a1")})
    }


async def test_an_exit_for_a_lead_not_in_the_list_is_reported_and_counted_nowhere(
    service: Service,
) -> None:
    (outsider,) = await seed(service, {"email": "out@x.io", "firstName": "O"})
    destination_id, lists = await setup(service, audiences=("a1", "a2"))
    await sync(
        service, destination_id, [[update("p1", "in@x.io", time=T, audiences={"a1": REALIZED})]]
    )
    await delivered(service, destination_id)
    await sync(
        service,
        destination_id,
        [
            [
                update("p1", "in@x.io", time=T + 10, audiences={"a1": EXITED}),
                update("p2", "out@x.io", time=T + 10, audiences={"a1": EXITED}),
                update("p3", "new@x.io", time=T + 10, audiences={"a1": REALIZED, "a2": EXITED}),
            ]
        ],
    )
    flow = await delivered(service, destination_id)

    leads = leads_by_email(await service.leads())
    assert sorted(leads) == ["in@x.io", "new@x.io", "out@x.io"]
    assert leads["out@x.io"]["id"] == outsider
    assert await service.lists() == {lists["a1"]: {leads["new@x.io"]["id"]}, lists["a2"]: set()}
    counts = flow.activated
    # created: in, new; updated: none (in leaves its only audience, out was never a member:
    # their attributes are not exported); added: in, then new; removed: in only
    assert (counts.created, counts.updated, counts.added, counts.removed) == (2, 0, 2, 1)
    assert (await outcomes_of(service, destination_id, "p1"))[int(T + 10)] == (
        ACTIVATED,
        {(pb.ACTION_TYPE_REMOVED, "a1")},
    )
    assert await outcomes_of(service, destination_id, "p2") == {
        int(T + 10): (ACTIVATED, {(pb.ACTION_TYPE_NOT_IN_LIST, "a1")})
    }
    assert await outcomes_of(service, destination_id, "p3") == {
        int(T + 10): (
            ACTIVATED,
            {CREATED, (pb.ACTION_TYPE_ADDED, "a1"), (pb.ACTION_TYPE_NOT_IN_LIST, "a2")},
        )
    }


async def test_preview_shows_each_update_its_own_actions(service: Service) -> None:
    destination_id, _ = await setup(service, audiences=("a1", "a2"))
    preview = await service.stub.PreviewSync(
        pb.PreviewSyncRequest(destination_id=destination_id, updates=coalesced_batch())
    )

    assert (preview.created, preview.updated) == (2, 0)
    assert [(a.audience_id, a.added, a.removed) for a in preview.audiences] == [
        ("a1", 2, 0),
        ("a2", 1, 0),
    ]
    # in request order
    shown = [(o.profile_id, o.outcome.kind, actions(o.outcome)) for o in preview.outcomes]
    assert shown == [
        ("p1", ACTIVATED, {(pb.ACTION_TYPE_ADDED, "a1")}),
        ("p1", ACTIVATED, {(pb.ACTION_TYPE_ADDED, "a2")}),
        ("p2", ACTIVATED, {CREATED}),
        ("p3", EXCLUDED, set()),
        ("p4", ACTIVATED, {CREATED, (pb.ACTION_TYPE_ADDED, "a1")}),
    ]
    assert await service.leads() == []


async def test_preview_shows_an_exit_with_no_holder_as_sync_delivers_it(service: Service) -> None:
    """An exit from a tracked list the service never added the person's lead to costs no call:
    Sync delivers it as NOT_IN_LIST, and the preview says so (not a bare ACTIVATED)."""
    destination_id, _ = await setup(service, audiences=("a1", "a2"))
    await seed(service, {"email": "out@x.io", "firstName": "Out", "lastName": "Sider"})
    await sync(
        service, destination_id, [[update("p1", "in@x.io", time=T, audiences={"a2": REALIZED})]]
    )
    await delivered(service, destination_id)
    batch = [
        # a member of a2 that was never in a1; an outsider that is a member of nothing
        update("p1", "in@x.io", time=T + 10, audiences={"a1": EXITED}),
        update("p2", "out@x.io", time=T + 10, audiences={"a1": EXITED}),
    ]
    preview = await service.stub.PreviewSync(
        pb.PreviewSyncRequest(destination_id=destination_id, updates=batch)
    )
    shown = {o.profile_id: (o.outcome.kind, actions(o.outcome)) for o in preview.outcomes}
    not_in_list = {(pb.ACTION_TYPE_NOT_IN_LIST, "a1")}
    assert shown == {"p1": (ACTIVATED, not_in_list), "p2": (ACTIVATED, not_in_list)}

    await sync(service, destination_id, [batch])
    await delivered(service, destination_id)
    for profile_id in ("p1", "p2"):
        delivered_ = await outcomes_of(service, destination_id, profile_id)
        assert delivered_[int(T + 10)] == shown[profile_id]
