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
