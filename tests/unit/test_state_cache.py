"""The worker's state cache: valid for one commit sequence, bounded, refreshed by what a batch commits."""

from __future__ import annotations

from streams.domain.customer import CustomerState
from streams.state_cache import StateCache, lookup


def test_lookup_splits_cached_from_missing() -> None:
    found, missing = lookup({"a": 1, "b": 2}, ["a", "c", "b", "d"])
    assert found == {"a": 1, "b": 2}
    assert missing == ["c", "d"]


def test_the_cache_is_kept_only_for_the_sequence_it_was_stored_under() -> None:
    cache = StateCache(max_customers=10)
    ann = CustomerState("c-ann")
    cache.committed(5, {"email:ann": "c-ann"}, {"c-ann": ann}, [], [(("customer", "c-ann", "all", 0), {"x": 1})], [])
    cache.check(5)
    assert cache.identities == {"email:ann": "c-ann"} and cache.customers["c-ann"] is ann
    cache.check(6)  # another worker committed in between
    assert not cache.identities and not cache.customers and not cache.cells and cache.sequence is None


def test_removed_customers_and_cells_go_and_the_oldest_are_evicted() -> None:
    cache = StateCache(max_customers=2)
    states = {f"c-{i}": CustomerState(f"c-{i}") for i in range(4)}
    cache.committed(1, {}, {"c-0": states["c-0"], "c-1": states["c-1"]}, [], [(("customer", "c-0", "all", 0), {})], [])
    cache.committed(2, {}, {"c-2": states["c-2"]}, ["c-1"], [], [("customer", "c-0", "all", 0)])
    assert list(cache.customers) == ["c-0", "c-2"]
    assert not cache.cells
    cache.committed(3, {}, {"c-3": states["c-3"]}, [], [], [])
    assert list(cache.customers) == ["c-2", "c-3"], "the customer stored first is evicted"
