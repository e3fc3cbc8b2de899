"""The client reports each HTTP exchange, attempt and retry to the observer it is given, with
what only it knows: the call's name, attempt, records and limiter wait."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator

import httpx
import pytest

from service.marketo.client import MarketoClient
from service.marketo.errors import UnavailableError
from service.marketo.observer import NO_OBSERVER, Call, Exchange, MarketoObserver
from service.marketo.types import SyncAction
from service.settings import RetryPolicy
from tests.marketo.conftest import FakeMarketo, Seen, error, ok

PARTITIONS = "/rest/v1/leads/partitions.json"


class Answers(Exchange):
    def __init__(self, statuses: list[int]) -> None:
        self._statuses = statuses

    def answered(self, response: httpx.Response) -> None:
        self._statuses.append(response.status_code)


class Recorder(MarketoObserver):
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.statuses: list[int] = []
        self.failures: list[str] = []
        self.attempts: list[tuple[str, str, str]] = []
        self.retries: list[tuple[str, str]] = []

    @contextlib.contextmanager
    def exchange(self, call: Call) -> Iterator[Exchange]:
        self.calls.append(call)
        try:
            yield Answers(self.statuses)
        except Exception as failure:
            self.failures.append(type(failure).__name__)
            raise

    def attempted(self, *, endpoint: str, method: str, code: str, seconds: float) -> None:
        assert seconds >= 0
        self.attempts.append((endpoint, method, code))

    def retrying(self, *, endpoint: str, action: str) -> None:
        self.retries.append((endpoint, action))


def test_a_client_given_no_observer_reports_to_nobody(
    make_client: Callable[..., MarketoClient],
) -> None:
    assert make_client()._observer is NO_OBSERVER


async def test_exchanges_attempts_and_retries_are_reported(
    marketo: FakeMarketo, make_client: Callable[..., MarketoClient]
) -> None:
    answers = iter([error("606", "Max rate limit exceeded")])
    marketo.route("GET", PARTITIONS, lambda _: next(answers, ok([{"id": 1, "name": "Default"}])))
    recorder = Recorder()
    client = make_client(observer=recorder)

    assert [p.id for p in await client.partitions()] == [1]

    assert [(c.endpoint, c.attempt, c.request.url.path) for c in recorder.calls] == [
        ("identity", 1, "/identity/oauth/token"),
        ("leads/partitions", 1, PARTITIONS),
        ("leads/partitions", 2, PARTITIONS),
    ]
    identity, first, second = recorder.calls
    assert identity.limiter_wait is None  # Identity is not held by the instance's limits
    assert first.limiter_wait is not None and first.limiter_wait >= 0
    assert second.limiter_wait is not None
    assert [c.records for c in recorder.calls] == [None, None, None]
    assert recorder.statuses == [200, 200, 200]
    assert recorder.attempts == [
        ("identity", "POST", "ok"),
        ("leads/partitions", "GET", "606"),
        ("leads/partitions", "GET", "ok"),
    ]
    assert recorder.retries == [("leads/partitions", "throttled")]
    assert recorder.failures == []


async def test_the_records_of_each_call_are_reported(
    marketo: FakeMarketo, make_client: Callable[..., MarketoClient]
) -> None:
    def synced(seen: Seen) -> dict[str, object]:
        return ok([{"id": i, "status": "updated"} for i, _ in enumerate(seen.json()["input"])])

    marketo.route("POST", "/rest/v1/leads.json", synced)
    marketo.route("GET", "/rest/v1/leads.json", lambda _: ok([]))
    marketo.route(
        "POST",
        "/rest/v1/lists/7/leads.json",
        lambda seen: ok([{"id": r["id"], "status": "added"} for r in seen.json()["input"]]),
    )
    recorder = Recorder()
    client = make_client(observer=recorder)

    await client.sync_leads(
        [{"email": f"p{i}@example.com"} for i in range(301)], action=SyncAction.UPDATE_ONLY
    )
    await client.find_leads("email", ["a@example.com", "b@example.com", "a@example.com"])
    await client.add_to_list(7, [1, 2, 3])

    sent = [(c.endpoint, c.records) for c in recorder.calls if c.endpoint != "identity"]
    assert sent == [("leads/sync", 300), ("leads/sync", 1), ("leads", 2), ("lists/leads/add", 3)]


async def test_a_failed_exchange_is_reported_by_its_exception(
    marketo: FakeMarketo, make_client: Callable[..., MarketoClient]
) -> None:
    def refuse(_: Seen) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    marketo.route("POST", "/identity/oauth/token", refuse)
    recorder = Recorder()
    client = make_client(observer=recorder, retry=RetryPolicy(max_attempts=2, rng=random.Random(4)))

    with pytest.raises(UnavailableError):
        await client.token()

    assert [(c.endpoint, c.attempt) for c in recorder.calls] == [("identity", 1), ("identity", 2)]
    assert recorder.failures == ["ConnectError", "ConnectError"]
    assert recorder.statuses == []
    assert recorder.attempts == [("identity", "POST", "ConnectError")] * 2
    assert recorder.retries == [("identity", "transient")]
