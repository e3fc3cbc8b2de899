"""The secret box, and secrets at rest in the store."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from service.store.secrets import KEY_FILE_NAME, SecretBox, SecretKeyError
from service.store.sqlite import SqliteStore
from tests.store.conftest import CLIENT_SECRET, WEBHOOK_SECRET, FakeClock, new_destination


def test_round_trip() -> None:
    box = SecretBox(SecretBox.generate_key())

    sealed = box.seal("pässword-🔑")

    assert b"p\xc3\xa4ssword" not in sealed
    assert box.open(sealed) == "pässword-🔑"
    assert box.seal("same") != box.seal("same")  # random IV


def test_key_file_is_created_owner_only_and_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"

    first = SecretBox.from_settings(None, data_dir)
    key_file = data_dir / KEY_FILE_NAME
    second = SecretBox.from_settings(None, data_dir)

    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert second.open(first.seal("x")) == "x"


def test_configured_key_wins_over_the_key_file(tmp_path: Path) -> None:
    key = SecretBox.generate_key()

    box = SecretBox.from_settings(key.decode(), tmp_path)

    assert not (tmp_path / KEY_FILE_NAME).exists()
    assert SecretBox(key).open(box.seal("x")) == "x"


def test_readable_key_file_is_refused(tmp_path: Path) -> None:
    SecretBox.from_settings(None, tmp_path)
    (tmp_path / KEY_FILE_NAME).chmod(0o644)

    with pytest.raises(SecretKeyError, match="chmod 600"):
        SecretBox.from_settings(None, tmp_path)


def test_wrong_key_fails_clearly() -> None:
    sealed = SecretBox(SecretBox.generate_key()).seal("secret")

    with pytest.raises(SecretKeyError, match="secret key differs"):
        SecretBox(SecretBox.generate_key()).open(sealed)


def test_invalid_key_does_not_echo_it() -> None:
    with pytest.raises(SecretKeyError) as caught:
        SecretBox("not-a-valid-key-material")

    assert "not-a-valid-key-material" not in str(caught.value)


def test_repr_hides_the_key() -> None:
    key = SecretBox.generate_key()

    assert key.decode() not in repr(SecretBox(key))


async def test_secrets_are_not_in_the_database_files(
    tmp_path: Path, box: SecretBox, clock: FakeClock
) -> None:
    path = tmp_path / "store.db"
    store = await SqliteStore.open(path, box, clock=clock)
    created = await store.create_destination(new_destination())
    assert (
        await store.get_destination(created.id, tenant="acme")
    ).spec.connection.client_secret == CLIENT_SECRET

    def database_bytes() -> bytes:
        return b"".join(p.read_bytes() for p in tmp_path.glob("store.db*"))

    # While open the rows may sit in the WAL; after close they are checkpointed into the file.
    for _ in range(2):
        content = database_bytes()
        assert created.id.encode() in content  # the search does see the stored rows
        assert CLIENT_SECRET.encode() not in content
        assert WEBHOOK_SECRET.encode() not in content
        await store.close()


async def test_store_opened_with_another_key_fails_clearly(
    tmp_path: Path, box: SecretBox, clock: FakeClock
) -> None:
    path = tmp_path / "store.db"
    async with await SqliteStore.open(path, box, clock=clock) as store:
        created = await store.create_destination(new_destination())

    async with await SqliteStore.open(
        path, SecretBox(SecretBox.generate_key()), clock=clock
    ) as other:
        with pytest.raises(SecretKeyError):
            await other.get_destination(created.id, tenant="acme")
