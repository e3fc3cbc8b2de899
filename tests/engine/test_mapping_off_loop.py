"""Mapping a batch through the real mapper: off the event loop; an over-long value excluded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import pytest

from service.delivery.engine import REASON_MAPPING_REJECTED, DryRunResult, SyncEngine
from service.domain import (
    DEDUPE_TARGET,
    AudienceMembership,
    FieldMapping,
    MembershipStatus,
    OutcomeKind,
    ProfileUpdate,
)
from service.hookspecs import Transform, hookimpl
from service.mapping.mapper import MAX_SOURCE_CHARS, FieldType, Mapper
from service.mapping.registry import PluginRegistry
from tests.engine.fakes import MEMBER_OF, FakeMarketo, at
from tests.engine.test_executor import LISTS, UPDATE_ONLY

SLOW_VALUE_SECONDS = 0.05
"""CPU time the slow transform spends on each value."""
BATCH = 30
"""Updates per batch: 1.5 s of mapping in all."""
LONGEST_PAUSE = 0.5
"""Generous: a ticker waking every 10 ms waits about that long only when the loop is held."""

FIELDS = [FieldType("email", "email", 255), FieldType("firstName", "string", 255)]


class Slow:
    """A CPU-heavy transform: a busy loop, which holds the GIL as pure-Python work does."""

    @staticmethod
    @hookimpl
    def register_transforms() -> Iterable[Transform]:
        def slow(value: object) -> str | None:
            end = time.perf_counter() + SLOW_VALUE_SECONDS
            while time.perf_counter() < end:
                pass
            return value if isinstance(value, str) else None

        return [Transform.from_function("slow", slow, returns=(str,))]


def _engine(fake: FakeMarketo, transform: str = "slow") -> SyncEngine:
    registry = PluginRegistry.build(load_entry_points=False, extra_plugins=[Slow])
    rows = [FieldMapping("email", DEDUPE_TARGET), FieldMapping("first", "firstName", transform)]
    mapper = Mapper(rows, FIELDS, registry, dedupe_field="email")
    return SyncEngine(fake, UPDATE_ONLY, mapper, audience_lists=LISTS)


def _update(index: int, first: str) -> ProfileUpdate:
    return ProfileUpdate(
        update_id=f"u{index}",
        profile_id=f"p{index}",
        event_time=at(1),
        profile={"email": f"p{index}@example.com", "first": first},
        memberships=(AudienceMembership(MEMBER_OF, MembershipStatus.REALIZED),),
    )


async def _longest_pause(work: Awaitable[Any]) -> tuple[Any, float, float]:
    """(result of `work`, the longest the loop left a 10 ms ticker waiting, seconds `work` took)."""
    pauses: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            pauses.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    start = time.perf_counter()
    result = await work
    took = time.perf_counter() - start
    done.set()
    await ticker
    return result, max(pauses), took


Run = Callable[[SyncEngine, list[ProfileUpdate]], Awaitable[Any]]


@pytest.mark.parametrize(
    "run",
    [
        pytest.param(lambda engine, batch: engine.sync(batch), id="delivery"),
        pytest.param(lambda engine, batch: engine.dry_run(batch), id="preview"),
    ],
)
async def test_the_event_loop_goes_on_while_a_batch_is_mapped(run: Run) -> None:
    fake = FakeMarketo()
    for index in range(BATCH):
        fake.seed(email=f"p{index}@example.com")
    batch = [_update(index, f"Name{index}") for index in range(BATCH)]
    result, longest, took = await _longest_pause(run(_engine(fake), batch))
    assert took >= BATCH * SLOW_VALUE_SECONDS  # the mapping did run, slowly
    assert longest < LONGEST_PAUSE, f"the event loop was held for {longest:.2f} s"
    if isinstance(result, DryRunResult):
        assert len(result.update) == BATCH
    else:
        mapped = sorted(str(lead.fields.get("firstName")) for lead in fake.leads.values())
        assert mapped == sorted(f"Name{index}" for index in range(BATCH))


async def test_an_over_long_value_excludes_only_its_update() -> None:
    fake = FakeMarketo()
    for index in range(3):
        fake.seed(email=f"p{index}@example.com")
    too_long = "Q" * (MAX_SOURCE_CHARS + 1)
    batch = [_update(0, "Ada"), _update(1, too_long), _update(2, "Grace")]
    result = await _engine(fake, transform="trim").sync(batch)
    outcomes = {o.update_id: o for o in result.outcomes}
    assert outcomes["u1"].kind is OutcomeKind.EXCLUDED
    assert outcomes["u1"].reason == (
        f"{REASON_MAPPING_REJECTED}: field 'firstName' (string): source 'first' has "
        f"{MAX_SOURCE_CHARS + 1:,} characters, more than the limit of {MAX_SOURCE_CHARS:,}"
    )
    assert (outcomes["u0"].kind, outcomes["u2"].kind) == (OutcomeKind.ACTIVATED,) * 2
    written = {lead.fields["email"]: lead.fields.get("firstName") for lead in fake.leads.values()}
    assert written == {"p0@example.com": "Ada", "p1@example.com": None, "p2@example.com": "Grace"}
