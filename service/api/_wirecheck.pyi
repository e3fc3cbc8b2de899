"""Sync's quick look at a request's updates, in C (service/api/_wirecheck.c)."""

def plain_updates(
    wire: bytes, latest_seconds: int, /
) -> tuple[str, str, int, list[int], list[tuple[int, tuple[str, ...]]]] | None: ...
