"""One conformance suite for every registered transform, built-in or third-party.

Every transform must, for any JSON scalar (or tuple of them for multi-source transforms):
return `None` or a value of its declared types, or raise `TransformError`; give the same answer
twice; and never touch the network.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.hookspecs import Transform, TransformError
from service.registry import PluginRegistry

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
    transform = full_registry.transform(name).transform
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
    transform = full_registry.transform(name).transform
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
