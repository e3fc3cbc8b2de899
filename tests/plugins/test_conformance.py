"""One conformance suite for every registered transform, built-in or third-party.

Every transform must, for any JSON scalar (or tuple of them for multi-source transforms):
return `None` or a value of its declared types, or raise `TransformError`; give the same answer
twice; and never touch the network. Every built-in transform and data-type coercer must also take
time linear in its input: adversarial text of the longest length the mapper lets through is
answered well within a fraction of a second.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.hookspecs import Transform, TransformError
from service.mapping.coercion import SUPPORTED_DATA_TYPES, coercer_for
from service.mapping.mapper import MAX_SOURCE_ITEMS, MAX_TEXT_CHARS
from service.mapping.registry import PluginRegistry

from .test_registry import BUILTIN_TRANSFORMS

ALL_TRANSFORMS = sorted(BUILTIN_TRANSFORMS | {"loyalty_tier"})

# Realistic text next to arbitrary text, so parsers take their success paths too.
SAMPLES = [
    "  Ada Lovelace ",
    "Lovelace, Ada",
    "Ludwig van Beethoven",
    "ada@example.com",
    "+46 70 123 45 67",
    "(415) 555-0123",
    "0044 20 7946 0958",
    "2024-02-29",
    "2024-02-29T12:30:00+02:00",
    "2024-02-29 12:30:00",
    "29/02/2024",
    "Sweden",
    "se",
    "United States of America",
    "yes",
    "0",
    "42",
    "-3.5e2",
    "1500",
    "",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(SAMPLES),
    st.text(max_size=40),
)
VALUES = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=3),
    st.dictionaries(st.text(max_size=5), SCALARS, max_size=2),
)


class NetworkUsedError(AssertionError):
    pass


@contextlib.contextmanager
def no_network() -> Iterator[None]:
    def refuse(*args: object, **kwargs: object) -> socket.socket:
        raise NetworkUsedError("a transform tried to open a socket")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "socket", refuse)
        mp.setattr(socket, "create_connection", refuse)
        mp.setattr(socket, "getaddrinfo", refuse)
        yield


@pytest.fixture
def full_registry(example_installed: Path) -> PluginRegistry:
    return PluginRegistry.build()


def test_suite_covers_every_registered_transform(full_registry: PluginRegistry) -> None:
    assert sorted(full_registry.transforms) == ALL_TRANSFORMS


def _check(transform: Transform, value: object) -> None:
    func = transform.prepare(transform.example_options)
    with no_network():
        try:
            first = func(value)
        except TransformError:
            with pytest.raises(TransformError):
                func(value)
            return
        second = func(value)
    assert first is None or isinstance(first, transform.returns), (value, first)
    # repr, not ==, so a NaN passed through unchanged still counts as the same answer.
    assert repr(first) == repr(second) and type(first) is type(second), (value, first, second)


@pytest.mark.parametrize("name", ALL_TRANSFORMS)
def test_transform_conforms(name: str, full_registry: PluginRegistry) -> None:
    transform = full_registry.transform(name).item
    assert set(transform.example_options) <= set(transform.options)
    assert transform.description
    inputs = st.tuples(VALUES, VALUES, VALUES) if transform.multi_source else VALUES

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(inputs)
    def conforms(value: object) -> None:
        _check(transform, value)

    conforms()


@pytest.mark.parametrize("name", ALL_TRANSFORMS)
def test_transform_handles_missing_value(name: str, full_registry: PluginRegistry) -> None:
    transform = full_registry.transform(name).item
    value: object = (None, None) if transform.multi_source else None
    _check(transform, value)


def test_suite_catches_a_bad_transform() -> None:
    def wrong_type(value: object) -> object:
        return 1

    def networked(value: object) -> object:
        socket.create_connection(("example.com", 80))
        return None

    def crashing(value: object) -> object:
        raise KeyError(value)

    for func, error in (
        (wrong_type, AssertionError),
        (networked, NetworkUsedError),
        (crashing, KeyError),
    ):
        with pytest.raises(error):
            _check(Transform.from_function("bad", func, returns=(str,)), "x")


# -- time: adversarial input of the longest accepted length ---------------------------------

LONGEST = MAX_TEXT_CHARS
"""The longest text the mapper hands a transform or a coercer (a text-area target's)."""
CALL_BUDGET = 0.5
"""CPU seconds one call may take; linear code answers in milliseconds, the quadratic extension
pattern phone_e164 once had took seconds (a 30,000-space phone: 12.8 s)."""

# Runs that make backtracking patterns try every split: spaces and tabs before a marker that
# never comes, digits and dots before a letter, separators, '@', and Unicode that casefolds,
# decomposes or counts as a digit or a space.
UNITS = (
    " ",
    "\t",
    "1",
    ".",
    "@",
    "x",
    "#",
    "-/",
    "1 ",
    " x",
    " ext. 1",
    "1.",
    "a@",
    "a.",
    "e1",
    "(1) ",
    "+1",
    "\u00a0",
    "\u0301",
    "\u0663",
    "\U0001d7d9",
    "\ufdfa",
    "\u0130\u00df",
)
# A run alone, a run that does not end as the pattern hoped, and the same behind a digit (so
# that stripping the text does not remove the run).
FRAMES = (("", ""), ("", "z"), ("1", "z"))


def adversarial_texts() -> Iterator[str]:
    """Texts of exactly LONGEST characters: each unit repeated, in each frame."""
    for unit in UNITS:
        run = unit * (LONGEST // len(unit) + 1)
        for start, end in FRAMES:
            yield start + run[: LONGEST - len(start) - len(end)] + end
    yield "1" + " " * (LONGEST - 3) + "x1"
    yield "a" * (LONGEST // 2) + "@" + "b." * (LONGEST // 4)


def adversarial_values() -> Iterator[str | list[str] | dict[str, str]]:
    yield from adversarial_texts()
    # The largest arrays and objects the mapper lets through.
    yield [" " * (LONGEST // MAX_SOURCE_ITEMS)] * MAX_SOURCE_ITEMS
    yield {f"{i:03}": " x" * (LONGEST // MAX_SOURCE_ITEMS // 2 - 2) for i in range(999)}


def _describe(value: str | list[str] | dict[str, str]) -> str:
    return f"{type(value).__name__} of {len(value):,} beginning {str(value)[:12]!r}"


class TooSlowError(BaseException):
    """A call ran past its budget (BaseException: no `except Exception` in a plugin stops it)."""


@contextlib.contextmanager
def cpu_budget(seconds: float, what: str) -> Iterator[None]:
    """Interrupt the block once it has used `seconds` of CPU time (the regular-expression engine
    checks for signals, so even one long match is cut short)."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TooSlowError(f"{what} took more than {seconds} s of CPU")

    previous = signal.signal(signal.SIGPROF, expire)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def _run_within_budget(func: Callable[[object], object], value: object, what: str) -> None:
    with cpu_budget(CALL_BUDGET, what), contextlib.suppress(TransformError):
        func(value)


@pytest.mark.parametrize("name", sorted(BUILTIN_TRANSFORMS))
def test_builtin_transform_is_linear_on_adversarial_text(
    name: str, registry: PluginRegistry
) -> None:
    transform = registry.transform(name).item
    func = transform.prepare(transform.example_options)
    for value in adversarial_values():
        arg = (value, value, value) if transform.multi_source else value
        what = f"{name}({_describe(value)})"
        _run_within_budget(func, arg, what)


@pytest.mark.parametrize("data_type", sorted(SUPPORTED_DATA_TYPES))
def test_coercer_is_linear_on_adversarial_text(data_type: str) -> None:
    coerce = coercer_for(data_type, LONGEST)
    for value in adversarial_values():
        _run_within_budget(coerce, value, f"the {data_type} coercer({_describe(value)})")


def test_the_budget_stops_a_quadratic_pattern() -> None:
    quadratic = re.compile(r"\s*(?:x|ext\.?|#)\s*[0-9]+$")
    with pytest.raises(TooSlowError):
        _run_within_budget(lambda text: quadratic.sub("", text), " " * LONGEST, "quadratic")
