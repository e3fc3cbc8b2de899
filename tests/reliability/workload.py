"""The workload of the chaos and crash tests and its exact expected Marketo state.

Two destinations share each Marketo instance. Each instance has a pool of e-mail addresses;
the first destination updates the first 60 % of the pool, the second the last 60 %, so a fifth
of the addresses are written by both (a create race between destinations). Every address gets
1 to 3 versions (event times a minute apart) sent in a shuffled order, so older events often
arrive after newer ones. A fifth of each pool exists in Marketo before the run.

The expected list members follow the destination's desired state, not the last event, and are
computed here from these rules alone:
- the last version decides `firstName` and the membership of an ordinary address;
- every tenth address exits in its last version (`exited`): its lead leaves the list, and the
  exit from its only audience writes no attributes;
- some change e-mail in their last version (`moves`): the membership follows the person, the
  new address's lead is in the list, the old one is not;
- some refuse marketing consent (`dn` or `n`) in their last version while staying members
  (`refuses`): their lead leaves the list;
- some send an exit older than an attribute-only update after it (`lags`): the exit still
  applies, the lead leaves the list.
The special addresses exist before the run, so which leads exist never depends on the order
of delivery; their `firstName` may (a profile out of every audience is not exported), so it is
checked against the names that order allows.
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
    alone never creates a lead (a member of no audience is not exported), so a new address that
    exits would be created or not depending on whether an earlier version was delivered first."""
    return i % 10 == 5


def seeded(i: int) -> bool:
    """The address's lead exists before the run."""
    return i % 5 == 0


def moves(i: int) -> bool:
    """The last (second) version carries a new e-mail address."""
    return i % 30 == 10


def refuses(i: int) -> bool:
    """The last (third) version refuses marketing consent, still a member."""
    return i % 30 == 20


def lags(i: int) -> bool:
    """After its entry (one version), an attribute-only update two minutes later, then an exit
    one minute after the entry sent after everything else."""
    return i % 30 == 0


def moved_email(instance: int, index: int, i: int) -> str:
    """The new e-mail address a destination's profile moves to."""
    return f"i{instance}-user{i}-d{index}-moved@example.com"


LAG_NAME = "Lagged"
"""The `firstName` of the attribute-only update of a `lags` address."""


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
        late: list[pb.ProfileUpdate] = []
        for i in addresses:
            profile_id = f"d{index}-p{i}"
            for version in range(1, versions(i) + 1):
                last = version == versions(i)
                status = (
                    pb.MEMBERSHIP_STATUS_EXITED
                    if last and exited(i)
                    else pb.MEMBERSHIP_STATUS_REALIZED
                )
                extra: dict[str, Any] = {}
                if last and refuses(i):
                    extra["consents"] = {"marketing": {"any": {"val": "dn" if i % 60 else "n"}}}
                message = update(
                    profile_id,
                    moved_email(instance, index, i) if last and moves(i) else email(instance, i),
                    first=first_name(i, version),
                    last="Chaos",
                    time=BASE_TIME + 60 * version,
                    audiences={load.audience_id: status},
                )
                for key, value in extra.items():
                    message.profile.update({key: value})
                load.updates.append(message)
            if lags(i):
                attributes = update(
                    profile_id,
                    email(instance, i),
                    first=LAG_NAME,
                    last="Chaos",
                    time=BASE_TIME + 180,
                )
                del attributes.audiences[:]  # attribute-only
                load.updates.append(attributes)
                late.append(
                    update(
                        profile_id,
                        email(instance, i),
                        first=first_name(i, 2),
                        last="Chaos",
                        time=BASE_TIME + 120,
                        audiences={load.audience_id: pb.MEMBERSHIP_STATUS_EXITED},
                    )
                )
        rng.shuffle(load.updates)
        load.updates.extend(late)  # sent after the newer attribute update
        loads.append(load)
    return pool, loads


def seeded_leads(instance: int, pool: int) -> list[dict[str, Any]]:
    """Leads that exist before the run: every fifth address."""
    return [
        {"email": email(instance, i), "firstName": SEEDED_NAME, "lastName": "Before"}
        for i in range(pool)
        if seeded(i)
    ]


SEEDED_NAME = "Seeded"


def expected_names(i: int) -> frozenset[str]:
    """The `firstName`s the lead of address `i` may end with. An ordinary address ends at its
    newest version. A profile that leaves its only audience, refuses consent or moves to another
    lead exports nothing of its last version to this lead: the lead holds the newest version
    delivered while the profile was a member there, which depends on the order of delivery."""
    last = versions(i)
    if not (exited(i) or refuses(i) or moves(i) or lags(i)):
        return frozenset({first_name(i, last)})
    earlier = {first_name(i, v) for v in range(1, last)}
    if lags(i):
        earlier |= {first_name(i, 1), LAG_NAME}
    return frozenset({SEEDED_NAME, *earlier})


def desired_members(load: DestinationLoad) -> set[str]:
    """The e-mail addresses whose lead the destination's desired state holds in its list."""
    members: set[str] = set()
    for i in load.addresses:
        if moves(i):
            members.add(moved_email(load.instance, load.index, i))
        elif not (exited(i) or refuses(i) or lags(i)):
            members.add(email(load.instance, i))
    return members


def check_instance(
    instance: int,
    pool: int,
    loads: Sequence[DestinationLoad],
    list_ids: dict[int, int],
    leads: list[dict[str, Any]],
    lists: dict[int, set[int]],
) -> None:
    """The exact expected state of one instance: one lead per address (and per moved
    address), the names the order allows, exactly the desired list members: no duplicate lead,
    no lost removal (a lead in a list the desired state does not hold there), no missing one."""
    emails = [lead["fields"].get("email") for lead in leads]
    duplicates = sorted(e for e, n in Counter(emails).items() if n > 1)
    assert not duplicates, f"instance {instance}: duplicate leads for {duplicates[:10]}"
    moved = {
        moved_email(instance, load.index, i): i
        for load in loads
        if load.instance == instance
        for i in load.addresses
        if moves(i)
    }
    assert sorted(emails) == sorted([email(instance, i) for i in range(pool)] + list(moved)), (
        f"instance {instance}: {len(emails)} leads for {pool} addresses and {len(moved)} moved"
    )
    by_email = {lead["fields"]["email"]: lead for lead in leads}
    wrong = [
        (email(instance, i), by_email[email(instance, i)]["fields"].get("firstName"))
        for i in range(pool)
        if by_email[email(instance, i)]["fields"].get("firstName") not in expected_names(i)
    ]
    wrong += [
        (address, by_email[address]["fields"].get("firstName"))
        for address, i in moved.items()
        if by_email[address]["fields"].get("firstName") != first_name(i, versions(i))
    ]
    assert not wrong, (
        f"instance {instance}: {len(wrong)} leads not at their newest event: {wrong[:5]}"
    )
    names = {lead["id"]: lead["fields"]["email"] for lead in leads}
    for load in loads:
        if load.instance != instance:
            continue
        expected = desired_members(load)
        actual = {
            names.get(lead_id, f"deleted lead {lead_id}") for lead_id in lists[list_ids[load.index]]
        }
        assert actual == expected, (
            f"destination {load.index}: lost removals {sorted(actual - expected)[:5]}, "
            f"missing members {sorted(expected - actual)[:5]}"
        )


def check_dataflow(
    flow: pb.Dataflow,
    acknowledged: int,
    *,
    exact: bool,
    outcomes: Sequence[pb.ProfileOutcome] = (),
) -> None:
    """Every acknowledged update was received and has a final outcome; none failed.

    The activated counters count writes; an update activated for its list change alone (an
    exit from the last audience writes no attributes) is counted from its outcome. `exact`:
    each update counted once (no crash); after a crash a re-delivered update may be counted
    twice."""
    assert flow.received == acknowledged, (flow.received, acknowledged)
    assert flow.pending == 0, flow
    assert not flow.failed, dict(flow.failed)
    writes = {pb.ACTION_TYPE_CREATED, pb.ACTION_TYPE_UPDATED}
    lists_only = sum(
        1
        for o in outcomes
        if o.kind == pb.OUTCOME_KIND_ACTIVATED and not any(a.type in writes for a in o.actions)
    )
    accounted = (
        flow.activated.created
        + flow.activated.updated
        + lists_only
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
