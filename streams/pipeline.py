"""One batch of input records through the whole domain, into one SQL transaction and one outbox row.

This is the worker's work without Faust: decode and validate events, skip what was already applied,
restore the history late events need, stitch identities and timelines, evaluate alerts, aggregate metrics,
follow event time per input partition, and write everything together with the input offsets. The Faust agent
(streams/worker.py) only feeds it batches (and, between them, ticks of the wall clock) and publishes the outbox.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Connection

from config.settings import Settings
from config.topics import Topics
from schemas.deadletter import DeadLetter
from schemas.outputs import NEGATIVE_MOMENTS, Alert, CustomerProfile, MetricScope, TimelineEntry
from schemas.touchpoint import TouchpointEvent
from sinks.store import BatchWrite, Clock, SqlStore, as_utc
from sinks.store import CellKey as SqlCell
from streams.domain import event_time
from streams.domain.aggregate import CellKey, MetricAggregator, MetricRow
from streams.domain.alerts import READ_TYPES, OpenIssueInfo, evaluate, overdue
from streams.domain.customer import (
    MOMENTS,
    REASON_PREFIX,
    SURVEY,
    TYPE,
    CustomerPolicy,
    CustomerState,
    T,
    is_kept,
    row_of,
    timeline_entry,
)
from streams.domain.event_time import TopicPartition
from streams.domain.identity import EventKeys
from streams.domain.stitching import NO_CUSTOMER, BatchResult, StateView, Stitcher
from streams.downstream import Outputs
from streams.policies import Policies
from streams.state_cache import StateCache, lookup

log = logging.getLogger(__name__)

_ENVELOPE = TypeAdapter(list[TouchpointEvent])
_SCOPE_NAMES = {scope: scope.value for scope in MetricScope}
_ALERT_READ_TYPES = frozenset(t.value for t in READ_TYPES)
_NEGATIVE = frozenset(m.value for m in NEGATIVE_MOMENTS)


class _AppliedElsewhere(Exception):
    """Another worker committed offsets of a partition in the batch after it was decoded."""


class InRecord(NamedTuple):
    """One Kafka record as the worker received it.

    A NamedTuple, not a dataclass: every batch crosses to the apply process pickled, and a tuple pickles and
    unpickles five times faster (5,000 records, both sides together: 6 ms instead of 30 ms).
    """

    topic: str
    partition: int
    offset: int
    #: None for a record without a value (a tombstone): dead-lettered, like every record that is not an event.
    value: bytes | None


#: Most dead letters one envelope record gives item by item; past that, one dead letter stands for the record.
MAX_ITEM_DEAD_LETTERS = 100
#: Bytes of an oversized record kept in its dead letter, so that the dead letter still fits a Kafka record.
TOO_LARGE_KEPT_BYTES = 64 * 1024


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
    alerts: int = 0
    #: The group's watermark after the batch.
    watermark: datetime | None = None
    outbox_id: int | None = None
    outputs: Outputs = field(default_factory=Outputs)
    #: ``outputs`` as the outbox row holds them (``Outputs.encode``), when the batch committed any.
    outbox: bytes | None = None
    applied_at: datetime | None = None
    committed_at: datetime | None = None

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


def record_fingerprint(value: bytes | None) -> str:
    """A short digest of a record's value, stored with its offset: the worker checks at start that the broker
    still holds the log this database followed (a fresh broker's records at the same offsets differ)."""
    return hashlib.blake2b(value or b"", digest_size=8).hexdigest()


class BatchProcessor:
    """Applies batches of input records to the SQL state, exactly once per input offset."""

    def __init__(self, settings: Settings, store: SqlStore, clock: Callable[[], float] = time.time) -> None:
        """``clock`` is the wall clock partitions go idle by (epoch seconds)."""
        self.settings = settings
        self.store = store
        self.clock = clock
        self.topics = Topics(settings.topic_prefix)
        self.group_id = settings.app_id
        self.policies = Policies.from_settings(settings)
        self.stitcher = Stitcher(self.policies)
        self.grace = timedelta(seconds=settings.window_grace_s)
        self.applied: dict[tuple[str, int], int] = {}
        self.watermark: datetime | None = None
        self.swept_to: datetime | None = None
        self._gaps_seen: dict[tuple[tuple[str, int], int], float] = {}
        self.cache = StateCache(settings.state_cache_customers)
        # Read on first use, not here: the database may be unreachable when the apply process starts, and a call
        # that fails is retried by the worker, whereas a process that cannot start stops it.
        self._loaded = False

    def reload(self) -> None:
        """Re-read applied offsets and the event-time clock (at start, after a rebalance or a failed write)."""
        self.applied = self.store.applied_offsets(self.group_id)
        self.watermark, self.swept_to, _ = self.store.clock(self.group_id)
        self.cache.clear()
        self._loaded = True

    def _load(self) -> None:
        if not self._loaded:
            self.reload()

    # --- decoding -------------------------------------------------------------------------------

    def decode(self, records: Sequence[InRecord], report: BatchReport) -> _Read:
        """Validate the new records' events into ``report``; return what was read per partition.

        Offsets are applied contiguously: a record at or below the applied offset is skipped (its effects are
        committed), and one beyond the next expected offset means records went missing on the way here (the
        consumer dropped a fetch during a rebalance): it is not applied, and the partition is sought back.
        """
        read = _Read()
        offsets = read.offsets
        prefix = f"{self.settings.topic_prefix}touchpoints."
        max_bytes = self.settings.max_record_bytes
        events = report.events
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
            _decode_record(rec, prefix, max_bytes, report)
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

    def _gap_is_real(self, tp: tuple[str, int], expected: int) -> bool:
        """True once seeking back to a missing offset has not brought it for a while: it is not in the log.

        Retention, compaction or a broker crash can leave offsets that hold no record; such a gap is accepted
        after ``offset_gap_grace_s``.
        """
        first_seen = self._gaps_seen.setdefault((tp, expected), time.monotonic())
        if time.monotonic() - first_seen > self.settings.offset_gap_grace_s:
            log.error("offset %d of %s is not in the log; continuing after the gap", expected, tp)
            return True
        return False

    # --- the batch --------------------------------------------------------------------------------

    def process(self, records: Sequence[InRecord], backlog: Iterable[TopicPartition] = ()) -> BatchReport:
        """Apply ``records`` in one transaction; return what was done and what to publish.

        ``backlog``: the worker's input partitions with records still to read, which hold the watermark.
        """
        self._load()
        while True:
            report = BatchReport()
            read = self.decode(records, report)
            if not read.offsets:
                return report
            try:
                with self.store.engine.begin() as conn:
                    clock = self._lock(conn, read.offsets)
                    result, write, view = self._apply(conn, report, read, backlog, clock)
            except _AppliedElsewhere:
                log.info("another worker applied records of this batch's partitions: reading its offsets")
                self.reload()
                continue
            except BaseException:
                self.cache.clear()  # cached states may hold changes that did not commit
                raise
            self._committed(clock, write, view, result.removed)
            report.committed_at = datetime.now(UTC)
            self.applied.update(read.offsets)
            return report

    def tick(self, backlog: Iterable[TopicPartition] = ()) -> BatchReport:
        """Follow the wall clock between batches: partitions gone idle stop holding the watermark back, and what
        it passes is swept (windows finalised, issues overdue). Writes nothing when nothing moved."""
        self._load()
        report = BatchReport()
        try:
            with self.store.engine.begin() as conn:
                clock = self._lock(conn, {})
                write = BatchWrite(group_id=self.group_id, offsets={}, worker_id=self.settings.worker_id)
                self._follow(conn, write, report, {}, backlog, clock, StateView())
                if not (write.partitions or write.watermark or write.swept_to):
                    return report
                write.outbox = report.outbox = report.outputs.encode() if report.outputs.records else None
                report.outbox_id = self.store.write(conn, write)
        except BaseException:
            self.cache.clear()
            raise
        self._committed(clock, write, StateView(), {})
        report.committed_at = datetime.now(UTC)
        return report

    def _lock(self, conn: Connection, offsets: dict[TopicPartition, int]) -> Clock:
        """Take the group's lock and read its clock as committed; check the batch's partitions were not applied
        meanwhile by another worker (``_AppliedElsewhere``), and the state cache against the commit sequence."""
        self.store.lock_group(conn, self.group_id)
        # Under the lock, the group's clock and offsets as committed: with several workers, each moves them. A
        # partition another worker applied since this batch was decoded (around a rebalance) is decoded again
        # from what it committed, so no record is applied twice.
        if offsets:
            stored = self.store.applied_offsets_in(conn, self.group_id)
            if any(stored.get(tp) != self.applied.get(tp) for tp in offsets):
                raise _AppliedElsewhere
        clock = self.store.clock_in(conn, self.group_id)
        self.watermark, self.swept_to = clock.watermark, clock.swept_to
        self.cache.check(clock.sequence)
        return clock

    def _committed(self, clock: Clock, write: BatchWrite, view: StateView, removed: Iterable[str]) -> None:
        """Remember what the transaction committed: the cache, the clock."""
        self.cache.committed(
            clock.sequence + int(write.state_changed),
            view.identities,
            view.customers,
            removed,
            ((_row_cell(row), row["counters"]) for row in write.cells),
            write.removed_cells,
        )
        self.watermark = write.watermark or self.watermark
        self.swept_to = write.swept_to or self.swept_to

    def _apply(
        self, conn: Connection, report: BatchReport, read: _Read, backlog: Iterable[TopicPartition], clock: Clock
    ) -> tuple[BatchResult, BatchWrite, StateView]:
        """The batch inside its transaction: load what it touches, apply it, write everything back."""
        events = report.events
        keys = self.stitcher.keys_of(events)
        identities, missing = lookup(self.cache.identities, {key for event_keys in keys for key in event_keys.keys})
        identities.update(self.store.load_identities(conn, missing))
        customers, missing = lookup(self.cache.customers, set(identities.values()))
        for customer_id, state in self.store.load_customers(conn, missing).items():
            customers[customer_id] = CustomerState.from_dict(state)
        applied = {
            event_id: NO_CUSTOMER if customer_id is None else customer_id
            for event_id, customer_id in self.store.load_applied(conn, {event.event_id for event in events}).items()
        }
        view = StateView(identities=identities, customers=customers, applied=applied)
        report.restored = self._restore(conn, view, self.stitcher.history_needs(events, keys, view))
        before = clock.watermark
        max_age = self.settings.max_event_age_s
        reject_before = None if before is None or max_age is None else before.timestamp() - max_age
        result = self.stitcher.apply(events, view, keys, reject_before=reject_before)
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
            state_changed=bool(events),
        )
        self._alerts(result, view, write, report)  # on the states as applied, with what was restored
        self.stitcher.close(view, result)
        self._stitching(result, view, report, write, keys)
        self._metrics(conn, result, write, report.outputs, before)
        self._follow(conn, write, report, read.latest, backlog, clock, view)
        for event in result.too_late:
            detail = (
                f"occurred_at {event.occurred_at.isoformat()} is older than the watermark "
                f"{before.isoformat() if before else '?'} minus CXSTREAM_MAX_EVENT_AGE_S"
            )
            report.dead_letters.append(_dead(event.channel.value, "too_late", detail, event.model_dump_json().encode()))
        for event, holder in result.conflicts:
            detail = (
                f"event_id {event.event_id} is already applied to customer {holder or '(none)'}, not to this record's"
            )
            dead = _dead(event.channel.value, "event_id_conflict", detail, event.model_dump_json().encode())
            report.dead_letters.append(dead)
        for dead in report.dead_letters:
            report.outputs.add(self.topics.deadletter, dead.channel or "", self._dead_letter_bytes(dead))
        write.outbox = report.outbox = report.outputs.encode() if report.outputs.records else None
        report.outbox_id = self.store.write(conn, write)
        return result, write, view

    def _restore(self, conn: Connection, view: StateView, needs: dict[str, float]) -> int:
        """Read back from the touchpoints table the history ``needs`` asks for; return how many customers."""
        if not needs:
            return 0
        ranges = {
            customer_id: (_utc(since), _utc(view.customers[customer_id].complete_from))
            for customer_id, since in needs.items()
        }
        for customer_id, (entries, previous) in self.store.load_history(conn, ranges).items():
            rows = [row for row in map(row_of, entries) if is_kept(row)]
            purchase = None if previous is None else (previous[0].timestamp(), previous[1])
            view.customers[customer_id].restore(rows, purchase, needs[customer_id])
        return len(needs)

    def reject(self, records: Sequence[InRecord], reason: str, detail: str) -> BatchReport:
        """Dead-letter records the database will never accept, and mark them applied, in one transaction."""
        self._load()
        report = BatchReport()
        offsets: dict[tuple[str, int], int] = {}
        fingerprints: dict[tuple[str, int], str] = {}
        prefix = f"{self.settings.topic_prefix}touchpoints."
        for rec in records:
            tp = (rec.topic, rec.partition)
            if rec.offset > self.applied.get(tp, -1):
                if rec.offset > offsets.get(tp, -1):
                    offsets[tp], fingerprints[tp] = rec.offset, record_fingerprint(rec.value)
                dead = _dead(rec.topic.removeprefix(prefix), reason, detail, rec.value or b"", rec)
                report.dead_letters.append(dead)
                report.outputs.add(self.topics.deadletter, dead.channel or "", self._dead_letter_bytes(dead))
        if offsets:
            report.outbox = report.outputs.encode()
            with self.store.engine.begin() as conn:
                write = BatchWrite(
                    group_id=self.group_id,
                    offsets=offsets,
                    fingerprints=fingerprints,
                    outbox=report.outbox,
                    worker_id=self.settings.worker_id,
                )
                report.outbox_id = self.store.write(conn, write)
            self.applied.update(offsets)
        return report

    def _dead_letter_bytes(self, dead: DeadLetter) -> bytes:
        """A dead letter as published: with its original bytes, or what CXSTREAM_DEAD_LETTER_ORIGINALS keeps of them."""
        return dead.kept(self.settings.dead_letter_originals, self.settings.identifier_salt).model_dump_json().encode()

    def _stitching(
        self, result: BatchResult, view: StateView, report: BatchReport, write: BatchWrite, keys: Sequence[EventKeys]
    ) -> None:
        topics, outputs = self.topics, report.outputs
        for merge in result.merges:
            write.merges.append(
                {
                    "survivor_id": merge.survivor_id,
                    "merged_id": merge.merged_id,
                    "event_id": merge.event_id,
                    "identifiers": {str(k): v for k, v in merge.identifiers.items()},
                    "occurred_at": as_utc(merge.occurred_at),
                }
            )
            outputs.add(topics.identity, merge.merged_id, merge.model_dump_json().encode())
        write.removed_customers = list(result.removed)
        for profile in result.profiles:
            outputs.add(topics.profiles, profile.customer_id, profile.model_dump_json().encode())
            if profile.merged_into is None:
                state = view.customers[profile.customer_id]
                write.customers.append(customer_row(profile, state, self._overdue_at(state)))
        write.identities = identity_rows(report.events, keys, result, view.identities)
        now = report.committed_at or datetime.now(UTC)
        for entry in result.entries:
            write.touchpoints.append(touchpoint_row(entry, now))
            # An unattributed entry has no customer to key it by: its event id keeps its versions together.
            outputs.add(topics.timeline, entry.customer_id or entry.event_id, entry.model_dump_json().encode())

    def _overdue_at(self, state: CustomerState) -> datetime | None:
        """When the customer's earliest open issue passes its target time (None without open issues)."""
        return overdue_at(state, self.stitcher.policy, self.settings.issue_target_s)

    def _metrics(
        self,
        conn: Connection,
        result: BatchResult,
        write: BatchWrite,
        outputs: Outputs,
        watermark: datetime | None,
    ) -> None:
        aggregator = MetricAggregator(self.policies.metrics)
        survivors = {m.merged_id: m.survivor_id for m in result.merges}
        if survivors:
            # Merged customers' metric cells move into the survivor's: history is combined, not lost.
            for (scope, key, window, start), counters in self.store.load_customer_cells(conn, survivors).items():
                survivor = survivors[key]
                while survivor in survivors:
                    survivor = survivors[survivor]
                aggregator.add_counters(CellKey(MetricScope(scope), survivor, window, int(start.timestamp())), counters)
                write.removed_cells.append((scope, key, window, start))
        for entry in result.entries:
            old = result.replaced.get(entry.event_id)
            if old is not None:
                aggregator.retract(old)
            aggregator.add(entry)
        touched = aggregator.touched()
        stored, missing = lookup(self.cache.cells, [_sql_cell(c) for c in touched])
        # A customer created in this batch has no stored cells: asking for them was most of the misses.
        customer, created = MetricScope.CUSTOMER.value, result.created
        stored.update(self.store.load_cells(conn, [c for c in missing if c[0] != customer or c[1] not in created]))
        current = {cell: stored[_sql_cell(cell)] for cell in touched if _sql_cell(cell) in stored}
        # Cells the watermark had closed stay final: a late event revises them with final figures.
        merged = aggregator.updates(current, watermark)
        for cell, counters in merged.counters.items():
            write.cells.append(cell_row(cell, counters, final=cell in merged.final))
        self._metric_outputs(merged.updates, outputs)

    def _metric_outputs(self, rows: Iterable[MetricRow], outputs: Outputs) -> None:
        """Publish metric figures (SQL holds only the cells' counters: the ``metrics`` view computes the same)."""
        topic, add = self.topics.metrics, outputs.add
        starts: dict[datetime, str] = {}
        for scope, key, metric, window, start, end, numerator, denominator, value, status, revision in rows:
            scope_name = _SCOPE_NAMES[scope]
            data = {
                "scope": scope_name,
                "key": key,
                "metric": metric,
                "window": window,
                "window_start": start,
                "window_end": end,
                "numerator": numerator,
                "denominator": denominator,
                "value": value,
                "status": status,
                "revision": revision,
            }
            start_text = starts.get(start)
            if start_text is None:
                start_text = starts[start] = start.isoformat()
            entity = f"{scope_name}|{key}"
            add(topic, f"{entity}|{metric}|{window}|{start_text}", orjson.dumps(data), entity)

    def _alerts(self, result: BatchResult, view: StateView, write: BatchWrite, report: BatchReport) -> None:
        evaluated: dict[str, list[TimelineEntry]] = {}
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
        self._alert_rows(fired.values(), write, report)

    def _recent(self, state: CustomerState, since: float) -> list[TimelineEntry]:
        """The customer's entries from ``since`` on that an alert rule can read (not every entry: building them
        would cost more than the rules)."""
        policy = self.stitcher.policy
        return [
            timeline_entry(state.customer_id, row, state.derive(row, policy))
            for row in state.history
            if row[T] >= since
            and (row[TYPE] in _ALERT_READ_TYPES or row[SURVEY] is not None or not _NEGATIVE.isdisjoint(row[MOMENTS]))
        ]

    def _alert_rows(self, alerts: Iterable[Alert], write: BatchWrite, report: BatchReport) -> None:
        for alert in alerts:
            write.alerts.append(
                {
                    "alert_id": alert.alert_id,
                    "customer_id": alert.customer_id,
                    "rule": alert.rule,
                    "severity": alert.severity.value,
                    "occurred_at": as_utc(alert.occurred_at),
                    "evidence": list(alert.evidence),
                    "message": alert.message,
                }
            )
            report.outputs.add(self.topics.alerts, alert.customer_id, alert.model_dump_json().encode())
            report.alerts += 1

    def _follow(
        self,
        conn: Connection,
        write: BatchWrite,
        report: BatchReport,
        latest: dict[TopicPartition, float],
        backlog: Iterable[TopicPartition],
        clock: Clock,
        view: StateView,
    ) -> None:
        """Move each partition's event time and the group's watermark (``event_time``); sweep what it passed."""
        now = self.clock()
        known = self.store.partition_times(conn, self.group_id)
        idle_s = self.settings.partition_idle_s
        # A backlog keeps its partition active; refreshed a few times per idle period, not on every tick.
        stale = [
            tp
            for tp in backlog
            if (p := known.get(tp)) is None or p.active_at is None or now - p.active_at > idle_s / 4
        ]
        write.partitions = event_time.advance(known, latest, stale, now)
        previous = None if clock.watermark is None else clock.watermark.timestamp()
        moved = event_time.watermark({**known, **write.partitions}, now, idle_s, previous)
        if moved is not None and moved != previous:
            write.watermark = _utc(moved)
        report.watermark = write.watermark or clock.watermark
        self._sweep(conn, view, write, report)

    def _sweep(self, conn: Connection, view: StateView, write: BatchWrite, report: BatchReport) -> None:
        """Follow event time: finalise windows that closed, alert on issues that became overdue.

        Both are decided from the watermark alone (windows: end + grace; issues: first contact + target), on
        every batch and tick, so where batches happen to be cut does not change what ends final.
        """
        watermark = write.watermark
        if watermark is None or watermark == self.swept_to:
            return
        aggregator = MetricAggregator(self.policies.metrics)
        closable = self.store.closable_cells(conn, watermark - self.grace)
        if closable:
            written = {_row_cell(row): row for row in write.cells}
            # A cell this batch changed is finalised with its new counters, not the stored ones.
            cells = {
                _domain_cell(key): written[key]["counters"] if key in written else counters
                for key, counters in closable.items()
            }
            self._metric_outputs(aggregator.finalise(cells, watermark), report.outputs)
            for cell, counters in cells.items():
                written[_sql_cell(cell)] = cell_row(cell, counters, final=True)
            write.cells = list(written.values())
        alerts: dict[str, Alert] = {}
        policy = self.stitcher.policy
        due = {
            cid: CustomerState.from_dict(data)
            for cid, data in self.store.customers_due(conn, self.swept_to, watermark).items()
        }
        for row in write.customers:  # this batch's states are newer than the stored ones
            if row["overdue_at"] is not None and row["overdue_at"] <= watermark:
                due[row["customer_id"]] = view.customers[row["customer_id"]]
            else:
                due.pop(row["customer_id"], None)
        for customer_id, state in due.items():
            issues = {
                issue.key: OpenIssueInfo(datetime.fromtimestamp(issue.first_contact_at, UTC))
                for issue in state.open_issues(policy)
            }
            for alert in overdue(customer_id, issues, watermark, self.policies.alerts, since=self.swept_to):
                alerts.setdefault(alert.alert_id, alert)
        self._alert_rows(alerts.values(), write, report)
        write.swept_to = watermark


def overdue_at(state: CustomerState, policy: CustomerPolicy, issue_target_s: float) -> datetime | None:
    """When the customer's earliest open issue passes its target time (None without open issues)."""
    firsts = [issue.first_contact_at for issue in state.open_issues(policy)]
    if not firsts:
        return None
    return datetime.fromtimestamp(min(firsts) + issue_target_s, UTC)


def customer_row(profile: CustomerProfile, state: CustomerState, overdue: datetime | None) -> dict[str, Any]:
    """The ``customers`` row of a customer's profile and state."""
    return {
        "customer_id": profile.customer_id,
        "first_seen": as_utc(profile.first_seen),
        "last_seen": as_utc(profile.last_seen),
        "stage": profile.stage.value,
        "events": profile.events,
        "purchases": profile.purchases,
        "revenue": profile.revenue,
        "contacts": profile.contacts,
        "returns": profile.returns,
        "open_issues": profile.open_issues,
        "overdue_at": overdue,
        "state": state.to_dict(),
    }


def identity_rows(
    events: Sequence[TouchpointEvent], keys: Sequence[EventKeys], result: BatchResult, identities: dict[str, str]
) -> list[dict[str, Any]]:
    """Identity rows of the keys the batch's accepted events carried, with when each was first and last seen.

    Keys of a merged customer that no event carried are re-pointed by the merge itself.
    """
    accepted = {entry.event_id for entry in result.entries}
    # By object, not id: a conflicting record shares its id with an accepted event of another customer.
    conflicting = {id(event) for event, _ in result.conflicts}
    seen: dict[str, tuple[datetime, datetime]] = {}
    for event, event_keys in zip(events, keys, strict=True):
        if event.event_id not in accepted or id(event) in conflicting:
            continue
        at = as_utc(event.occurred_at)
        for key in event_keys.keys:
            if key in identities:
                first, last = seen.get(key, (at, at))
                seen[key] = (min(first, at), max(last, at))
    rows = []
    for key, (first, last) in seen.items():
        id_type, _, id_value = key.partition(":")
        rows.append(
            {
                "identifier": key,
                "id_type": id_type,
                "id_value": id_value,
                "customer_id": identities[key],
                "first_seen": first,
                "last_seen": last,
            }
        )
    return rows


def _decode_record(rec: InRecord, prefix: str, max_bytes: int, report: BatchReport) -> None:
    """Add a record's events to ``report``, and a dead letter for each that is not valid.

    No record can stop the worker: one without a value (a tombstone), an empty one, one over ``max_bytes``,
    one that is not JSON or holds no event is dead-lettered with where it was read from, and skipped.
    """
    value = rec.value
    if value and len(value) <= max_bytes:
        try:
            # The usual case in one call into pydantic-core (parsing included); anything wrong is sorted out
            # below, with the reason each dead letter needs.
            if value[:1] == b"[":
                report.events += _ENVELOPE.validate_json(value)
            else:
                report.events.append(TouchpointEvent.model_validate_json(value))
            return
        except ValidationError:
            pass
    channel = rec.topic.removeprefix(prefix)

    def dead(reason: str, detail: str, raw: bytes) -> None:
        where = f"{rec.topic}[{rec.partition}] offset {rec.offset}"
        report.dead_letters.append(_dead(channel, reason, f"{detail} ({where})", raw, rec))

    if value is None or not value or value.isspace():
        what = "a record without a value (a tombstone)" if value is None else "an empty record"
        dead("empty_record", f"{what}: events are JSON objects or arrays of them", value or b"")
        return
    if len(value) > max_bytes:
        detail = (
            f"{len(value)} bytes, over CXSTREAM_MAX_RECORD_BYTES={max_bytes}; the first {TOO_LARGE_KEPT_BYTES} kept"
        )
        dead("record_too_large", detail, value[:TOO_LARGE_KEPT_BYTES])
        return
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        dead("invalid_json", str(exc), value)
        return
    items = body if isinstance(body, list) else [body]
    invalid: list[tuple[int, Any, ValidationError]] = []
    for position, item in enumerate(items, 1):
        try:
            report.events.append(TouchpointEvent.model_validate(item))
        except ValidationError as exc:
            invalid.append((position, item, exc))
    if len(items) == 1 and invalid:
        dead("validation_error", _describe(invalid[0][2]), value)
    elif len(invalid) > MAX_ITEM_DEAD_LETTERS:
        # An envelope of garbage: one dead letter with the whole record, not one per item (memory, and the
        # dead-letter topic, stay bounded by the record's size).
        first = "; ".join(f"item {n}: {_describe(exc)}" for n, _, exc in invalid[:3])
        dead("validation_error", f"{len(invalid)} of {len(items)} items are not valid events ({first}; ...)", value)
    else:
        for position, item, exc in invalid:
            dead("validation_error", f"item {position} of {len(items)}: {_describe(exc)}", orjson.dumps(item))


def _dead(channel: str | None, reason: str, detail: str, raw: bytes, rec: InRecord | None = None) -> DeadLetter:
    return DeadLetter(
        channel=channel,
        reason=reason,
        detail=detail,
        stage="worker",
        rejected_at=datetime.now(UTC),
        original_b64=DeadLetter.encode(raw),
        topic=None if rec is None else rec.topic,
        partition=None if rec is None else rec.partition,
        offset=None if rec is None else rec.offset,
    )


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(record)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def _sql_cell(cell: CellKey) -> SqlCell:
    return (cell.scope.value, cell.key, cell.window, cell.window_start)


def _domain_cell(cell: SqlCell) -> CellKey:
    scope, key, window, start = cell
    return CellKey(MetricScope(scope), key, window, int(start.timestamp()))


def _row_cell(row: dict[str, Any]) -> SqlCell:
    return (row["scope"], row["key"], row["window"], row["window_start"])


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def cell_row(cell: CellKey, counters: dict[str, float], *, final: bool) -> dict[str, Any]:
    """The ``metric_cells`` row of a cell's counters."""
    return {
        "scope": cell.scope.value,
        "key": cell.key,
        "window": cell.window,
        "window_start": cell.window_start,
        "window_end": cell.window_end,
        "counters": counters,
        "final": final,
    }


def touchpoint_row(entry: TimelineEntry, now: datetime) -> dict[str, Any]:
    """The ``touchpoints`` row of a timeline entry committed at ``now``."""
    survey = entry.survey
    key = entry.issue_key
    return {
        "event_id": entry.event_id,
        "customer_id": entry.customer_id,
        "channel": entry.channel.value,
        "type": entry.type.value,
        "occurred_at": as_utc(entry.occurred_at),
        "received_at": as_utc(entry.received_at),
        "committed_at": now,
        "stage": entry.stage.value,
        "moments": ",".join(m.value for m in entry.moments),
        "amount": entry.amount,
        "currency": entry.currency,
        "issue_id": None if key is None or key.startswith(REASON_PREFIX) else key,
        "issue_key": entry.issue_key,
        "resolved": entry.resolved,
        "transfers": entry.transfers,
        "repeat_contact": entry.repeat_contact,
        "nps": survey.nps if survey else None,
        "csat": survey.csat if survey else None,
        "ces": survey.ces if survey else None,
        "source_id": entry.source_id,
    }
