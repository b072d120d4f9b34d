"""The stored Responses: a byte budget, a quota per key, least recently used first, never another key's."""

import pytest

from tuneserve.server.errors import NotFoundError
from tuneserve.server.responses import ResponseStore, Stored


def stored(owner: str, size: int) -> Stored:
    return Stored(owner, {"id": "x", "text": "a" * size}, [])


def test_a_key_past_its_quota_loses_its_own_oldest_never_another_keys():
    store = ResponseStore(max_bytes=100_000, max_bytes_per_owner=10_000)
    store.put("b-1", stored("b", 1_000))
    for i in range(100):  # 100 x 1 kB from key a: ten times its quota
        store.put(f"a-{i}", stored("a", 1_000))
    assert store.get("b-1", "b").owner == "b"
    assert store.num_bytes_by_owner["a"] <= 10_000
    store.get("a-99", "a")
    with pytest.raises(NotFoundError):
        store.get("a-0", "a")


def test_reading_a_response_keeps_it_longer():
    store = ResponseStore(max_bytes=100_000, max_bytes_per_owner=3_500)
    for i in range(3):
        store.put(f"a-{i}", stored("a", 1_000))
    store.get("a-0", "a")  # now the most recently used
    store.put("a-3", stored("a", 1_000))
    store.get("a-0", "a")
    with pytest.raises(NotFoundError):
        store.get("a-1", "a")


def test_past_the_whole_budget_the_largest_holder_gives_way_and_oversized_responses_are_not_kept():
    store = ResponseStore(max_bytes=5_000, max_bytes_per_owner=4_000)
    store.put("b-1", stored("b", 1_000))
    for i in range(3):
        store.put(f"a-{i}", stored("a", 1_000))
    store.put("c-1", stored("c", 1_000))
    assert store.num_bytes <= 5_000 and store.get("b-1", "b") and store.get("c-1", "c")
    assert not store.put("huge", stored("a", 50_000))
    with pytest.raises(NotFoundError):
        store.get("huge", "a")


def test_another_keys_response_does_not_exist_for_you():
    store = ResponseStore()
    store.put("a-1", stored("a", 10))
    with pytest.raises(NotFoundError):
        store.get("a-1", "b")
