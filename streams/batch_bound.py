"""How many events the worker's next batch may take: small while it keeps up, bigger while it catches up.

A batch's rows land all over the tables' indexes (hashed event ids, customer ids, identifier keys), so the pages a
commit writes grow more slowly than its events: bigger batches cost less CPU per event (README, Scaling). But
every event of a batch waits for its commit, so while the worker keeps up, a bigger bound only lengthens the tail
latency after a hiccup (a checkpoint, a pause) whose backlog fills one big batch instead of two small ones. While
it is far behind (a history load, a restart, catching up after an outage) its input waits seconds to minutes
anyway, and finishing the backlog sooner is what lowers it: then batches may grow.
"""

from __future__ import annotations

#: Weight of the latest batch in the running estimates.
_ALPHA = 0.3


class BatchBound:
    """The most events one batch takes: ``normal``, or ``behind`` while the input waiting for the worker would take
    more than ``behind_s`` seconds to apply, as estimated from its recent batches (events per record, events per
    second of applying)."""

    def __init__(self, normal: int, behind: int, behind_s: float) -> None:
        self.normal = normal
        self.behind = max(normal, behind)
        self.behind_s = behind_s
        #: Running estimates; until a batch is seen, a record holds one event and a batch of ``normal`` events
        #: takes a second.
        self.events_per_record = 1.0
        self.events_per_s = float(normal)

    def observe(self, records: int, events: int, seconds: float) -> None:
        """Learn from an applied batch of ``records`` holding ``events``, applied in ``seconds``."""
        if records <= 0 or events <= 0 or seconds <= 0:
            return
        self.events_per_record += _ALPHA * (events / records - self.events_per_record)
        self.events_per_s += _ALPHA * (events / seconds - self.events_per_s)

    def seconds_behind(self, waiting_records: int) -> float:
        """How long the worker would take to apply ``waiting_records`` input records, by the estimates."""
        return waiting_records * self.events_per_record / self.events_per_s

    def limit(self, waiting_records: int) -> int:
        """The bound of the next batch, with ``waiting_records`` input records not applied yet."""
        return self.behind if self.seconds_behind(waiting_records) > self.behind_s else self.normal
