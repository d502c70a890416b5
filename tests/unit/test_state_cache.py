"""The worker's state cache: valid for one commit sequence, bounded, refreshed by what a batch commits."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas.outputs import MetricScope
from sinks.contract import CellKey, StoredIdentity
from streams.domain.customer import CustomerState
from streams.state_cache import StateCache, lookup

DAY = datetime(2026, 3, 1, tzinfo=UTC)
ANN = StoredIdentity("c-ann", DAY, DAY)


def cell(customer_id: str) -> CellKey:
    return CellKey(MetricScope.CUSTOMER, customer_id, "all", 0)


def test_lookup_splits_cached_from_missing() -> None:
    found, missing = lookup({"a": 1, "b": 2}, ["a", "c", "b", "d"])
    assert found == {"a": 1, "b": 2}
    assert missing == ["c", "d"]


def test_the_cache_is_kept_only_for_the_sequence_it_was_stored_under() -> None:
    cache = StateCache(max_customers=10)
    ann = CustomerState("c-ann")
    cache.committed(5, [("email:ann", ANN)], {"c-ann": ann}, [], [(cell("c-ann"), {"x": 1})], [], {})
    cache.check(5)
    assert cache.identities == {"email:ann": ANN} and cache.customers["c-ann"] is ann
    cache.check(6)  # another worker committed in between
    assert not cache.identities and not cache.customers and not cache.cells and cache.sequence is None


def test_removed_customers_and_cells_go_and_the_oldest_are_evicted() -> None:
    cache = StateCache(max_customers=2)
    states = {f"c-{i}": CustomerState(f"c-{i}") for i in range(4)}
    cache.committed(1, [], {"c-0": states["c-0"], "c-1": states["c-1"]}, [], [(cell("c-0"), {})], [], {})
    cache.committed(2, [], {"c-2": states["c-2"]}, ["c-1"], [], [cell("c-0")], {})
    assert list(cache.customers) == ["c-0", "c-2"]
    assert not cache.cells
    cache.committed(3, [], {"c-3": states["c-3"]}, [], [], [], {})
    assert list(cache.customers) == ["c-2", "c-3"], "the customer stored first is evicted"


def test_a_key_a_merge_re_pointed_without_reading_it_is_forgotten() -> None:
    # The batch knows the key's new customer but not its stored row: a cached row of the old customer would send
    # the next batch to a customer that no longer exists.
    cache = StateCache(max_customers=10)
    cache.committed(1, [("email:ann", ANN)], {}, [], [], [], {})
    cache.committed(1, [("email:ann", None), ("phone:1", StoredIdentity("c-bob", DAY, DAY))], {}, ["c-ann"], [], [], {})
    assert cache.identities == {"phone:1": StoredIdentity("c-bob", DAY, DAY)}
