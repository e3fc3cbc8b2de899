"""In-memory caches bounded by the bytes they hold, never by a count of entries.

A count says nothing about memory when callers choose what is cached: 4,096 entries of one
request's memberships can hold gigabytes. `BytesBoundedCache` counts each entry's key and value
with a size function and forgets the least recently used entries once the total passes its bound.
(cachetools' `LRUCache(getsizeof=...)` sizes values only; the keys here are as large as the
values.)
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["BytesBoundedCache", "deep_size"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_CONTAINERS = (tuple, list, set, frozenset)


def deep_size(*values: object) -> int:
    """The bytes `values` hold: each object and, for tuples, lists and sets, every item (nested
    containers too). None and small shared objects count as what `sys.getsizeof` says."""
    total = 0
    pending = list(values)
    while pending:
        value = pending.pop()
        total += sys.getsizeof(value)
        if isinstance(value, _CONTAINERS):
            pending.extend(value)
    return total


class BytesBoundedCache(Generic[K, V]):
    """A least-recently-used cache whose entries (keys and values, as `size` counts them) add up
    to at most `max_bytes`. An entry larger than the whole bound is not kept.

    With `evictable`, only values it accepts are ever forgotten (state still in use, such as a
    rate limiter with calls in flight, stays); while every entry is in use the cache may hold
    more than `max_bytes`, and the next `put` forgets what has come to rest since."""

    __slots__ = ("_entries", "_evictable", "_max_bytes", "_size", "nbytes")

    def __init__(
        self,
        max_bytes: int,
        size: Callable[[K, V], int],
        *,
        evictable: Callable[[V], bool] | None = None,
    ) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        self._max_bytes = max_bytes
        self._size = size
        self._evictable = evictable
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self.nbytes = 0
        """The bytes the cache holds now, as `size` counted them."""

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def lookup(self, key: K) -> tuple[bool, V | None]:
        """(True, value) when `key` is cached (it becomes the most recently used), else
        (False, None): a cached value may itself be None."""
        found = self._entries.get(key)
        if found is None:
            return False, None
        self._entries.move_to_end(key)
        return True, found[0]

    def put(self, key: K, value: V) -> None:
        """Remember `value` for `key`, forgetting the least recently used entries as needed."""
        self.discard(key)
        size = self._size(key, value)
        if size > self._max_bytes:
            return
        self._entries[key] = (value, size)
        self.nbytes += size
        if self._evictable is None:
            while self.nbytes > self._max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self.nbytes -= dropped
            return
        if self.nbytes <= self._max_bytes:
            return
        # Oldest first; entries still in use are passed over.
        for old, (held, _) in list(self._entries.items()):
            if old != key and self._evictable(held):
                self.discard(old)
                if self.nbytes <= self._max_bytes:
                    return

    def items(self) -> list[tuple[K, V]]:
        """Every entry, least recently used first (their use is not refreshed)."""
        return [(key, value) for key, (value, _) in self._entries.items()]

    def discard(self, key: K) -> None:
        found = self._entries.pop(key, None)
        if found is not None:
            self.nbytes -= found[1]

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0
