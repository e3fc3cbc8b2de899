"""The workload of the chaos and crash tests and its exact expected Marketo state.

Two destinations share each Marketo instance. Each instance has a pool of e-mail addresses;
the first destination updates the first 60 % of the pool, the second the last 60 %, so a fifth
of the addresses are written by both (a create race between destinations). Every address gets
1 to 3 versions (event times a minute apart) sent in a shuffled order, so older events often
arrive after newer ones; the last version decides `firstName` and the list membership (exited
for every tenth address, one of those that exist before). A fifth of each pool exists in Marketo
before the run.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from tests.harness import update

BASE_TIME = 1_780_000_000.0


def email(instance: int, i: int) -> str:
    return f"i{instance}-user{i}@example.com"


def versions(i: int) -> int:
    return 1 + i % 3


def exited(i: int) -> bool:
    """The last version leaves the audience. Only for leads that exist before the run: an exit
    alone never creates a lead ("no matching lead"), so a new address that exits would be created
    or not depending on whether an earlier version was delivered first."""
    return i % 10 == 5


def first_name(i: int, version: int) -> str:
    return f"F{i}v{version}"


@dataclass
class DestinationLoad:
    """One destination's share: the addresses it writes and its updates, shuffled."""

    index: int
    instance: int
    addresses: range
    audience_id: str
    updates: list[pb.ProfileUpdate] = field(default_factory=list)


def plan(per_destination: int, rng: random.Random) -> tuple[int, list[DestinationLoad]]:
    """The pool size of each instance and the four destinations' loads (about
    `per_destination` updates each)."""
    covered = max(per_destination // 2, 10)  # addresses per destination (2 versions on average)
    pool = round(covered / 0.6)
    loads = []
    for index in range(4):
        instance = index // 2
        addresses = range(0, covered) if index % 2 == 0 else range(pool - covered, pool)
        load = DestinationLoad(index, instance, addresses, f"aud{index}")
        for i in addresses:
            for version in range(1, versions(i) + 1):
                status = (
                    pb.MEMBERSHIP_STATUS_EXITED
                    if version == versions(i) and exited(i)
                    else pb.MEMBERSHIP_STATUS_REALIZED
                )
                load.updates.append(
                    update(
                        f"d{index}-p{i}",
                        email(instance, i),
                        first=first_name(i, version),
                        last="Chaos",
                        time=BASE_TIME + 60 * version,
                        audiences={load.audience_id: status},
                    )
                )
        rng.shuffle(load.updates)
        loads.append(load)
    return pool, loads


def seeded_leads(instance: int, pool: int) -> list[dict[str, Any]]:
    """Leads that exist before the run: every fifth address."""
    return [
        {"email": email(instance, i), "firstName": "Seeded", "lastName": "Before"}
        for i in range(0, pool, 5)
    ]


def check_instance(
    instance: int,
    pool: int,
    loads: Sequence[DestinationLoad],
    list_ids: dict[int, int],
    leads: list[dict[str, Any]],
    lists: dict[int, set[int]],
) -> None:
    """The exact expected state of one instance: one lead per address, the newest first name,
    exactly the expected list members."""
    emails = [lead["fields"].get("email") for lead in leads]
    duplicates = sorted(e for e, n in Counter(emails).items() if n > 1)
    assert not duplicates, f"instance {instance}: duplicate leads for {duplicates[:10]}"
    assert sorted(emails) == sorted(email(instance, i) for i in range(pool)), (
        f"instance {instance}: {len(emails)} leads for {pool} addresses"
    )
    by_email = {lead["fields"]["email"]: lead for lead in leads}
    wrong = [
        (email(instance, i), by_email[email(instance, i)]["fields"].get("firstName"))
        for i in range(pool)
        if by_email[email(instance, i)]["fields"].get("firstName") != first_name(i, versions(i))
    ]
    assert not wrong, (
        f"instance {instance}: {len(wrong)} leads not at their newest event: {wrong[:5]}"
    )
    for load in loads:
        if load.instance != instance:
            continue
        expected = {by_email[email(instance, i)]["id"] for i in load.addresses if not exited(i)}
        actual = lists[list_ids[load.index]]
        assert actual == expected, (
            f"destination {load.index}: {len(actual - expected)} unexpected and "
            f"{len(expected - actual)} missing list members"
        )


def check_dataflow(flow: pb.Dataflow, acknowledged: int, *, exact: bool) -> None:
    """Every acknowledged update was received and has a final outcome; none failed.

    `exact`: each update counted once (no crash); after a crash a re-delivered update may be
    counted twice."""
    assert flow.received == acknowledged, (flow.received, acknowledged)
    assert flow.pending == 0, flow
    assert not flow.failed, dict(flow.failed)
    accounted = (
        flow.activated.created
        + flow.activated.updated
        + sum(flow.excluded.values())
        + sum(flow.failed.values())
        + flow.superseded
        + flow.duplicates  # re-sent updates, dropped on unpack: no outcome of their own
    )
    if exact:
        assert accounted == acknowledged, (accounted, acknowledged, flow)
    else:
        assert accounted >= acknowledged, (accounted, acknowledged, flow)


FINAL_KINDS = frozenset(
    {
        pb.OUTCOME_KIND_ACTIVATED,
        pb.OUTCOME_KIND_EXCLUDED,
        pb.OUTCOME_KIND_FAILED,
        pb.OUTCOME_KIND_SUPERSEDED,
    }
)


def check_outcomes(
    outcomes: Sequence[pb.ProfileOutcome], sent: Sequence[pb.ProfileUpdate], *, exact: bool
) -> None:
    """Every update sent has a final outcome of its own (matched by profile and event time,
    unique in a load), and no outcome is of an update that was not sent.

    `exact`: one outcome per update (no crash); after a crash an update delivered again may
    have a second one."""
    not_final = [o for o in outcomes if o.kind not in FINAL_KINDS]
    assert not not_final, f"{len(not_final)} outcomes are not final: {not_final[:3]}"
    expected = Counter((u.profile_id, u.event_time.ToNanoseconds()) for u in sent)
    assert all(n == 1 for n in expected.values()), "the load's updates must be distinct"
    found = Counter((o.profile_id, o.event_time.ToNanoseconds()) for o in outcomes)
    missing = sorted(set(expected) - set(found))
    assert not missing, f"{len(missing)} of {len(sent)} updates have no outcome: {missing[:5]}"
    unknown = sorted(set(found) - set(expected))
    assert not unknown, f"{len(unknown)} outcomes of updates never sent: {unknown[:5]}"
    if exact:
        assert len(outcomes) == len(sent), (len(outcomes), len(sent))
