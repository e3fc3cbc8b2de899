"""Authentication and transport as Marketo has them in 2026: header-only tokens, no `//` paths,
gzip above 1 KB.

Sources: https://experienceleague.adobe.com/en/docs/marketo-developer/marketo/rest/authentication
(access_token parameter removed in 2026; same token, remaining lifetime),
https://experienceleague.adobe.com/en/docs/marketo-developer/marketo/rest/performance
(payloads under 1024 bytes are not compressed, bulk APIs never are), and the REST overview's
deprecation of `//` in gateway URLs (reference S2).
"""

from __future__ import annotations

import gzip

import httpx

from sandbox import ManualClock

from .conftest import error_code, fetch_token, seed


async def test_query_form_and_multipart_token_refused_by_default(raw: httpx.AsyncClient) -> None:
    token = await fetch_token(raw)
    query = await raw.get("/rest/v1/leads/describe.json", params={"access_token": token})
    assert error_code(query.json()) == "601"
    form = await raw.post(
        "/rest/v1/lists/1/leads.json", params={"_method": "GET"}, data={"access_token": token}
    )
    assert error_code(form.json()) == "601"
    multipart = await raw.post(
        "/bulk/v1/leads.json",
        data={"access_token": token, "format": "csv"},
        files={"file": ("a.csv", b"email\na@example.com\n", "text/csv")},
    )
    assert error_code(multipart.json()) == "601"
    # A refused call is not counted (601 is an uncounted code).
    assert (await raw.get("/_sandbox/calls")).json()["counted"] == 0


async def test_bearer_header_wins_over_a_stray_parameter(raw: httpx.AsyncClient) -> None:
    token = await fetch_token(raw)
    response = await raw.get(
        "/rest/v1/leads/partitions.json",
        params={"access_token": "whatever"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.json()["success"] is True


async def test_double_slash_path_refused(client: httpx.AsyncClient) -> None:
    for path in ("//rest/v1/leads/partitions.json", "/rest/v1//leads/partitions.json"):
        body = (await client.get(path)).json()
        assert error_code(body) == "610"
    assert (await client.get("/rest/v1/leads/partitions.json")).json()["success"] is True


async def test_gzip_only_above_one_kilobyte_and_when_accepted(client: httpx.AsyncClient) -> None:
    big = await client.get("/rest/v1/leads/describe.json", headers={"Accept-Encoding": "gzip"})
    assert big.headers["content-encoding"] == "gzip"
    assert big.json()["success"] is True
    assert int(big.headers["content-length"]) < len(big.content)
    small = await client.get("/rest/v1/leads/partitions.json", headers={"Accept-Encoding": "gzip"})
    assert len(small.content) < 1024
    assert "content-encoding" not in small.headers
    plain = await client.get(
        "/rest/v1/leads/describe.json", headers={"Accept-Encoding": "identity"}
    )
    assert "content-encoding" not in plain.headers
    assert plain.json() == big.json() | {"requestId": plain.json()["requestId"]}


async def test_bulk_files_never_compressed(client: httpx.AsyncClient, clock: ManualClock) -> None:
    rows = "".join(f"not-an-email-{n},x\n" for n in range(200))
    response = await client.post(
        "/bulk/v1/leads.json",
        data={"format": "csv"},
        files={"file": ("a.csv", f"email,firstName\n{rows}".encode(), "text/csv")},
    )
    batch = response.json()["result"][0]["batchId"]
    clock.advance(10)
    failures = await client.get(
        f"/bulk/v1/leads/batch/{batch}/failures.json", headers={"Accept-Encoding": "gzip"}
    )
    assert len(failures.content) > 1024
    assert "content-encoding" not in failures.headers
    assert failures.text.count("\n") == 201


async def test_gzip_body_is_real_gzip(client: httpx.AsyncClient) -> None:
    await seed(client, *({"email": f"p{n}@example.com"} for n in range(40)))
    # httpx decodes transparently; ask for the raw stream to see the bytes on the wire.
    async with client.stream(
        "GET",
        "/rest/v1/leads.json",
        params={"filterType": "leadPartitionId", "filterValues": "1"},
        headers={"Accept-Encoding": "gzip"},
    ) as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert gzip.decompress(raw).startswith(b'{"requestId"')
