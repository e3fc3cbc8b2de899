"""Encryption of secrets at rest (Marketo client secrets, webhook secrets).

A `SecretBox` seals text with Fernet (AES-128-CBC + HMAC-SHA256, authenticated). Its key comes
from a setting or, when none is set, from `<data_dir>/secret.key`, generated on first start with
owner-only permissions (0600). Neither keys nor secrets ever appear in a repr, log line or error.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

__all__ = ["KEY_FILE_NAME", "SecretBox", "SecretKeyError", "owner_only_directory"]

KEY_FILE_NAME = "secret.key"


class SecretKeyError(Exception):
    """A sealed secret cannot be opened, or a key is unusable."""


class SecretBox:
    """Seals and opens secrets with one key."""

    __slots__ = ("_fernet",)

    def __init__(self, key: bytes | str) -> None:
        """`key`: a Fernet key (32 bytes, URL-safe base64), e.g. from `SecretBox.generate_key()`."""
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError):
            # The key is deliberately not part of the message.
            raise SecretKeyError(
                "the secret key is not a valid Fernet key (32 bytes, URL-safe base64)"
            ) from None

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"

    @staticmethod
    def generate_key() -> bytes:
        """A new random key."""
        return Fernet.generate_key()

    @classmethod
    def from_settings(cls, key: str | None, data_dir: Path) -> SecretBox:
        """A box for the configured key, else for `<data_dir>/secret.key` (created if missing)."""
        if key:
            return cls(key)
        return cls(load_or_create_key(data_dir / KEY_FILE_NAME))

    def seal(self, secret: str) -> bytes:
        """Encrypt `secret`."""
        return self._fernet.encrypt(secret.encode("utf-8"))

    def open(self, sealed: bytes) -> str:
        """Decrypt what `seal` produced; SecretKeyError when the key is wrong or data damaged."""
        try:
            return self._fernet.decrypt(sealed).decode("utf-8")
        except InvalidToken:
            raise SecretKeyError(
                "cannot decrypt a stored secret: the secret key differs from the one it was "
                "sealed with, or the data is damaged"
            ) from None


def owner_only_directory(path: Path) -> None:
    """Create the directory `path` owner-only (0700) if it is missing; an existing one is
    left as it is (it may be a mount point the operator set up)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # mode= is masked by the umask, which can only take bits away from 0700.
    path.mkdir(mode=0o700, exist_ok=True)


def load_or_create_key(path: Path) -> bytes:
    """Read the key file, or create it (0600, exclusively) with a new key."""
    owner_only_directory(path.parent)
    try:
        # O_EXCL: two processes starting at once cannot both write a key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise SecretKeyError(
                f"{path} is readable by others (mode {mode:o}); make it owner-only (chmod 600)"
            ) from None
        return path.read_bytes().strip()
    key = Fernet.generate_key()
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key
