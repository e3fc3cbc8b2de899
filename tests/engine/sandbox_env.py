"""The Marketo sandbox in process, with the real client over it, for engine integration tests."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from sandbox import ManualClock, SandboxSettings, asgi_transport, create_app
from service.marketo.client import MarketoClient
from service.marketo.limits import InstanceLimits
from service.settings import RetryPolicy

BASE_URL = "https://123-ABC-456.mktorest.com"
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class SteppingClock:
    """One clock for the sandbox and the client: sleeping moves it, nobody waits for real."""

    def __init__(self, manual: ManualClock) -> None:
        self.manual = manual

    def now(self) -> float:
        return self.manual.now()

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.manual.advance(seconds)


@dataclass
class Sandbox:
    http: httpx.AsyncClient
    client: MarketoClient
    clock: SteppingClock

    async def control(self, method: str, path: str, body: Any = None) -> Any:
        response = await self.http.request(method, f"/_sandbox/{path}", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    async def seed(self, *leads: dict[str, Any]) -> list[int]:
        ids: list[int] = (await self.control("POST", "leads", {"leads": list(leads)}))["ids"]
        return ids

    async def leads(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (await self.control("GET", "leads"))["leads"]
        return result

    async def lists(self) -> dict[int, set[int]]:
        dump = await self.control("GET", "lists")
        return {item["id"]: set(item["members"]) for item in dump["lists"]}

    async def calls(self) -> dict[str, int]:
        dump = await self.control("GET", "calls")
        return {name: entry["calls"] for name, entry in dump["by_endpoint"].items()}

    async def fault(self, **fault: Any) -> None:
        await self.control("POST", "faults", {"faults": [fault]})

    async def make_lists(self, names: Sequence[str]) -> dict[str, int]:
        folder = await self.client.folder_by_name("Group Lists")
        assert folder is not None
        made = {}
        for name in names:
            made[name] = (await self.client.create_static_list(name, folder.id)).id
        return made


@asynccontextmanager
async def running_sandbox(**settings: Any) -> AsyncIterator[Sandbox]:
    """A fresh sandbox (settings override `SandboxSettings`) and a client with matching limits."""
    sandbox_settings = SandboxSettings(**settings)
    clock = SteppingClock(ManualClock(START))
    app = create_app(sandbox_settings, clock=clock.manual)
    limits = InstanceLimits(
        calls_per_window=sandbox_settings.calls_per_window,
        window_seconds=sandbox_settings.window_seconds,
        share=1.0,
        concurrency=min(8, sandbox_settings.concurrency),
        daily_quota=sandbox_settings.daily_quota,
        clock=clock,
    )
    async with httpx.AsyncClient(transport=asgi_transport(app), base_url=BASE_URL) as http:
        client = MarketoClient(
            http,
            base_url=BASE_URL,
            client_id=sandbox_settings.client_id,
            client_secret=sandbox_settings.client_secret,
            limits=limits,
            clock=clock,
            retry=RetryPolicy(rng=random.Random(5)),
        )
        yield Sandbox(http, client, clock)
