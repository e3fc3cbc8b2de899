"""Reading a list's members: page by page (ending even when Marketo's page tokens go round in a
circle) or from an extract file (checked row by row, parsed off the event loop)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from service.marketo.clock import SystemClock
from service.marketo.errors import MarketoError
from service.marketo.types import ExportJob, Lead, LeadPage
from service.usecases import reconcile
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


class Extract:
    """A bulk extract of a list that completes at once with the file `text`."""

    def __init__(self, text: str) -> None:
        self.text = text

    async def create_export(self, fields: object, *, static_list_id: int) -> ExportJob:
        return ExportJob("e1", "Created")

    async def enqueue_export(self, export_id: str) -> ExportJob:
        return ExportJob(export_id, "Completed")

    async def export_file(self, export_id: str) -> str:
        return self.text


async def test_an_extract_file_is_read_into_lead_ids() -> None:
    client = Extract("id\n12\n\n13\n")
    ids, calls = await read_members(client, 7, expected=5_000, clock=SystemClock())  # type: ignore[arg-type]
    assert (ids, calls) == ({12, 13}, 3)


@pytest.mark.parametrize(
    "text", ["id\n12\nnot-a-number\n", "id\n12\n1e400\n", "id\n12\n" + "9" * 5_000 + "\n"]
)
async def test_an_extract_file_with_an_id_that_is_no_lead_id_is_a_marketo_error(
    text: str,
) -> None:
    with pytest.raises(MarketoError, match=r"list 7: the extract file .*\(row 2\)"):
        await read_members(Extract(text), 7, expected=5_000, clock=SystemClock())  # type: ignore[arg-type]


async def test_an_extract_file_that_csv_cannot_read_is_a_marketo_error() -> None:
    text = 'id\n12\n"' + "1" * 200_000 + '"\n'  # a field past the csv module's limit
    with pytest.raises(MarketoError, match=r"list 7: the extract file cannot be read \(row 2\)"):
        await read_members(Extract(text), 7, expected=5_000, clock=SystemClock())  # type: ignore[arg-type]


async def test_an_extract_file_is_parsed_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    released = threading.Event()
    held: list[bool] = []
    parse = reconcile._extracted_ids

    def parse_once_the_loop_runs(text: str, list_id: int) -> set[int]:
        # Parsing that held the event loop would wait for nothing: the loop cannot run this.
        loop.call_soon_threadsafe(released.set)
        held.append(not released.wait(30.0))
        return parse(text, list_id)

    monkeypatch.setattr(reconcile, "_extracted_ids", parse_once_the_loop_runs)
    ids, _ = await read_members(Extract("id\n12\n"), 7, expected=5_000, clock=SystemClock())  # type: ignore[arg-type]
    assert ids == {12}
    assert held == [False], "the event loop was held while the extract file was parsed"
