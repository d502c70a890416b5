"""One batch of input records through the whole domain, into one SQL transaction and one outbox row.

This is the worker's work without Faust: decode and validate events (``decoding``), skip what was already
applied, restore the history late events need, stitch identities and timelines, evaluate alerts, aggregate
metrics, follow event time per input partition, and commit it all with the input offsets (``process`` lists the
steps). Rows come from ``result_rows``, downstream records from ``result_records``; the sink behind
``sinks.contract.ResultSink`` reads and writes them. The Faust agent (streams/worker.py) only feeds batches (and,
between them, ticks of the wall clock) and publishes the outbox.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson

from config.settings import Settings
from config.topics import Topics
from schemas.deadletter import DeadLetter
from schemas.outputs import NEGATIVE_MOMENTS, Alert, MetricScope
from schemas.touchpoint import TouchpointEvent
from sinks.contract import BatchWrite, Clock, Contended, ParkedEvent, ResultSink, StoredIdentity
from streams.decoding import InRecord, dead_letter, decode_record, record_fingerprint
from streams.domain import event_time, experience_drops
from streams.domain.aggregate import AggregateResult, CellKey, MetricAggregator
from streams.domain.alerts import READ_TYPES, OpenIssueInfo, evaluate, overdue
from streams.domain.customer import MOMENTS, SURVEY, TYPE, CustomerState, T, is_kept, row_of, timeline_entry
from streams.domain.entry import Entry
from streams.domain.event_time import TopicPartition
from streams.domain.identity import EventKeys, KeptApart, repoint
from streams.domain.stitching import NO_CUSTOMER, BatchResult, ManualLink, Split, StateView, Stitcher
from streams.domain.suppression import Suppressions
from streams.downstream import Outputs
from streams.policies import Policies, suppression_salt
from streams.result_records import ResultRecords
from streams.result_rows import (
    alert_row,
    cell_row,
    customer_row,
    experience_alert_row,
    identity_rows,
    merge_row,
    overdue_at,
    removal_row,
    stitched_by,
    touchpoint_row,
)
from streams.state_cache import StateCache, lookup

log = logging.getLogger(__name__)

_ALERT_READ_TYPES = frozenset(t.value for t in READ_TYPES)
_NEGATIVE = frozenset(m.value for m in NEGATIVE_MOMENTS)

#: A parked event is taken by a later batch, which parks it again if its customer is still held; a batch taking one
#: parked this many times waits for the lock instead, so that no event waits for ever under steady contention.
#: (6 instead of 3 in make bench's two-worker run: fewer waits, but 65% more parkings and 0.71x instead of about
#: 0.85x one worker's events per CPU-second.)
PATIENT_AFTER = 3
#: Most parked events one batch takes (the rest wait for the next): a batch's memory stays bounded.
UNPARK_LIMIT = 10_000

__all__ = ["BatchProcessor", "BatchReport", "InRecord", "record_fingerprint"]


class _AppliedElsewhere(Exception):
    """Another worker committed offsets of a partition in the batch after it was decoded."""


@dataclass
class BatchReport:
    """What happened to one batch, for metrics and logs."""

    events: list[TouchpointEvent] = field(default_factory=list)
    skipped_records: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    result: BatchResult | None = None
    #: Events applied although older than the watermark when the batch began.
    late_accepted: int = 0
    #: Customers whose history was read back from the touchpoints table for this batch's late events.
    restored: int = 0
    #: Partitions whose records arrived past a gap: the worker seeks each back to the offset it expects.
    gaps: dict[tuple[str, int], int] = field(default_factory=dict)
    #: Input partitions the batch read new records of (counted once per partition, not per record).
    partitions: int = 0
    alerts: int = 0
    #: Splits made by hand the batch refused (their customer over ``CXSTREAM_SPLIT_MAX_TOUCHPOINTS``).
    splits_refused: int = 0
    #: Experience-drop alerts whose status the batch changed (fired, resolved, fired again).
    experience_alerts: int = 0
    #: The group's watermark after the batch.
    watermark: datetime | None = None
    outbox_id: int | None = None
    outputs: Outputs = field(default_factory=Outputs)
    #: ``outputs`` as the outbox row holds them (``Outputs.encode``), when the batch committed any.
    outbox: bytes | None = None
    applied_at: datetime | None = None
    committed_at: datetime | None = None
    #: Seconds the batch spent taking each lock (``partitions``, ``customers``: their rows, ``clock``: the group's):
    #: waiting for other workers' batches, mostly.
    lock_wait_s: dict[str, float] = field(default_factory=dict)

    def waited(self, lock: str, since: float) -> None:
        """Count the time from ``since`` (``time.perf_counter``) as spent taking ``lock``."""
        self.lock_wait_s[lock] = self.lock_wait_s.get(lock, 0.0) + time.perf_counter() - since

    #: Times the batch was applied again after contending with another worker's (``sinks.contract.Contended``).
    retries: int = 0
    #: Events dropped because they carry an erased person's identifier (``streams.erasure``).
    suppressed: int = 0
    #: Events parked: their customer was held by another worker's batch (``BatchProcessor._park``); and parked
    #: events of earlier batches this one took (applied, or parked again).
    parked: list[ParkedEvent] = field(default_factory=list)
    unparked: int = 0

    @property
    def rejected(self) -> Counter[str]:
        """Dead letters of the batch by reason."""
        return Counter(dead.reason for dead in self.dead_letters)


@dataclass
class _Read:
    """What decoding a batch's records found, per input partition."""

    #: Highest offset read (and so applied by the batch).
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    #: Greatest event time (epoch seconds) among the valid events read.
    latest: dict[TopicPartition, float] = field(default_factory=dict)
    #: Digest of the record at the highest offset.
    fingerprints: dict[TopicPartition, str] = field(default_factory=dict)
    #: Where each event was read (topic, partition, offset), by ``id()`` of the event (``BatchProcessor._park``
    #: keeps two copies of one event in the order they were read).
    read_at: dict[int, tuple[str, int, int]] = field(default_factory=dict)


@dataclass
class _Unparked:
    """The parked events a batch took (PostgreSQL), at the head of its events."""

    #: Their rows, deleted when the batch commits.
    ids: list[int] = field(default_factory=list)
    #: How many batches parked each, by ``id()`` of its event.
    attempts: dict[int, int] = field(default_factory=dict)
    #: Event ids of the parked events the batch did not take: a copy of one of them (a resend) waits for it.
    elsewhere: set[str] = field(default_factory=set)


class _CustomerMetrics(NamedTuple):
    """A batch's metric cells as ``_customer_metrics`` leaves them to ``_metrics``."""

    #: The batch's changes to the channel and overall cells, not merged yet.
    aggregator: MetricAggregator
    #: The customers' cells merged with their stored counters.
    merged: AggregateResult
    #: The watermark their final flags were decided by (the clock's, once the customers were held).
    watermark: datetime | None


@dataclass
class _SplitPlan:
    """The pending splits a batch applies (``targets``: one per customer; ``ids``: the split ids of each) and those
    it refuses (id -> why), under the bound on touchpoints applied again (``CXSTREAM_SPLIT_MAX_TOUCHPOINTS``)."""

    bound: int
    targets: list[tuple[str, str, tuple[str, ...], datetime]] = field(default_factory=list)
    ids: dict[str, list[str]] = field(default_factory=dict)
    #: Customers of ``targets`` that held identifiers when counted (the others are gone: nothing to split).
    live: set[str] = field(default_factory=set)
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def taken(self) -> list[str]:
        """The ids of the splits applied (refused ones left out)."""
        return [split_id for split_ids in self.ids.values() for split_id in split_ids]

    def refuse(self, split_ids: list[str]) -> None:
        """Refuse the splits of one customer over the bound. The reason names no customer: audit rows are never
        rewritten, and an erasure of the customer must not leave its id behind."""
        for split_id in split_ids:
            why = (
                f"the customer has more than {self.bound} touchpoints (CXSTREAM_SPLIT_MAX_TOUCHPOINTS): a split "
                "applies them all again in one batch; its never-link rules stay (cxstream never-link --remove "
                f"--rule {split_id})"
            )
            log.error("split %s refused: %s", split_id, why)
            self.refused[split_id] = why


class BatchProcessor:
    """Applies batches of input records to the results sink, exactly once per input offset."""

    def __init__(self, settings: Settings, sink: ResultSink, clock: Callable[[], float] = time.time) -> None:
        """``sink``: where state is read from and batches are committed; ``clock``: the wall clock partitions go
        idle by (epoch seconds)."""
        self.settings = settings
        self.sink = sink
        self.clock = clock
        self.topics = Topics(settings.topic_prefix)
        self.group_id = settings.app_id
        self.policies = Policies.from_settings(settings)
        self.stitcher = Stitcher(self.policies)
        self.grace = timedelta(seconds=settings.window_grace_s)
        self.applied: dict[TopicPartition, int] = {}
        self.watermark: datetime | None = None
        self.swept_to: datetime | None = None
        self._gaps_seen: dict[tuple[TopicPartition, int], float] = {}
        self.cache = StateCache(settings.state_cache_customers)
        self.suppressions = Suppressions(suppression_salt(settings))
        #: Merges made by hand that this worker has not seen applied yet (read with the rules; applied by the next
        #: batch, or by a tick with no batch: ``tick``).
        self.manual_links: list[ManualLink] = []
        #: Ids of those a batch could not apply yet, a key no customer holds (imported into a database being rebuilt,
        #: before the events carrying it): applied by the batch whose events bring it, not retried by every tick.
        self._waiting_links: set[str] = set()
        #: Splits made by hand not applied yet, as read with the rules: (split id, customer id, keys, when asked).
        self.manual_splits: list[tuple[str, str, tuple[str, ...], datetime]] = []
        #: Ids of the parked events the last batch took (``process``), committed or not.
        self.last_unparked: list[int] = []
        #: Hand-made identity changes (``audit_log`` rows) as of the rules last read; -1: not read yet.
        self._hand_changes = -1
        # Read on first use, not here: the database may be unreachable when the apply process starts, and a call
        # that fails is retried by the worker, whereas a process that cannot start stops it.
        self._loaded = False

    def _parked_waiting(self, tx: Any) -> bool:
        """Whether parked events no other batch took wait for a batch (PostgreSQL): a tick then applies them.
        (Those another batch holds would make it a batch of nothing, waiting for the group's clock.)"""
        return bool(self.sink.take_parked(tx, self.group_id, 1))

    def _due(self) -> bool:
        """Whether a merge made by hand waits for a batch that may apply it (not only for its keys to arrive)."""
        return any(link.link_id not in self._waiting_links for link in self.manual_links)

    def reload(self) -> None:
        """Re-read applied offsets and the event-time clock (at start, after a rebalance or a failed write)."""
        self.applied = self.sink.applied_offsets(self.group_id)
        self.watermark, self.swept_to, _ = self.sink.clock(self.group_id)
        self.cache.clear()
        self._loaded = True

    def _load(self) -> None:
        if not self._loaded:
            self.reload()

    # --- the batch --------------------------------------------------------------------------------

    def process(
        self,
        records: Sequence[InRecord],
        backlog: Iterable[TopicPartition] = (),
        parked: Sequence[int] | None = None,
        force: bool = False,
    ) -> BatchReport:
        """Apply ``records`` in one transaction; return what was done and what to publish.

        ``backlog``: the worker's input partitions with records still to read, which hold the watermark.
        ``parked``: the parked events to take (PostgreSQL): None, those no other batch took, oldest first, up to
        ``UNPARK_LIMIT``; else the ones of these ids still parked (``[]``: none). ``last_unparked`` then holds the
        ids the batch took, whether it committed or not. ``force``: run the transaction even with nothing to apply
        (what a tick's batch does besides: hand-made changes, the clock).

        The commit, step by step (each step is marked where it happens, here and in ``_apply``):

        1. decode: the records past each partition's applied offset become events or dead letters;
        2. lock the partitions: check that no other worker applied them meanwhile (if one did, go back to 1 from
           what it committed); read the group's clock as a hint (on SQLite, check the state cache against it);
           drop the events of erased people (``streams.erasure``);
        3. load: the identities, customers and applied event ids the events touch (cache first, where still
           valid), locking the customers' rows on PostgreSQL, and the history late events need;
        4. apply: stitch identities and timelines, evaluate alerts, close the timelines;
        5. results: rows and downstream records of merges, profiles and touchpoints, written at once (what the
           batch's customers own); then, under the group's clock lock, metric cells and figures;
        6. event time: move the partitions' clocks and the watermark; finalise closed windows; alert overdue
           issues;
        7. write: cells, alerts, applied offsets, clock and the outbox row; the transaction commits (a batch that
           contended with another worker's is rolled back and applied again, ``Contended``);
        8. remember: the committed state in the cache, the applied offsets.

        The Faust process then publishes the outbox row and acknowledges the records (``streams.worker``).
        """
        self._load()
        self.last_unparked = []
        retries = 0
        while True:
            report = BatchReport(retries=retries)
            read = self.decode(records, report)  # 1. decode
            report.partitions = len(read.offsets)
            if not (read.offsets or force or parked or self._due() or self.manual_splits):
                return report
            try:
                with self.sink.transaction() as tx:
                    hint = self._begin(tx, report, read.offsets)  # 2. lock the partitions
                    applied = self._apply(tx, report, read, backlog, hint, parked)  # 3. to 7.
            except _AppliedElsewhere:
                log.info("another worker applied records of this batch's partitions: reading its offsets")
                self.reload()
                continue
            except Contended as exc:
                self.cache.clear()  # cached states hold this attempt's changes
                retries += 1
                log.log(
                    logging.WARNING if retries % 10 == 0 else logging.INFO,
                    "batch contended with another worker's (%s): applying it again (attempt %d)",
                    exc,
                    retries + 1,
                )
                # A little apart, growing: two batches that keep meeting do not retry in step.
                time.sleep(min(1.0, 0.01 * retries) * random.random())
                continue
            except BaseException:
                self.cache.clear()  # cached states may hold changes that did not commit
                raise
            self._committed(*applied)  # 8. remember
            done = set(applied[1].manual_merges)
            self.manual_links = [link for link in self.manual_links if link.link_id not in done]
            self._waiting_links = {link.link_id for link in self.manual_links}
            done = {*applied[1].manual_splits, *applied[1].refused_splits}
            self.manual_splits = [split for split in self.manual_splits if split[0] not in done]
            report.committed_at = datetime.now(UTC)
            self.applied.update(read.offsets)
            return report

    def tick(self, backlog: Iterable[TopicPartition] = ()) -> BatchReport:
        """Follow the wall clock between batches: partitions gone idle stop holding the watermark back, and what
        it passes is swept (windows finalised, issues overdue). Writes nothing when nothing moved. A merge made by
        hand and not applied yet is applied then, by a batch of no records (``process``)."""
        self._load()
        self.last_unparked = []
        report = BatchReport()
        try:
            with self.sink.transaction() as tx:
                self._begin(tx, report, {})
                self._refresh_hand_rules(tx)
                due = self._due() or bool(self.manual_splits) or self._parked_waiting(tx)
                if not due:
                    clock = self._lock_clock(tx, report)
                    write = BatchWrite(group_id=self.group_id, offsets={}, worker_id=self.settings.worker_id)
                    records = ResultRecords(self.topics, report.outputs)
                    self._follow(tx, write, report, records, {}, backlog, clock, StateView())
                    if not (write.partitions or write.watermark or write.swept_to):
                        return report
                    write.outbox = report.outbox = report.outputs.encode() if report.outputs else None
                    report.outbox_id = self.sink.write_shared(tx, write)
        except BaseException:
            self.cache.clear()
            raise
        if due:  # after the tick's transaction: the batch takes its own
            return self.process([], backlog, force=True)
        self._committed(clock, write, StateView(), (), {}, {})
        report.committed_at = datetime.now(UTC)
        return report

    def reject(self, records: Sequence[InRecord], reason: str, detail: str) -> BatchReport:
        """Dead-letter records the database will never accept, and mark them applied, in one transaction."""
        self._load()
        report = BatchReport()
        offsets: dict[TopicPartition, int] = {}
        fingerprints: dict[TopicPartition, str] = {}
        prefix = f"{self.settings.topic_prefix}touchpoints."
        for rec in records:
            tp = (rec.topic, rec.partition)
            if rec.offset > self.applied.get(tp, -1):
                if rec.offset > offsets.get(tp, -1):
                    offsets[tp], fingerprints[tp] = rec.offset, record_fingerprint(rec.value)
                report.dead_letters.append(
                    dead_letter(rec.topic.removeprefix(prefix), reason, detail, rec.value or b"", rec)
                )
        report.partitions = len(offsets)
        if offsets:
            self._publish_dead_letters(report, ResultRecords(self.topics, report.outputs))
            report.outbox = report.outputs.encode()
            write = BatchWrite(
                group_id=self.group_id,
                offsets=offsets,
                fingerprints=fingerprints,
                outbox=report.outbox,
                worker_id=self.settings.worker_id,
            )
            with self.sink.transaction() as tx:
                report.outbox_id = self.sink.write_shared(tx, write)
            self.applied.update(offsets)
        return report

    def reject_parked(self, row_id: int, reason: str, detail: str) -> BatchReport:
        """Dead-letter a parked event the database will never accept (every batch taking it failed), in one
        transaction that removes it: a parked event must not fail every batch after it."""
        self._load()
        report = BatchReport()
        with self.sink.transaction() as tx:
            for event in self.sink.drop_parked(tx, self.group_id, [row_id]):
                channel = orjson.loads(event).get("channel")
                report.dead_letters.append(dead_letter(channel, reason, f"{detail} (a parked event)", event))
            if report.dead_letters:
                self._publish_dead_letters(report, ResultRecords(self.topics, report.outputs))
                report.outbox = report.outputs.encode()
                write = BatchWrite(
                    group_id=self.group_id, offsets={}, outbox=report.outbox, worker_id=self.settings.worker_id
                )
                report.outbox_id = self.sink.write_shared(tx, write)
        return report

    # --- 1. decode ----------------------------------------------------------------------------------

    def decode(self, records: Sequence[InRecord], report: BatchReport) -> _Read:
        """Validate the new records' events into ``report``; return what was read per partition.

        Offsets are applied contiguously: a record at or below the applied offset is skipped (its effects are
        committed), and one beyond the next expected offset means records went missing on the way here (the
        consumer dropped a fetch during a rebalance): it is not applied, and the partition is sought back.
        """
        read = _Read()
        offsets = read.offsets
        # Where each event was read matters only to a batch that may park it (PostgreSQL): no per-event work else.
        read_at = read.read_at if self.sink.concurrent else None
        prefix = f"{self.settings.topic_prefix}touchpoints."
        max_bytes = self.settings.max_record_bytes
        events, dead_letters = report.events, report.dead_letters
        # Per partition, the last record read and the greatest event time: digested and converted once per
        # partition at the end, not per record (the hot path is per record).
        last: dict[TopicPartition, bytes | None] = {}
        newest: dict[TopicPartition, datetime] = {}
        for rec in records:
            tp = (rec.topic, rec.partition)
            applied = offsets.get(tp, self.applied.get(tp))
            if applied is not None and rec.offset <= applied:
                report.skipped_records += 1
                continue
            if applied is not None and rec.offset > applied + 1 and not self._gap_is_real(tp, applied + 1):
                report.gaps.setdefault(tp, applied + 1)
                continue
            offsets[tp] = rec.offset
            last[tp] = rec.value
            first = len(events)
            decode_record(rec, prefix, max_bytes, events, dead_letters)
            if read_at is not None:
                where = (rec.topic, rec.partition, rec.offset)
                for event in events[first:]:
                    read_at[id(event)] = where
            if len(events) == first + 1:
                at = events[first].occurred_at
                if tp not in newest or at > newest[tp]:
                    newest[tp] = at
            elif len(events) > first:
                at = max(event.occurred_at for event in events[first:])
                if tp not in newest or at > newest[tp]:
                    newest[tp] = at
        read.fingerprints = {tp: record_fingerprint(value) for tp, value in last.items()}
        read.latest = {tp: at.timestamp() for tp, at in newest.items()}
        return read

    def _gap_is_real(self, tp: TopicPartition, expected: int) -> bool:
        """True once seeking back to a missing offset has not brought it for a while: it is not in the log.

        Retention, compaction or a broker crash can leave offsets that hold no record; such a gap is accepted
        after ``offset_gap_grace_s``.
        """
        first_seen = self._gaps_seen.setdefault((tp, expected), time.monotonic())
        if time.monotonic() - first_seen > self.settings.offset_gap_grace_s:
            log.error("offset %d of %s is not in the log; continuing after the gap", expected, tp)
            return True
        return False

    # --- 2. lock, 8. remember -------------------------------------------------------------------------

    def _begin(self, tx: Any, report: BatchReport, offsets: dict[TopicPartition, int]) -> Clock:
        """Lock the batch's partitions; check no other worker applied them meanwhile (``_AppliedElsewhere``); read
        the group's clock as committed (on SQLite, whose transaction holds the database, also checking the state
        cache against its commit sequence; on PostgreSQL only a hint until ``_lock_clock``)."""
        start = time.perf_counter()
        self.sink.lock_partitions(tx, self.group_id, offsets)
        report.waited("partitions", start)
        # A partition another worker applied since this batch was decoded (around a rebalance) is decoded again
        # from what it committed, so no record is applied twice.
        if offsets:
            stored = self.sink.applied_offsets_in(tx, self.group_id)
            if any(stored.get(tp) != self.applied.get(tp) for tp in offsets):
                raise _AppliedElsewhere
        clock = self.sink.clock_in(tx, self.group_id)
        if not self.sink.concurrent:
            self.cache.check(clock.sequence)
        return clock

    def _lock_customers(
        self, tx: Any, report: BatchReport, keys: set[str], patient: set[str]
    ) -> tuple[dict[str, StoredIdentity], dict[str, CustomerState], dict[str, int], set[str], set[str]]:
        """The stored identity rows of ``keys`` and the states of their customers, those customers' rows locked
        (PostgreSQL), with each locked customer's version; the cache first where it is still valid; the keys
        another worker's batch holds (their customer's row, or, for a key no row holds, its claim), whose events
        the batch parks rather than wait for that batch to commit (``_park``); and the keys no row holds it claimed.
        The customers of ``patient`` keys are waited for (hand-made changes, events parked ``PATIENT_AFTER``
        times): none of those is held.

        A key's customer changes only under that customer's lock: by a merge, which deletes the merged customer's
        row, or by a split made by hand, which adds an ``audit_log`` row (checked once the locks are held: the
        batch is then applied again). So once its customer is locked and still there, a key read before the lock
        is still right; a key whose customer is gone is read again and its new customer locked. A cached state is
        used only if its version is the stored one. Keys no row holds are claimed (``ResultSink.claim_keys``, after
        the customers' locks) and read again, so a batch that added them meanwhile has committed and its rows are
        seen; one that adds them anyway (a patient event's) is still caught when this batch writes
        (``BatchWrite.claimed_identities``).
        """
        stored, missing = lookup(self.cache.identities, keys)
        stored.update(self.sink.load_identities(tx, missing))
        # On SQLite the transaction holds the database and the cache was checked whole (``_begin``).
        concurrent = self.sink.concurrent
        versions: dict[str, int] = {}
        held: set[str] = set()  # customers another batch holds
        held_keys: set[str] = set()  # keys no row holds, another batch adding them
        claims: set[str] = set()  # keys no row holds this batch claimed
        new_keys_locked = False
        while concurrent:
            if ids := {row.customer_id for row in stored.values()} - versions.keys() - held:
                waited = {row.customer_id for key in patient if (row := stored.get(key)) is not None} & ids
                start = time.perf_counter()
                # Those waited for first, in id order; the others are skipped if held, never waited for.
                found = self.sink.lock_customers(tx, waited) if waited else {}
                report.waited("customers", start)
                if rest := ids - waited:
                    taken, busy = self.sink.try_lock_customers(tx, rest)
                    found.update(taken)
                    held |= busy
                versions.update(found)
                if gone := ids - found.keys() - held:
                    # Merged into another customer by another worker since these keys were read or cached.
                    again = [key for key, row in stored.items() if row.customer_id in gone]
                    for key in again:
                        del stored[key]
                        self.cache.identities.pop(key, None)
                    stored.update(self.sink.load_identities(tx, again))
                    versions.update(dict.fromkeys(gone, -1))  # locked (as absent): not asked again
                continue
            if new_keys_locked or not (new := keys - stored.keys()):
                break
            # Keys no row holds: another worker's batch may be adding them. Finding it out at the insert costs the
            # whole batch, applied again (``Contended``: a third of the batches of two workers sharing customers,
            # make bench), so the batch claims them first and parks the events of those another batch claimed.
            # Then it reads them again: a batch that added one meanwhile has committed. A patient event's key is
            # added all the same: if the other batch commits it first, this one is applied again.
            new_keys_locked = True
            start = time.perf_counter()
            held_keys = self.sink.claim_keys(tx, new)
            report.waited("keys", start)
            claims.update(new - held_keys)
            held_keys -= patient
            stored.update(self.sink.load_identities(tx, new - held_keys))
        if held:
            held_keys.update(key for key, row in stored.items() if row.customer_id in held)
            for key in held_keys:
                stored.pop(key, None)
        customers: dict[str, CustomerState] = {}
        unknown: list[str] = []
        for customer_id in {row.customer_id for row in stored.values()}:
            cached = self.cache.customers.get(customer_id)
            if cached is not None and (not concurrent or self.cache.versions.get(customer_id) == versions[customer_id]):
                customers[customer_id] = cached
            else:
                unknown.append(customer_id)
        for customer_id, state in self.sink.load_customers(tx, unknown).items():
            customers[customer_id] = CustomerState.from_dict(state)
        return stored, customers, versions, held_keys, claims

    def _lock_clock(self, tx: Any, report: BatchReport) -> Clock:
        """Lock and read the group's clock: from here to the commit the batch changes what all batches share (the
        watermark, the sweep, the channel and overall metric cells), one batch at a time. Cached metric cells are
        kept only if no other batch committed since this worker's last."""
        start = time.perf_counter()
        clock = self.sink.lock_clock(tx, self.group_id)
        report.waited("clock", start)
        self.watermark, self.swept_to = clock.watermark, clock.swept_to
        if clock.sequence != self.cache.sequence:
            self.cache.cells.clear()
        return clock

    def _committed(
        self,
        clock: Clock,
        write: BatchWrite,
        view: StateView,
        removed: Iterable[str],
        stored: dict[str, StoredIdentity],
        versions: dict[str, int],
    ) -> None:
        """Remember what the transaction committed: the cache, the clock.

        ``stored``: the identity rows of the batch's keys as the table now holds them. A key a merge re-pointed
        without the batch reading its row (the merge's UPDATE moved it) is not among them: the cache forgets it.
        ``versions``: the customers' versions as locked (PostgreSQL); a written customer's is now one more.
        """
        # Most keys keep their customer: their row is stored as read (a NamedTuple _replace per key cost 3% of
        # the apply path).
        identities = (
            (
                key,
                row
                if (row := stored.get(key)) is None or row.customer_id == customer_id
                else row._replace(customer_id=customer_id),
            )
            for key, customer_id in view.identities.items()
        )
        for key in write.forgotten:  # a split left it with no customer: its row is gone
            self.cache.identities.pop(key, None)
        written = {row.customer_id for row in write.customers}
        self.cache.committed(
            clock.sequence + int(write.state_changed),
            identities,
            view.customers,
            removed,
            ((cell, row.counters) for cell, row in write.cells.items()),
            write.removed_cells,
            {
                customer_id: max(versions.get(customer_id, 0), 0) + (customer_id in written)
                for customer_id in view.customers
            }
            if self.sink.concurrent
            else {},
        )
        self.watermark = write.watermark or self.watermark
        self.swept_to = write.swept_to or self.swept_to

    # --- 3. to 7. ---------------------------------------------------------------------------------------

    def _apply(
        self,
        tx: Any,
        report: BatchReport,
        read: _Read,
        backlog: Iterable[TopicPartition],
        hint: Clock,
        parked: Sequence[int] | None,
    ) -> tuple[Clock, BatchWrite, StateView, tuple[str, ...], dict[str, StoredIdentity], dict[str, int]]:
        """Steps 3 to 7 of ``process``: load what the batch touches, apply it, write everything back; return what
        ``_committed`` remembers once the transaction commits. ``hint``: the group's clock as the batch began;
        ``parked``: as ``process``."""
        unparked = self._unpark(tx, report, read, parked)
        keys = self.stitcher.keys_of(report.events)
        self._refresh_hand_rules(tx)
        if self.suppressions:
            keys = self._suppress(report, keys)
        # 3. load (and lock)
        links = list(self.manual_links)
        by_hand = {key for link in links for key in link.keys}
        plan = self._split_targets(tx, by_hand)
        # Waited for, never parked: what was done by hand, and events parked PATIENT_AFTER times already.
        patient = by_hand | {
            key
            for event, event_keys in zip(report.events, keys, strict=True)
            if unparked.attempts.get(id(event), 0) >= PATIENT_AFTER
            for key in event_keys.keys
        }
        wanted = {key for event_keys in keys for key in event_keys.keys} | by_hand
        stored, customers, versions, held, claims = self._lock_customers(tx, report, wanted, patient)
        if held or unparked.elsewhere:
            keys = self._park(report, read, keys, held, unparked)
            wanted = {key for event_keys in keys for key in event_keys.keys} | by_hand
        events = report.events
        if self.sink.concurrent and self._refresh_hand_rules(tx):
            raise Contended("the identity graph was changed by hand while the batch waited for its customers")
        splits = self._splits(tx, plan, customers)
        identities = {key: row.customer_id for key, row in stored.items()}
        applied = {
            event_id: NO_CUSTOMER if customer_id is None else customer_id
            for event_id, customer_id in self.sink.load_applied(tx, {event.event_id for event in events}).items()
        }
        view = StateView(identities=identities, customers=customers, applied=applied)
        report.restored = self._restore(tx, view, self.stitcher.history_needs(events, keys, view, links, splits))
        # 4. apply
        before = hint.watermark
        max_age = self.settings.max_event_age_s
        reject_before = None if before is None or max_age is None else before.timestamp() - max_age
        result = self.stitcher.apply(events, view, keys, reject_before=reject_before, links=links, splits=splits)
        report.result = result
        report.applied_at = datetime.now(UTC)
        if before is not None:
            report.late_accepted = sum(
                1 for entry in result.entries if entry.event_id not in result.replaced and entry.occurred_at < before
            )
        write = BatchWrite(
            group_id=self.group_id,
            offsets=read.offsets,
            fingerprints=read.fingerprints,
            worker_id=self.settings.worker_id,
            state_changed=bool(events or links or splits),
            # Applied once both keys are held (a never-link rule may still refuse it); else it waits for them.
            manual_merges=[link.link_id for link in links if all(key in view.identities for key in link.keys)],
            manual_splits=plan.taken,
            refused_splits=plan.refused,
            claimed_identities=wanted - stored.keys(),
            claimed_events={event.event_id for event in events} - applied.keys(),
            parked=report.parked,
            unparked=unparked.ids,
            claims=claims,
        )
        report.splits_refused = len(plan.refused)
        records = ResultRecords(self.topics, report.outputs)
        self._alerts(result, view, write, report, records)  # on the states as applied, with what was restored
        self.stitcher.close(view, result)
        # 5. results: what the batch's customers own, written under their locks
        self._stitching(result, view, report, write, keys, records, stored, splits)
        metrics = self._customer_metrics(tx, result, write, hint)
        self.sink.write_state(tx, write)
        # ...and what batches share, under the clock's lock
        clock = self._lock_clock(tx, report)
        self._metrics(tx, metrics, write, records, clock.watermark)
        self._experience_drops(tx, write, report, records, clock.sequence + 1)
        # 6. event time
        self._follow(tx, write, report, records, read.latest, backlog, clock, view)
        # 7. write
        self._refused(result, before, report)
        self._publish_dead_letters(report, records)
        write.outbox = report.outbox = report.outputs.encode() if report.outputs else None
        report.outbox_id = self.sink.write_shared(tx, write)
        return clock, write, view, tuple(result.removed), stored, versions

    def _split_targets(self, tx: Any, wanted: set[str]) -> _SplitPlan:
        """The pending splits to apply in this batch, one per customer they apply to (those of one customer
        together: a re-stitch under all their rules applies them all), whose keys join ``wanted``: the customer
        named, or, if another batch merged it away before the split was applied, the one now holding the moved
        keys.

        A split applies all of its customer's touchpoints again, held in memory: oldest first, the batch takes
        splits while their customers' touchpoints add up to ``CXSTREAM_SPLIT_MAX_TOUCHPOINTS``, and leaves the
        rest to the next. A customer over that bound alone (grown, or merged into a bigger one, since the split
        was asked) is taken to be refused under its lock (``_splits``): marked done with why, rather than a batch
        that could exhaust the worker's memory at every start."""
        bound = self.settings.split_max_touchpoints
        targets: dict[str, tuple[str, str, tuple[str, ...], datetime]] = {}
        split_ids: dict[str, list[str]] = {}
        customer_keys: dict[str, list[str]] = {}
        for split_id, customer_id, moved, at in self.manual_splits:
            keys = self.sink.customer_keys(tx, customer_id)
            if not keys:
                holder = self.sink.load_identities(tx, moved[:1]).get(moved[0]) if moved else None
                if holder is not None:
                    customer_id = holder.customer_id
                    keys = self.sink.customer_keys(tx, customer_id)
            first = targets.get(customer_id)
            if first is None:
                targets[customer_id] = (split_id, customer_id, moved, at)
            else:
                targets[customer_id] = (first[0], customer_id, (*first[2], *moved), first[3])
            split_ids.setdefault(customer_id, []).append(split_id)
            customer_keys[customer_id] = keys
        plan, total = _SplitPlan(bound=bound), 0
        for customer_id, target in targets.items():
            keys = customer_keys[customer_id]
            touchpoints = self.sink.count_touchpoints(tx, customer_id, bound + 1)
            if touchpoints <= bound:
                if total + touchpoints > bound:
                    break  # oldest first: this one and the younger ones wait for the next batch
                total += touchpoints
            # One over the bound on its own is taken too, and refused by ``_splits`` under its lock: a refusal
            # taken without it could commit while another worker (another bound) applies the same split.
            plan.targets.append(target)
            plan.ids[customer_id] = split_ids[customer_id]
            if keys:
                plan.live.add(customer_id)
            wanted.update(keys)
        return plan

    def _splits(self, tx: Any, plan: _SplitPlan, customers: dict[str, CustomerState]) -> list[Split]:
        """The splits made by hand to apply, each with its customer's events and applied manual merges, read under
        the customer's lock. A customer gone (erased: no identifier left) has nothing to split: its split is
        marked applied all the same. One merged into another by a batch that committed between ``_split_targets``
        and the lock waits for the next batch, which follows its keys to the customer holding them. A customer
        that grew past the bound meanwhile (such a merge the other way) is refused: counted again under its lock,
        where it no longer changes."""
        splits = []
        for split_id, customer_id, moved, at in plan.targets:
            state = customers.get(customer_id)
            if state is None:
                if customer_id in plan.live:
                    del plan.ids[customer_id]
                continue
            if self.sink.count_touchpoints(tx, customer_id, plan.bound + 1) > plan.bound:
                plan.refuse(plan.ids.pop(customer_id))
                continue
            events = self.sink.load_customer_events(tx, customer_id)
            held = state.identifier_keys()
            links = [ManualLink(merge_id, (a, b), when) for merge_id, a, b, when in self.sink.applied_links(tx, held)]
            splits.append(Split(split_id, customer_id, moved, at, events, links))
        return splits

    def _refresh_hand_rules(self, tx: Any) -> bool:
        """Read the suppression entries and never-link rules again if the identity graph was changed by hand (an
        erasure, a rule added or removed) since the last read; return whether it was. The state cache is dropped
        then: it may hold what an erasure removed."""
        found = self.sink.load_hand_rules(tx, self._hand_changes)
        if found is None:
            return False
        self._hand_changes = found.changes
        self.suppressions.replace(found.suppressed)
        self.stitcher.apart = KeptApart(found.never_link)
        self.manual_links = [ManualLink(merge_id, (a, b), at) for merge_id, a, b, at in found.merges]
        self._waiting_links = set()
        self.manual_splits = list(found.splits)
        self.cache.clear()
        return True

    def _unpark(self, tx: Any, report: BatchReport, read: _Read, parked: Sequence[int] | None) -> _Unparked:
        """Put the events earlier batches parked, and no other batch took, at the head of this one's, in the order
        they were read (PostgreSQL); ``parked``: as ``process``. Also finds the event ids of the parked events the
        batch did not take (``_park``)."""
        unparked = _Unparked()
        self.last_unparked = []
        if not self.sink.concurrent:
            return unparked
        if parked != []:
            rows = self.sink.take_parked(tx, self.group_id, UNPARK_LIMIT if parked is None else len(parked), parked)
            rows.sort(key=lambda row: (row.read_at, row.id))
            self.last_unparked = unparked.ids = [row.id for row in rows if row.id is not None]
            events = [TouchpointEvent.model_validate_json(row.event) for row in rows]
            for event, row in zip(events, rows, strict=True):
                unparked.attempts[id(event)] = row.attempts
                read.read_at[id(event)] = row.read_at
            report.events[:0] = events
            report.unparked = len(rows)
        unparked.elsewhere = self.sink.parked_event_ids(tx, self.group_id, unparked.ids)
        return unparked

    def _park(
        self, report: BatchReport, read: _Read, keys: list[EventKeys], held: set[str], unparked: _Unparked
    ) -> list[EventKeys]:
        """Park the events carrying a key another worker's batch holds (``held``), for a later batch, rather than
        wait for that batch to commit; return the other events' keys.

        Two workers' batches of thousands of events nearly always share a customer (38% of two workers' batch time
        went waiting on a customer's row, make bench). Results do not depend on how events are cut into batches, so
        an event applied a batch later ends the same: parked events go in this transaction, with the offsets
        they were read at, and hold the watermark back until applied (``_follow``). But of two copies of one event
        (a resend) the first applied is kept, so a copy waits while an earlier one is parked, here or elsewhere."""
        kept_events, kept_keys = [], []
        waiting = set(unparked.elsewhere)
        for event, event_keys in zip(report.events, keys, strict=True):
            if event.event_id not in waiting and held.isdisjoint(event_keys.keys):
                kept_events.append(event)
                kept_keys.append(event_keys)
            else:
                waiting.add(event.event_id)
                attempts = unparked.attempts.get(id(event), 0) + 1
                read_at = read.read_at[id(event)]
                body = event.model_dump_json().encode()
                report.parked.append(ParkedEvent(None, event.occurred_at, event.event_id, read_at, attempts, body))
        report.events = kept_events
        return kept_keys

    def _suppress(self, report: BatchReport, keys: list[EventKeys]) -> list[EventKeys]:
        """Drop the events carrying an erased person's identifier from the batch; return the others' keys.

        Their records count as applied (their offsets move on) and they are not dead-lettered: a dead letter
        would keep the very identifiers the erasure removed."""
        kept_events, kept_keys = [], []
        for event, event_keys in zip(report.events, keys, strict=True):
            if self.suppressions.hit(event_keys.keys):
                report.suppressed += 1
            else:
                kept_events.append(event)
                kept_keys.append(event_keys)
        report.events = kept_events
        return kept_keys

    def _restore(self, tx: Any, view: StateView, needs: dict[str, float]) -> int:
        """Read back from the touchpoints table the history ``needs`` asks for; return how many customers."""
        if not needs:
            return 0
        ranges = {
            customer_id: (_utc(since), _utc(view.customers[customer_id].complete_from))
            for customer_id, since in needs.items()
        }
        for customer_id, (entries, previous) in self.sink.load_history(tx, ranges).items():
            rows = [row for row in map(row_of, entries) if is_kept(row)]
            purchase = None if previous is None else (previous[0].timestamp(), previous[1])
            view.customers[customer_id].restore(rows, purchase, needs[customer_id])
        return len(needs)

    def _refused(self, result: BatchResult, before: datetime | None, report: BatchReport) -> None:
        """Dead letters of the events the domain refused: too old for CXSTREAM_MAX_EVENT_AGE_S, or an event id
        already applied to another customer."""
        for event in result.too_late:
            detail = (
                f"occurred_at {event.occurred_at.isoformat()} is older than the watermark "
                f"{before.isoformat() if before else '?'} minus CXSTREAM_MAX_EVENT_AGE_S"
            )
            report.dead_letters.append(
                dead_letter(event.channel.value, "too_late", detail, event.model_dump_json().encode())
            )
        for event, holder in result.conflicts:
            detail = (
                f"event_id {event.event_id} is already applied to customer {holder or '(none)'}, not to this record's"
            )
            report.dead_letters.append(
                dead_letter(event.channel.value, "event_id_conflict", detail, event.model_dump_json().encode())
            )

    def _publish_dead_letters(self, report: BatchReport, records: ResultRecords) -> None:
        """Queue the batch's dead letters, with their original bytes or what CXSTREAM_DEAD_LETTER_ORIGINALS keeps."""
        policy, salt = self.settings.dead_letter_originals, self.settings.identifier_salt
        for dead in report.dead_letters:
            records.dead_letter(dead, dead.kept(policy, salt).model_dump_json().encode())

    def _stitching(
        self,
        result: BatchResult,
        view: StateView,
        report: BatchReport,
        write: BatchWrite,
        keys: Sequence[EventKeys],
        records: ResultRecords,
        stored: dict[str, StoredIdentity],
        splits: Sequence[Split],
    ) -> None:
        """Merges, profiles, identities and touchpoints of the batch: their rows and records.

        ``stored``: the identity rows of the batch's keys as the table held them; updated to what it holds after.
        ``splits``: the splits made by hand the batch applied.
        """
        repointed = repoint([(merge.merged_id, merge.survivor_id) for merge in result.merges])
        write.repointed = repointed.moved
        for merge, survivor_id in zip(result.merges, repointed.survivors, strict=True):
            write.merges.append(merge_row(merge, survivor_id))
            records.merge(merge)
        for split in result.splits:
            records.merge(split)
        write.split_off = sorted({split.merged_id for split in result.splits} | result.reformed)
        write.relinked = [merge_row(merge, survivor_id) for merge, survivor_id in result.relinked]
        # A customer is removed by a merge or by a split that left no side its id.
        merged, split_of = {merge.merged_id for merge in result.merges}, {split.customer_id: split for split in splits}
        write.split_removed = [
            removal_row(split_of[old], kept)
            for old, kept in result.removed.items()
            if old not in merged and old in split_of
        ]
        write.forgotten = result.forgotten
        write.removed_customers = list(result.removed)
        policy, target = self.stitcher.policy, self.settings.issue_target_s
        for profile in result.profiles:
            records.profile(profile)
            if profile.merged_into is None:
                state = view.customers[profile.customer_id]
                write.customers.append(customer_row(profile, state, overdue_at(state, policy, target)))
        write.identities = identity_rows(report.events, keys, result, view.identities, stored)
        write.seen_identities = {
            row.identifier
            for row in write.identities
            if (old := stored.get(row.identifier)) is not None and old.customer_id == row.customer_id
        }
        for row in write.identities:
            stored[row.identifier] = StoredIdentity(row.customer_id, row.first_seen, row.last_seen)
        now = report.committed_at or datetime.now(UTC)
        # A new touchpoint records its event's keys and identify details (what a split applies again); a revised
        # one keeps what its first version recorded.
        firsts: dict[str, tuple[TouchpointEvent, EventKeys]] = {}
        for event, event_keys in zip(report.events, keys, strict=True):
            firsts.setdefault(event.event_id, (event, event_keys))  # the first record of an id is the one applied
        identities = view.identities
        for entry in result.entries:
            first = firsts.get(entry.event_id) if entry.event_id not in result.replaced else None
            if first is None:
                write.touchpoints.append(touchpoint_row(entry, now))
            else:
                # Only the keys its customer holds: one refused by a limit or a never-link rule is another person's
                # (an erasure of that person must not leave it here).
                event, event_keys = first
                held = tuple(key for key in event_keys.keys if identities.get(key) == entry.customer_id)
                write.touchpoints.append(touchpoint_row(entry, now, *stitched_by(event, held)))
            records.timeline(entry)

    def _customer_metrics(self, tx: Any, result: BatchResult, write: BatchWrite, hint: Clock) -> _CustomerMetrics:
        """The first part of the metric cells the batch's entries change, done under its customers' locks so that
        the clock's (``_metrics``) is held for less: every cell's changes, and the new counters of the customers'
        cells (merged customers' cells folded into the survivor's).

        Only a batch holding a customer changes its cells' counters (a sweep turns them final, no more): read
        once the batch holds its customers, the stored and cached ones are the last committed. The cache is kept
        if no other batch committed since this worker's last (the clock's sequence). ``hint``: the clock as the
        batch began, still the clock where the transaction holds the whole database (SQLite)."""
        aggregator = MetricAggregator(self.policies.metrics)
        if write.repointed:
            # Merged customers' metric cells move into the survivor's: history is combined, not lost.
            for cell, counters in self.sink.load_customer_cells(tx, write.repointed).items():
                aggregator.add_counters(cell._replace(key=write.repointed[cell.key]), counters)
                write.removed_cells.append(cell)
        aggregator.add_batch(result.entries, result.replaced, write.repointed)
        clock = self.sink.clock_in(tx, self.group_id) if self.sink.concurrent else hint
        if clock.sequence != self.cache.sequence:
            self.cache.cells.clear()
        customer = MetricScope.CUSTOMER
        current, missing = lookup(self.cache.cells, [cell for cell in aggregator.touched() if cell.scope is customer])
        # A customer created in this batch has no stored cells: asking for them was most of the misses.
        current.update(self.sink.load_cells(tx, [cell for cell in missing if cell.key not in result.created]))
        merged = aggregator.updates(current, clock.watermark, scope=customer)
        return _CustomerMetrics(aggregator, merged, clock.watermark)

    def _metrics(
        self, tx: Any, metrics: _CustomerMetrics, write: BatchWrite, records: ResultRecords, watermark: datetime | None
    ) -> None:
        """The rest of the batch's metric cells, under the clock's lock: the channel and overall cells merged, the
        customers' cells whose window the watermark closed since ``_customer_metrics`` turned final; their rows,
        and the figures that changed."""
        aggregator, merged = metrics.aggregator, metrics.merged
        current, missing = lookup(self.cache.cells, aggregator.touched())
        current.update(self.sink.load_cells(tx, missing))
        # Cells the watermark had closed stay final: a late event revises them with final figures.
        merged.extend(aggregator.updates(current, watermark))
        if watermark != metrics.watermark:
            aggregator.close(merged, watermark)
        for cell, counters in merged.counters.items():
            write.cells[cell] = cell_row(cell, counters, final=cell in merged.final)
        # Before the updates, as SQL deletes the removed cells' rows before writing: a cell removed and formed again
        # in one batch (a split re-forming a merged customer) ends with its new record.
        records.removed_metrics(write.removed_cells)
        records.metrics(merged.updates)

    def _experience_drops(
        self, tx: Any, write: BatchWrite, report: BatchReport, records: ResultRecords, revision: int
    ) -> None:
        """Decide again the experience-drop alerts whose short window or baseline the batch's cells changed; store
        the firing ones' figures, and publish every change of status. ``revision``: the batch's commit sequence
        (batches deciding them take the clock's lock one at a time, so it grows with every decision)."""
        policy = self.policies.drops
        check = experience_drops.to_check(write.cells, policy) if policy is not None else set()
        if policy is None or not check:
            return
        counters = self._shared_cells(tx, write, check)
        # A window without counters has no figures, and never had an alert: the windows after today, mostly.
        check = {cell for cell, held in counters.items() if held}
        counters.update(self._shared_cells(tx, write, experience_drops.needed(check, policy) - check))
        stored = self.sink.load_experience_alerts(tx, experience_drops.alert_ids(check, policy))
        now = report.committed_at or datetime.now(UTC)
        for drop, changed in experience_drops.redecide(check, counters, stored, policy):
            alert = experience_drops.to_alert(drop, policy, revision)
            write.experience_alerts.append(experience_alert_row(alert, now))
            if changed:
                records.experience_alert(alert)
                report.experience_alerts += 1

    def _shared_cells(self, tx: Any, write: BatchWrite, cells: Iterable[CellKey]) -> dict[CellKey, dict[str, float]]:
        """The counters of channel or overall ``cells``: the batch's own, else cached, else stored; empty for a cell
        that does not exist. Read under the clock's lock, the stored ones are cached, absent ones as empty (as good
        as absent to every reader): valid until another batch commits (``_lock_clock``)."""
        found = {cell: write.cells[cell].counters for cell in cells if cell in write.cells}
        cached, missing = lookup(self.cache.cells, [cell for cell in cells if cell not in found])
        loaded = self.sink.load_cells(tx, missing)
        loaded.update((cell, {}) for cell in missing if cell not in loaded)
        self.cache.cells.store(loaded.items())
        return {**found, **cached, **loaded}

    def _alerts(
        self, result: BatchResult, view: StateView, write: BatchWrite, report: BatchReport, records: ResultRecords
    ) -> None:
        """Evaluate the alert rules on the batch's contacts, surveys and negative moments."""
        evaluated: dict[str, list[Entry]] = {}
        for entry in result.entries:
            if entry.customer_id is None:
                continue  # unattributed: on nobody's timeline
            if entry.is_contact or entry.survey or NEGATIVE_MOMENTS.intersection(entry.moments):
                evaluated.setdefault(entry.customer_id, []).append(entry)
        fired: dict[str, Alert] = {}
        for customer_id, entries in evaluated.items():
            since = min(entry.occurred_at for entry in entries).timestamp() - self.policies.alerts.longest_window_s
            timeline = self._recent(view.customers[customer_id], since)
            for entry in entries:
                for alert in evaluate(entry, timeline, self.policies.alerts):
                    fired.setdefault(alert.alert_id, alert)
        self._alert_rows(fired.values(), write, report, records)

    def _recent(self, state: CustomerState, since: float) -> list[Entry]:
        """The customer's entries from ``since`` on that an alert rule can read (not every entry: building them
        would cost more than the rules)."""
        policy = self.stitcher.policy
        return [
            timeline_entry(state.customer_id, row, state.derive(row, policy))
            for row in state.history
            if row[T] >= since
            and (row[TYPE] in _ALERT_READ_TYPES or row[SURVEY] is not None or not _NEGATIVE.isdisjoint(row[MOMENTS]))
        ]

    def _alert_rows(
        self, alerts: Iterable[Alert], write: BatchWrite, report: BatchReport, records: ResultRecords
    ) -> None:
        for alert in alerts:
            write.alerts.append(alert_row(alert))
            records.alert(alert)
            report.alerts += 1

    # --- 6. event time ------------------------------------------------------------------------------

    def _follow(
        self,
        tx: Any,
        write: BatchWrite,
        report: BatchReport,
        records: ResultRecords,
        latest: dict[TopicPartition, float],
        backlog: Iterable[TopicPartition],
        clock: Clock,
        view: StateView,
    ) -> None:
        """Move each partition's event time and the group's watermark (``event_time``); sweep what it passed."""
        now = self.clock()
        known = self.sink.partition_times(tx, self.group_id)
        idle_s = self.settings.partition_idle_s
        # A backlog keeps its partition active; refreshed a few times per idle period, not on every tick.
        stale = [
            tp
            for tp in backlog
            if (p := known.get(tp)) is None or p.active_at is None or now - p.active_at > idle_s / 4
        ]
        write.partitions = event_time.advance(known, latest, stale, now)
        previous = None if clock.watermark is None else clock.watermark.timestamp()
        moved = event_time.watermark({**known, **write.partitions}, now, idle_s, previous, self._parked_from(tx, write))
        if moved is not None and moved != previous:
            write.watermark = _utc(moved)
        report.watermark = write.watermark or clock.watermark
        self._sweep(tx, view, write, report, records)

    def _parked_from(self, tx: Any, write: BatchWrite) -> float | None:
        """The earliest event time of the group's parked events once ``write`` commits (epoch seconds), if any."""
        if not self.sink.concurrent:
            return None
        times = [event.occurred_at for event in write.parked]
        if (stored := self.sink.oldest_parked(tx, self.group_id, write.unparked)) is not None:
            times.append(stored)
        return min(times).timestamp() if times else None

    def _sweep(self, tx: Any, view: StateView, write: BatchWrite, report: BatchReport, records: ResultRecords) -> None:
        """Follow event time: finalise windows that closed, alert on issues that became overdue.

        Both are decided from the watermark alone (windows: end + grace; issues: first contact + target), on
        every batch and tick, so where batches happen to be cut does not change what ends final.
        """
        watermark = write.watermark
        if watermark is None or watermark == self.swept_to:
            return
        aggregator = MetricAggregator(self.policies.metrics)
        ended_by = watermark - self.grace
        removed = set(write.removed_cells)
        # A cell this batch changed is finalised with its new counters, not the stored ones. A cell it created is
        # not stored yet: it is taken from the batch's rows, or it would stay provisional until the watermark moves
        # again, and a cell's last record would depend on where batches were cut. A cell a merge removed (moved
        # into the survivor's) is not finalised: its row would be written back.
        cells = {
            cell: write.cells[cell].counters if cell in write.cells else counters
            for cell, counters in self.sink.closable_cells(tx, ended_by).items()
            if cell not in removed
        }
        for cell, written in write.cells.items():
            if not written.final and written.window_end <= ended_by and cell not in removed:
                cells.setdefault(cell, written.counters)
        if cells:
            records.metrics(aggregator.finalise(cells, watermark))
            for cell, counters in cells.items():
                write.cells[cell] = cell_row(cell, counters, final=True)
        alerts: dict[str, Alert] = {}
        policy = self.stitcher.policy
        due = {
            cid: CustomerState.from_dict(data)
            for cid, data in self.sink.customers_due(tx, self.swept_to, watermark).items()
        }
        for row in write.customers:  # this batch's states are newer than the stored ones
            if row.overdue_at is not None and row.overdue_at <= watermark:
                due[row.customer_id] = view.customers[row.customer_id]
            else:
                due.pop(row.customer_id, None)
        for customer_id, state in due.items():
            issues = {
                issue.key: OpenIssueInfo(datetime.fromtimestamp(issue.first_contact_at, UTC))
                for issue in state.open_issues(policy)
            }
            for alert in overdue(customer_id, issues, watermark, self.policies.alerts, since=self.swept_to):
                alerts.setdefault(alert.alert_id, alert)
        self._alert_rows(alerts.values(), write, report, records)
        write.swept_to = watermark


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
