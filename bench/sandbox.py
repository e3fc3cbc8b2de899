"""Throughput of the Marketo sandbox in process: Sync Leads (300 records) and lookups (300 values).

Run: .venv/bin/python bench/sandbox.py
The last line is one JSON object: {"sync_leads_per_s": ..., "lookups_per_s": ...}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

# Run as a script, this file's folder heads sys.path and its name would shadow the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import httpx  # noqa: E402

from sandbox import SandboxSettings, asgi_transport, create_app  # noqa: E402

BATCH = 300
ROUNDS = 200
# Limits out of the way: this measures the emulator, not Marketo's quotas.
SETTINGS = SandboxSettings(calls_per_window=10**9, daily_quota=10**9)


async def main() -> None:
    app = create_app(SETTINGS)
    base = "https://123-ABC-456.mktorest.com"
    async with httpx.AsyncClient(transport=asgi_transport(app), base_url=base) as client:
        token = (
            await client.get(
                "/identity/oauth/token",
                params={
                    "grant_type": "client_credentials",
                    "client_id": SETTINGS.client_id,
                    "client_secret": SETTINGS.client_secret,
                },
            )
        ).json()["access_token"]
        client.headers["Authorization"] = f"Bearer {token}"

        batches = [
            [
                {"email": f"user{r}-{i}@example.com", "firstName": "F", "customerId": f"C{r}-{i}"}
                for i in range(BATCH)
            ]
            for r in range(ROUNDS)
        ]
        started = time.perf_counter()
        for batch in batches:
            response = await client.post("/rest/v1/leads.json", json={"input": batch})
            assert response.json()["success"] is True
        sync_elapsed = time.perf_counter() - started
        sync_rate = ROUNDS / sync_elapsed
        print(
            f"Sync Leads, {BATCH} records: {sync_rate:.1f} req/s "
            f"({1000 * sync_elapsed / ROUNDS:.2f} ms per call)"
        )

        started = time.perf_counter()
        for r in range(ROUNDS):
            values = ",".join(f"user{r}-{i}@example.com" for i in range(BATCH))
            response = await client.post(
                "/rest/v1/leads.json?_method=GET",
                data={"filterType": "email", "filterValues": values, "fields": "id,updatedAt"},
            )
            assert len(response.json()["result"]) == BATCH
        lookup_elapsed = time.perf_counter() - started
        lookup_rate = ROUNDS / lookup_elapsed
        print(
            f"Get Leads by email, {BATCH} values: {lookup_rate:.1f} req/s "
            f"({1000 * lookup_elapsed / ROUNDS:.2f} ms per call)"
        )
        print(
            json.dumps(
                {"sync_leads_per_s": round(sync_rate, 1), "lookups_per_s": round(lookup_rate, 1)}
            )
        )


if __name__ == "__main__":
    asyncio.run(main())
