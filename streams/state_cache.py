"""The worker's copy of the state it last committed: identity rows, customer states and metric cells.

The results database stays the source of truth; the cache saves reading back, and decoding, what this worker
wrote itself, which was about a tenth of a batch's time. It is exact only while nobody else writes what it holds:

- on SQLite, whose transaction holds the whole database, every batch checks it against the group's commit
  sequence (``ResultSink.clock_in``): when another writer, or this worker before a restart, committed since, the
  cache is dropped and filled again from SQL as batches need it;
- on PostgreSQL, where workers commit concurrently, a cached customer state is used only if its version is the
  one the batch reads when it locks the customer's row, and an identity key only while its customer's row is
  there (``BatchProcessor._lock_customers``); cached metric cells are dropped when another batch committed since
  this worker's last (checked once the batch holds its customers, whose cells it merges then, and again under the
  clock's lock, for the channel and overall cells).

A batch that fails drops it all, because the stitching engine changes cached customer states in place before
the transaction commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import islice
from typing import TypeVar

from sinks.contract import StoredIdentity
from streams.domain.aggregate import CellKey
from streams.domain.customer import CustomerState

K = TypeVar("K")
V = TypeVar("V")


class _Bounded(dict[K, V]):
    """A dict that forgets its oldest entries beyond ``limit`` (dicts keep insertion order).

    Entries keep the place they were first stored at: refreshing the order on every batch cost more than an
    occasional reload of an evicted entry from the database.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def store(self, items: Iterable[tuple[K, V]]) -> None:
        """Insert or update entries, then evict the oldest beyond the limit."""
        self.update(items)
        excess = len(self) - self.limit
        if excess > 0:
            for key in list(islice(self, excess)):
                del self[key]


def lookup(cache: Mapping[K, V], wanted: Iterable[K]) -> tuple[dict[K, V], list[K]]:
    """The cached entries of ``wanted``, and the keys that must be read from the database."""
    found: dict[K, V] = {}
    missing: list[K] = []
    for key in wanted:
        value = cache.get(key)
        if value is None:
            missing.append(key)
        else:
            found[key] = value
    return found, missing


class StateCache:
    """What this worker committed last, valid for one value of the group's commit sequence."""

    def __init__(self, max_customers: int) -> None:
        # Identity keys and cells are small; customers (timelines) are what the limit is about.
        self.identities: _Bounded[str, StoredIdentity] = _Bounded(4 * max_customers)
        self.customers: _Bounded[str, CustomerState] = _Bounded(max_customers)
        self.cells: _Bounded[CellKey, dict[str, float]] = _Bounded(2 * max_customers)
        #: The stored version of each cached customer state (PostgreSQL).
        self.versions: _Bounded[str, int] = _Bounded(max_customers)
        self.sequence: int | None = None

    def clear(self) -> None:
        """Forget everything (another writer committed, or a batch failed)."""
        self.identities.clear()
        self.customers.clear()
        self.cells.clear()
        self.versions.clear()
        self.sequence = None

    def check(self, sequence: int) -> None:
        """Keep the cache only if ``sequence`` is the one it was stored under."""
        if sequence != self.sequence:
            self.clear()

    def committed(
        self,
        sequence: int,
        identities: Iterable[tuple[str, StoredIdentity | None]],
        customers: Mapping[str, CustomerState],
        removed_customers: Iterable[str],
        cells: Iterable[tuple[CellKey, dict[str, float]]],
        removed_cells: Iterable[CellKey],
        versions: Mapping[str, int],
    ) -> None:
        """Record what a batch committed under ``sequence``, with the stored ``versions`` of its customers."""
        for customer_id in removed_customers:
            self.customers.pop(customer_id, None)
            self.versions.pop(customer_id, None)
        for cell in removed_cells:
            self.cells.pop(cell, None)
        known = []
        for key, row in identities:
            if row is None:
                self.identities.pop(key, None)
            else:
                known.append((key, row))
        self.identities.store(known)
        self.customers.store(customers.items())
        self.versions.store(versions.items())
        self.cells.store(cells)
        self.sequence = sequence
