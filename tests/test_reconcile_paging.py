"""Reading a list page by page ends even when Marketo's page tokens go round in a circle."""

from __future__ import annotations

import pytest

from service.marketo.clock import SystemClock
from service.marketo.errors import MarketoError
from service.marketo.types import Lead, LeadPage
from service.usecases.reconcile import read_members

CALLS_BEFORE_GIVING_UP = 1_000
"""The fake's own guard: a reader still asking after this many pages never stops."""


class CirclingPages:
    """Get Leads by List whose pages follow `tokens` (page token -> next token), one lead each."""

    def __init__(self, tokens: dict[str | None, str | None]) -> None:
        self.tokens = tokens
        self.calls = 0

    async def list_members_page(
        self, list_id: int, fields: object = None, *, page_token: str | None = None
    ) -> LeadPage:
        self.calls += 1
        assert self.calls <= CALLS_BEFORE_GIVING_UP, "the reader never stops asking"
        lead = Lead(id=self.calls, updated_at=None, partition_id=None)
        return LeadPage(leads=(lead,), next_page_token=self.tokens[page_token])


async def test_pages_that_end_are_all_read() -> None:
    client = CirclingPages({None: "a", "a": "b", "b": None})
    ids, calls = await read_members(client, 7, expected=3, clock=SystemClock())  # type: ignore[arg-type]
    assert (ids, calls) == ({1, 2, 3}, 3)


@pytest.mark.parametrize(
    "tokens",
    [
        pytest.param({None: "same", "same": "same"}, id="the same token again"),
        pytest.param({None: "a", "a": "b", "b": "c", "c": "a"}, id="a circle of tokens"),
    ],
)
async def test_a_page_token_given_twice_stops_the_read(tokens: dict[str | None, str]) -> None:
    client = CirclingPages(tokens)
    with pytest.raises(MarketoError, match=r"list 7.*page token it had given before"):
        await read_members(client, 7, expected=3, clock=SystemClock())  # type: ignore[arg-type]
    assert client.calls == len(tokens)  # every page once, then the repeat was seen
