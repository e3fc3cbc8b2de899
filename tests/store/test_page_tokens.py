"""Forged page tokens: every token the store did not issue for this very listing is refused with
InvalidPageToken (INVALID_ARGUMENT naming `page_token`), whatever it decodes to."""

from __future__ import annotations

import base64

import pytest

from service.store.base import InvalidPageToken
from service.store.rows import encode_token
from service.store.sql import Store
from tests.store.conftest import INSTANCE, START, activated, append, new_destination, unpack, update


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# Each decodes as base64; most decode as JSON of the shape a real token has.
FORGED_DESTINATIONS = {
    "empty position": b64(b'{"l":"destinations","p":[]}'),
    "short position": b64(b'{"l":"destinations","p":[5]}'),
    "long position": b64(b'{"l":"destinations","p":[5,"dst_a","x"]}'),
    "types swapped": b64(b'{"l":"destinations","p":["dst_a",5]}'),
    "time as text": b64(b'{"l":"destinations","p":["5","dst_a"]}'),
    "id as number": b64(b'{"l":"destinations","p":[5,7]}'),
    "time as float": b64(b'{"l":"destinations","p":[5.5,"dst_a"]}'),
    "time as bool": b64(b'{"l":"destinations","p":[true,"dst_a"]}'),
    "time NaN": b64(b'{"l":"destinations","p":[NaN,"dst_a"]}'),
    "huge integer": b64(b'{"l":"destinations","p":[' + b"9" * 40 + b',"dst_a"]}'),
    "just past int64": b64(b'{"l":"destinations","p":[9223372036854775808,"dst_a"]}'),
    "negative": b64(b'{"l":"destinations","p":[-1,"dst_a"]}'),
    "nested": b64(b'{"l":"destinations","p":[[1],{"a":1}]}'),
    "lone surrogate": b64(b'{"l":"destinations","p":[5,"\\ud800"]}'),
    "NUL in id": b64(b'{"l":"destinations","p":[5,"dst_\\u0000"]}'),
    "null position": b64(b'{"l":"destinations","p":null}'),
    "list": b64(b'["destinations",[5,"dst_a"]]'),
    "deep nesting": b64(b"[" * 100_000),
    "non-UTF-8": b64(b'{"l":"destinations","p":[5,"\xff\xfe"]}'),
    "UTF-16": b64('{"l":"destinations","p":[5,"dst_a"]}'.encode("utf-16")),
    "outcomes listing": b64(b'{"l":"outcomes","p":[5]}'),
    "unscoped": b64(b'{"l":"destinations","p":[5,"dst_a"]}'),
    "not base64": "not a token!",
    "huge": "A" * 100_000,
}
FORGED_OUTCOMES = {
    "empty position": b64(b'{"l":"outcomes","p":[]}'),
    "text id": b64(b'{"l":"outcomes","p":["5"]}'),
    "float id": b64(b'{"l":"outcomes","p":[5.0]}'),
    "huge integer": b64(b'{"l":"outcomes","p":[' + b"9" * 400 + b"]}"),
    "negative": b64(b'{"l":"outcomes","p":[-5]}'),
    "Infinity": b64(b'{"l":"outcomes","p":[Infinity]}'),
    "destinations listing": b64(b'{"l":"destinations","p":[5,"dst_a"]}'),
    "unscoped": b64(b'{"l":"outcomes","p":[5]}'),
    "NUL": b64(b"\x00"),
}


@pytest.mark.parametrize("token", FORGED_DESTINATIONS.values(), ids=FORGED_DESTINATIONS.keys())
async def test_forged_destinations_token_is_refused(store: Store, token: str) -> None:
    await store.create_destination(new_destination())
    with pytest.raises(InvalidPageToken):
        await store.list_destinations("acme", page_token=token)


@pytest.mark.parametrize("token", FORGED_OUTCOMES.values(), ids=FORGED_OUTCOMES.keys())
async def test_forged_outcomes_token_is_refused(store: Store, token: str) -> None:
    destination = await store.create_destination(new_destination())
    with pytest.raises(InvalidPageToken):
        await store.list_outcomes(destination.id, page_token=token)


async def destinations_token(store: Store, tenant: str) -> str:
    for n in range(2):
        await store.create_destination(new_destination(tenant=tenant, name=f"d{n}"))
    token = (await store.list_destinations(tenant, page_size=1)).next_page_token
    assert token
    return token


async def test_a_token_of_another_tenant_is_refused(store: Store) -> None:
    theirs = await destinations_token(store, "globex")
    ours = await destinations_token(store, "acme")

    with pytest.raises(InvalidPageToken):
        await store.list_destinations("acme", page_token=theirs)
    assert len((await store.list_destinations("acme", page_token=ours)).items) == 1


@pytest.mark.parametrize(
    "tamper",
    [
        lambda token: token + "=",
        lambda token: token + "==",
        lambda token: token[:4] + "\n" + token[4:],
        lambda token: token[:4] + "!" + token[4:],
        lambda token: token.replace("-", "+").replace("_", "/") + "+/",
        lambda token: " " + token,
    ],
    ids=["padding", "double padding", "newline", "junk character", "standard alphabet", "space"],
)
async def test_a_real_token_written_differently_is_refused(store: Store, tamper: object) -> None:
    token = await destinations_token(store, "acme")
    assert callable(tamper)
    with pytest.raises(InvalidPageToken):
        await store.list_destinations("acme", page_token=tamper(token))


async def test_an_outcomes_token_of_another_destination_or_filter_is_refused(store: Store) -> None:
    first = await store.create_destination(new_destination(name="first"))
    second = await store.create_destination(new_destination(name="second"))
    for destination_id in (first.id, second.id):
        await append(store, destination_id, INSTANCE, [update(n) for n in range(3)])
    await unpack(store, INSTANCE)
    entries = await store.claim_due(INSTANCE, 100, START)
    await store.retire(entries, [activated(entry) for entry in entries])
    token = (await store.list_outcomes(first.id, page_size=1)).next_page_token
    assert token

    with pytest.raises(InvalidPageToken):
        await store.list_outcomes(second.id, page_token=token)
    with pytest.raises(InvalidPageToken):
        await store.list_outcomes(first.id, profile_id="p1", page_token=token)
    assert len((await store.list_outcomes(first.id, page_token=token)).items) == 2


@pytest.mark.parametrize(
    "position",
    [[5, "dst_\x00"], [5, "x" * 300], [-1, "dst_a"], [2**63, "dst_a"], ["5", "dst_a"], [5]],
    ids=["NUL", "long id", "negative", "past int64", "text time", "short"],
)
async def test_a_token_forged_in_the_issued_format_is_refused(
    store: Store, position: list[object]
) -> None:
    """The token format is no secret: a token written exactly as the store writes one, for
    the caller's own listing, is refused when its position is not one the store issues."""
    await store.create_destination(new_destination())
    forged = encode_token("destinations", ["acme"], list(position))
    with pytest.raises(InvalidPageToken):
        await store.list_destinations("acme", page_token=forged)


@pytest.mark.parametrize("position", [[-5], [2**70], ["5"], [None]])
async def test_an_outcomes_token_forged_in_the_issued_format_is_refused(
    store: Store, position: list[object]
) -> None:
    destination = await store.create_destination(new_destination())
    forged = encode_token("outcomes", [destination.id, None, None], list(position))
    with pytest.raises(InvalidPageToken):
        await store.list_outcomes(destination.id, page_token=forged)
