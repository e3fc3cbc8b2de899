"""`service.caches.BytesBoundedCache`: bounded by what its keys and values hold."""

from __future__ import annotations

import sys

import pytest

from service.caches import BytesBoundedCache, deep_size


def by_length(key: str, value: str | None) -> int:
    return len(key) + len(value or "")


def test_the_least_recently_used_entries_go_once_the_bytes_pass_the_bound() -> None:
    cache: BytesBoundedCache[str, str | None] = BytesBoundedCache(10, by_length)
    cache.put("a", "1111")  # 5 bytes
    cache.put("b", "2222")  # 10
    assert cache.lookup("a") == (True, "1111")  # "b" is now the least recently used
    cache.put("c", "33")  # 13 > 10: "b" goes
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.nbytes == 8 and len(cache) == 2


def test_keys_count_as_much_as_values() -> None:
    cache: BytesBoundedCache[str, str | None] = BytesBoundedCache(10, by_length)
    cache.put("k" * 8, None)
    cache.put("j" * 8, None)
    assert len(cache) == 1 and cache.nbytes == 8


def test_a_cached_none_is_told_apart_from_a_miss() -> None:
    cache: BytesBoundedCache[str, str | None] = BytesBoundedCache(10, by_length)
    cache.put("a", None)
    assert cache.lookup("a") == (True, None)
    assert cache.lookup("b") == (False, None)


def test_an_entry_larger_than_the_bound_is_not_kept_and_pushes_nothing_out() -> None:
    cache: BytesBoundedCache[str, str | None] = BytesBoundedCache(10, by_length)
    cache.put("a", "1")
    cache.put("b", "x" * 20)
    assert "b" not in cache and "a" in cache and cache.nbytes == 2


def test_replacing_a_value_counts_only_the_new_one() -> None:
    cache: BytesBoundedCache[str, str | None] = BytesBoundedCache(10, by_length)
    cache.put("a", "12345")
    cache.put("a", "1")
    assert cache.nbytes == 2 and cache.lookup("a") == (True, "1")


def test_a_negative_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        BytesBoundedCache(-1, by_length)


def test_deep_size_counts_each_container_and_every_item() -> None:
    inner = frozenset({"abc"})
    items = ("d" * 100, inner)
    expected = (
        sys.getsizeof(items)
        + sys.getsizeof("d" * 100)
        + sys.getsizeof(inner)
        + sys.getsizeof("abc")
    )
    assert deep_size(items) == expected
    assert deep_size(items, None) == expected + sys.getsizeof(None)
    assert deep_size("x" * 1000) > 1000


def test_entries_in_use_are_passed_over_and_go_once_at_rest() -> None:
    in_use = {"a"}
    cache: BytesBoundedCache[str, str | None] = BytesBoundedCache(
        10, by_length, evictable=lambda value: value not in in_use
    )
    cache.put("1", "a")  # 2 bytes, in use
    cache.put("2", "bbbbbbb")  # 10 in all
    cache.put("3", "c")  # 12: "2" goes, "1" is passed over though older
    assert "1" in cache and "2" not in cache and "3" in cache
    cache.put("4", "dddddddd")  # 13: only "3" may go, the bound is passed while "1" is in use
    assert "1" in cache and "3" not in cache and cache.nbytes == 11
    in_use.clear()
    cache.put("5", "e")  # 13: "1" has come to rest and goes, then "4" (still 11)
    assert list(cache_keys(cache)) == ["5"] and cache.nbytes == 2


def cache_keys(cache: BytesBoundedCache[str, str | None]) -> list[str]:
    return [key for key in ("1", "2", "3", "4", "5") if key in cache]
