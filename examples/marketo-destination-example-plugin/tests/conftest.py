"""The plugin's tests use the service's plugin test kit against the real registry and mapper."""

from __future__ import annotations

import marketo_destination_example
import pytest

pytest_plugins = ["marketo_destination_testing"]


@pytest.fixture
def plugin() -> object:
    """The plugin under test, registered beside the service's built-in plugins."""
    return marketo_destination_example
