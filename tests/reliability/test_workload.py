"""The reliability suite's own checks can fail: `check_outcomes` on outcomes that miss an
update, add one, or are not final."""

from __future__ import annotations

import random

import pytest

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from tests.reliability import workload


def outcome_of(
    update: pb.ProfileUpdate, kind: int = pb.OUTCOME_KIND_ACTIVATED
) -> pb.ProfileOutcome:
    outcome = pb.ProfileOutcome(profile_id=update.profile_id, kind=kind)  # type: ignore[arg-type]
    outcome.event_time.CopyFrom(update.event_time)
    return outcome


@pytest.fixture
def sent() -> list[pb.ProfileUpdate]:
    _, loads = workload.plan(40, random.Random(3))
    return loads[0].updates


def test_every_update_with_one_final_outcome_passes(sent: list[pb.ProfileUpdate]) -> None:
    workload.check_outcomes([outcome_of(u) for u in sent], sent, exact=True)


@pytest.mark.parametrize("exact", [True, False])
def test_an_update_without_an_outcome_fails(sent: list[pb.ProfileUpdate], exact: bool) -> None:
    with pytest.raises(AssertionError, match=r"1 of \d+ updates have no outcome"):
        workload.check_outcomes([outcome_of(u) for u in sent[1:]], sent, exact=exact)


def test_a_pending_outcome_fails(sent: list[pb.ProfileUpdate]) -> None:
    outcomes = [outcome_of(u) for u in sent]
    outcomes[3] = outcome_of(sent[3], pb.OUTCOME_KIND_PENDING)
    with pytest.raises(AssertionError, match="not final"):
        workload.check_outcomes(outcomes, sent, exact=True)


def test_an_outcome_twice_fails_only_when_exact(sent: list[pb.ProfileUpdate]) -> None:
    outcomes = [outcome_of(u) for u in [*sent, sent[0]]]
    workload.check_outcomes(outcomes, sent, exact=False)
    with pytest.raises(AssertionError):
        workload.check_outcomes(outcomes, sent, exact=True)


def test_an_outcome_of_an_update_never_sent_fails(sent: list[pb.ProfileUpdate]) -> None:
    stranger = outcome_of(sent[0])
    stranger.profile_id = "nobody"
    with pytest.raises(AssertionError, match="never sent"):
        workload.check_outcomes([*map(outcome_of, sent), stranger], sent, exact=False)


def delivered_state(
    pool: int, loads: list[workload.DestinationLoad], instance: int
) -> tuple[list[dict[str, object]], dict[int, set[int]], dict[int, int]]:
    """An instance's Marketo state as the desired state says it may end, built from the
    workload's own rules: leads with names the order allows, each list holding the desired
    members."""
    addresses = [
        (workload.email(instance, i), min(workload.expected_names(i))) for i in range(pool)
    ]
    addresses += [
        (
            workload.moved_email(instance, load.index, i),
            workload.first_name(i, workload.versions(i)),
        )
        for load in loads
        if load.instance == instance
        for i in load.addresses
        if workload.moves(i)
    ]
    leads: list[dict[str, object]] = [
        {"id": n, "fields": {"email": address, "firstName": name}}
        for n, (address, name) in enumerate(addresses)
    ]
    ids = {address: n for n, (address, _) in enumerate(addresses)}
    list_ids = {load.index: 1000 + load.index for load in loads if load.instance == instance}
    lists = {
        list_ids[load.index]: {ids[a] for a in workload.desired_members(load)}
        for load in loads
        if load.instance == instance
    }
    return leads, lists, list_ids


def test_desired_state_differs_from_the_last_event() -> None:
    _, loads = workload.plan(120, random.Random(3))
    load = loads[0]
    kinds = {
        "moves": [i for i in load.addresses if workload.moves(i)],
        "refuses": [i for i in load.addresses if workload.refuses(i)],
        "lags": [i for i in load.addresses if workload.lags(i)],
    }
    assert all(kinds.values()), kinds
    members = workload.desired_members(load)
    for i in kinds["moves"]:
        assert workload.email(0, i) not in members
        assert workload.moved_email(0, 0, i) in members
    for i in kinds["refuses"] + kinds["lags"]:
        # the last event of a refusal is an entry, and a lagging exit is not the last sent
        assert workload.email(0, i) not in members
    last_sent = {u.profile_id: u for u in load.updates}
    lagging = last_sent[f"d0-p{kinds['lags'][0]}"]
    assert [a.status for a in lagging.audiences] == [pb.MEMBERSHIP_STATUS_EXITED]
    assert any(
        u.profile_id == lagging.profile_id
        and not u.audiences
        and u.event_time.ToSeconds() > lagging.event_time.ToSeconds()
        for u in load.updates
    )


def test_the_desired_state_passes_and_a_lost_removal_fails() -> None:
    pool, loads = workload.plan(120, random.Random(3))
    leads, lists, list_ids = delivered_state(pool, loads, 0)
    workload.check_instance(0, pool, loads, list_ids, leads, lists)
    moved = next(i for i in loads[0].addresses if workload.moves(i))
    old = next(lead for lead in leads if lead["fields"]["email"] == workload.email(0, moved))  # type: ignore[index]
    lists[list_ids[0]].add(int(old["id"]))  # type: ignore[call-overload]
    with pytest.raises(AssertionError, match="lost removals"):
        workload.check_instance(0, pool, loads, list_ids, leads, lists)


def test_a_duplicate_lead_fails() -> None:
    pool, loads = workload.plan(120, random.Random(3))
    leads, lists, list_ids = delivered_state(pool, loads, 0)
    leads.append({**leads[0], "id": 99_999})
    with pytest.raises(AssertionError, match="duplicate leads"):
        workload.check_instance(0, pool, loads, list_ids, leads, lists)
