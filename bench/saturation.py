"""Saturation benchmark: how much of Marketo's rate allowance the client's limiter uses.

The sandbox runs in process on the real clock with 100 calls per 2 s window, 10 concurrent
calls and 20 ms of latency per call (so calls overlap and the concurrency cap matters; set
`--latency-ms 0` for none). 3,000 lookups are driven through one `MarketoClient` whose limits
are exactly what the sandbox allows (share 1.0: the bench measures the limiter, not the
courtesy margin). The limiter holds each call's window slot until a window after its answer,
so every window costs one call latency: expect about window / (window + latency).

A sliding window lets the first window's calls go at once, so N calls need at least
(N - per_window) / per_window * window seconds. Utilization is that minimum divided by the time
actually taken (1.0 = no allowance wasted). Last line: one JSON object.

Run: .venv/bin/python bench/saturation.py [--calls N] [--latency-ms MS]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

# Run as a script, this folder heads sys.path and bench/sandbox.py would shadow the package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import httpx  # noqa: E402

from sandbox import SandboxSettings, asgi_transport, create_app  # noqa: E402
from service.marketo.client import MarketoClient  # noqa: E402
from service.marketo.limits import InstanceLimits  # noqa: E402
from service.settings import RetryPolicy  # noqa: E402

BASE = "https://123-ABC-456.mktorest.com"
PER_WINDOW = 100
WINDOW = 2.0
CONCURRENCY = 10


async def run(calls: int, workers: int, latency_ms: float) -> dict[str, Any]:
    settings = SandboxSettings(
        calls_per_window=PER_WINDOW,
        window_seconds=WINDOW,
        concurrency=CONCURRENCY,
        latency_ms=latency_ms,
    )
    app = create_app(settings)
    async with httpx.AsyncClient(transport=asgi_transport(app), base_url=BASE) as http:
        limits = InstanceLimits(
            calls_per_window=PER_WINDOW,
            window_seconds=WINDOW,
            share=1.0,
            concurrency=CONCURRENCY,
            daily_quota=1_000_000,
        )
        client = MarketoClient(
            http,
            base_url=BASE,
            client_id="sandbox-client-id",
            client_secret="sandbox-client-secret",
            limits=limits,
            retry=RetryPolicy(),
        )
        seeded = await http.post(
            "/_sandbox/leads", json={"leads": [{"email": f"b{i}@example.com"} for i in range(50)]}
        )
        ids: list[int] = seeded.json()["ids"]
        await client.token()
        queue: asyncio.Queue[int] = asyncio.Queue()
        for n in range(calls):
            queue.put_nowait(n)
        errors = 0

        async def worker() -> None:
            nonlocal errors
            while True:
                try:
                    n = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                try:
                    if n % 2:
                        await client.get_lead(ids[n % len(ids)])
                    else:
                        await client.find_leads("email", [f"b{n % 50}@example.com"])
                except Exception:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        elapsed = time.perf_counter() - started
        stats = (await http.get("/_sandbox/calls")).json()

    codes = stats["by_code"]
    throttled = int(codes.get("606", 0)) + int(codes.get("615", 0))
    allowance = PER_WINDOW / WINDOW
    minimum = max(0, calls - PER_WINDOW) / PER_WINDOW * WINDOW
    return {
        "utilization": round(minimum / elapsed, 4),
        "throttled": throttled,
        "calls": calls,
        "errors": errors,
        "elapsed_s": round(elapsed, 2),
        "calls_per_s": round(calls / elapsed, 2),
        "allowance_per_s": allowance,
        "latency_ms": latency_ms,
        "peak_concurrency": stats["peak_concurrency"],
        "sandbox_requests": stats["requests"],
        "codes": codes,
        "client_attempts": client.attempts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument(
        "--latency-ms", type=float, default=20.0, help="sandbox latency per call (real time)"
    )
    args = parser.parse_args()
    result = asyncio.run(run(args.calls, args.workers, args.latency_ms))
    print(
        f"{result['calls']} calls in {result['elapsed_s']} s: {result['calls_per_s']} calls/s "
        f"against an allowance of {result['allowance_per_s']} calls/s; "
        f"{result['throttled']} answers 606/615"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
