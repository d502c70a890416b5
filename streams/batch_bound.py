"""How many events the worker's next batch may take: small while it keeps up, bigger while it catches up.

A batch's rows land all over the tables' indexes (hashed event ids, customer ids, identifier keys), so the pages a
commit writes grow more slowly than its events: bigger batches cost less CPU per event (README, Scaling). But
every event of a batch waits for its commit, so while the worker keeps up, a bigger bound only lengthens the tail
latency after a hiccup (a checkpoint, a pause) whose backlog fills one big batch instead of two small ones. While
it is far behind (a history load, a restart, catching up after an outage) its input waits seconds to minutes
anyway, and finishing the backlog sooner is what shortens that wait: then batches may grow.
"""

from __future__ import annotations

#: How much of the running sums each applied batch keeps (the rest is the new batch's).
_KEEP = 0.7


class BatchBound:
    """The most events one batch takes: ``normal``, or ``behind`` while the input waiting for the worker would take
    more than ``behind_s`` seconds to apply, as estimated from its recent batches: events per record, and events
    per second of applying, each a ratio of decaying sums (so a big batch weighs more than a small one)."""

    def __init__(self, normal: int, behind: int, behind_s: float) -> None:
        self.normal = normal
        self.behind = max(normal, behind)
        self.behind_s = behind_s
        self._records = self._held = 0.0  # input records applied, and the events they held
        self._applied = self._seconds = 0.0  # events decoded and applied (not redeliveries), and the time it took

    def observe(self, records: int, held: int, applied: int, seconds: float) -> None:
        """Learn from a batch of ``records`` input records holding ``held`` events, of which it applied ``applied``
        (redelivered records are skipped) in ``seconds``."""
        if records > 0:
            self._records = _KEEP * self._records + records
            self._held = _KEEP * self._held + held
        if applied > 0 and seconds > 0:
            self._applied = _KEEP * self._applied + applied
            self._seconds = _KEEP * self._seconds + seconds

    def seconds_behind(self, waiting_records: int) -> float | None:
        """How long the worker would take to apply ``waiting_records`` input records, by the estimates; None until
        a batch was measured."""
        if not self._records or not self._seconds:
            return None
        return waiting_records * (self._held / self._records) / (self._applied / self._seconds)

    def limit(self, waiting_records: int) -> int:
        """The bound of the next batch, with ``waiting_records`` input records not applied yet (``normal`` until a
        batch was measured)."""
        behind = self.seconds_behind(waiting_records)
        return self.behind if behind is not None and behind > self.behind_s else self.normal
