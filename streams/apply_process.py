"""The worker's database work in a process of its own, beside the Faust process.

Why a process: a batch's domain work and SQL (stitching, metrics, rows, one transaction) and Faust's
per-record work (~100-250 µs a record, docs/architecture.md §7) are both Python and were paid on one GIL, one after
the other, on a machine with a second core idle. In this process a batch is applied while the Faust process
takes the next one and publishes the previous one's outputs.

Nothing about the guarantees moves: the transaction (state, results, offsets, outbox row) is still one, in
one place, and the Faust process acknowledges records only once it returns. The process dies with its parent
(``PR_SET_PDEATHSIG``): a killed worker leaves no writer behind that could commit after its successor started.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import multiprocessing
import os
import signal
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from operator import attrgetter
from typing import Any, TypeVar, cast

from sqlalchemy.exc import DBAPIError, OperationalError

from config.settings import Settings
from sinks.contract import Contended, OutboxRow
from sinks.database import make_engine
from sinks.sql import SqlSink
from streams.domain.event_time import TopicPartition
from streams.lifetime import die_with_parent
from streams.pipeline import BatchProcessor, BatchReport, InRecord

T = TypeVar("T")

#: The processor of this process, when it is the apply process (set by ``_start``).
_processor: BatchProcessor | None = None

#: The highest id of this worker's outbox rows the Faust process knows of (read at start by ``pending_outbox``, or
#: returned with a summary); -1: none.
_outbox_told = -1

#: A call failed since the last summary was returned: it may have committed all the same (see ``_told``).
_unsure = False


class TransientDatabaseError(Exception):
    """The database could not be reached or was busy; the call is worth retrying (pickles across processes)."""


def is_transient(exc: BaseException) -> bool:
    """True for database errors worth retrying (connection lost, server down, lock timeout, a deadlock with
    another worker's transaction outside a batch: ``Contended``)."""
    if isinstance(exc, OperationalError | TransientDatabaseError | Contended):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """What the Faust process needs of an applied batch: what to publish, where to seek, what to count."""

    events_by_channel: dict[str, int] = field(default_factory=dict)
    events: int = 0
    applied: dict[tuple[str, int], int] = field(default_factory=dict)
    gaps: dict[tuple[str, int], int] = field(default_factory=dict)
    outbox_id: int | None = None
    #: The outbox row's payload (``Outputs.encode``): one bytes object crosses to the Faust process, not the
    #: thousands of records it holds (pickling those kept the apply process from its next batch).
    outbox: bytes | None = None
    #: This worker's outbox rows committed by calls that seemed to fail (``_told``), oldest first: published before
    #: ``outbox``.
    unreported: tuple[OutboxRow, ...] = ()
    #: Counters of the domain's outcome; zero when nothing was applied.
    duplicates: int = 0
    late_accepted: int = 0
    too_late: int = 0
    unattributed: int = 0
    merges: int = 0
    #: Customers split off by splits made by hand.
    splits: int = 0
    #: Splits made by hand refused (their customer over CXSTREAM_SPLIT_MAX_TOUCHPOINTS).
    splits_refused: int = 0
    alerts: int = 0
    blocked: int = 0
    over_limit: int = 0
    #: Identifier links refused by a never-link rule.
    kept_apart: int = 0
    #: Identifier links refused because the merge would be over CXSTREAM_MERGE_MAX_TOUCHPOINTS.
    merge_too_large: int = 0
    #: Customers that came to hold more than CXSTREAM_MERGE_MAX_TOUCHPOINTS touchpoints in the batch.
    outgrown: tuple[str, ...] = ()
    #: Customers whose history was read back from SQL for late events.
    restored: int = 0
    #: Dead letters of the batch by reason.
    rejected: dict[str, int] = field(default_factory=dict)
    #: The group's event-time watermark after the batch.
    watermark: datetime | None = None
    #: Input partitions the batch read new records of (0: nothing new, every record was a redelivery).
    partitions: int = 0
    #: Seconds the batch spent taking locks (other workers' batches holding them, mostly), and times it was
    #: applied again after contending with one.
    lock_wait_s: dict[str, float] = field(default_factory=dict)
    retries: int = 0
    #: Events dropped because they carry an erased person's identifier.
    suppressed: int = 0
    #: Events parked (another worker's batch held their customer), and parked events taken (PostgreSQL).
    parked: int = 0
    unparked: int = 0
    #: Seconds from each new entry's ``received_at`` to the batch's apply and commit.
    processing_s: list[float] = field(default_factory=list)
    end_to_end_s: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, report: BatchReport, applied: dict[tuple[str, int], int]) -> BatchSummary:
        """Summarise ``report``; ``applied`` is the processor's applied offsets after it."""
        base = cls(
            events_by_channel={
                channel.value: n for channel, n in Counter(map(attrgetter("channel"), report.events)).items()
            },
            events=len(report.events),
            applied=dict(applied),
            gaps=report.gaps,
            outbox_id=report.outbox_id,
            outbox=report.outbox,
            rejected=dict(report.rejected),
            watermark=report.watermark,
            partitions=report.partitions,
            alerts=report.alerts,
            splits_refused=report.splits_refused,
            lock_wait_s=dict(report.lock_wait_s),
            retries=report.retries,
            suppressed=report.suppressed,
            parked=len(report.parked),
            unparked=report.unparked,
        )
        result, committed = report.result, report.committed_at
        if result is None or committed is None:
            return base
        applied_at = report.applied_at or committed
        fresh = [e.received_at for e in result.entries if e.event_id not in result.replaced]
        return replace(
            base,
            duplicates=result.duplicates,
            late_accepted=report.late_accepted,
            too_late=len(result.too_late),
            unattributed=len(result.unattributed),
            restored=report.restored,
            merges=len(result.merges),
            splits=len(result.splits),
            blocked=result.blocked,
            over_limit=result.over_limit,
            kept_apart=result.apart,
            merge_too_large=result.over_bound,
            outgrown=tuple(result.outgrown),
            processing_s=_seconds_since(fresh, applied_at),
            end_to_end_s=_seconds_since(fresh, committed),
        )


def _seconds_since(times: list[datetime], until: datetime) -> list[float]:
    return [(until - at).total_seconds() for at in times]


class ApplyProcess:
    """One child process holding the worker's BatchProcessor; calls run there one at a time, in order."""

    def __init__(self, settings: Settings, loglevel: str = "info") -> None:
        # spawn, not fork: the Faust process has threads (its SQL engine, aiohttp) a fork would copy mid-state.
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start,
            initargs=(settings, os.getpid(), loglevel),
        )

    async def run(self, work: Callable[..., T], *args: Any, reload: bool = False) -> T:
        """Run ``work(processor, *args)`` in the apply process (after re-reading its state if ``reload``)."""
        call = functools.partial(_call, work, reload, *args)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)


# --- in the apply process ---------------------------------------------------------------------------


def _start(settings: Settings, parent: int, loglevel: str) -> None:
    global _processor
    die_with_parent(signal.SIGKILL, parent)
    # The worker's log format (Faust's), marked as this process's lines.
    logging.basicConfig(
        level=loglevel.upper(), format="[%(asctime)s] [%(process)s] [%(levelname)s] [apply] %(name)s: %(message)s"
    )
    # Ctrl-C in a terminal reaches the whole process group: the parent decides when this process stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _processor = BatchProcessor(settings, SqlSink(make_engine(settings.database_url, writer=True)))
    tune_collector()


def tune_collector() -> None:
    """Freeze what start-up loaded and make generation-0 collections rare.

    A batch allocates hundreds of thousands of short-lived, acyclic objects (rows, dicts, models); the
    default generation-0 threshold of 700 runs the cycle collector thousands of times per batch. Raising
    it, and freezing what start-up loaded, measured ~20% faster batches here.
    """
    gc.freeze()
    gc.set_threshold(100_000, 20, 20)


def _call(work: Callable[..., T], reload: bool, *args: Any) -> T:
    global _unsure
    processor = _processor
    assert processor is not None, "not the apply process"
    try:
        if reload:
            processor.reload()
        result = work(processor, *args)
        return cast(T, _told(processor, result)) if isinstance(result, BatchSummary) else result
    except Exception as exc:
        _unsure = True
        # The driver's exceptions do not always survive pickling; whether to retry is decided here.
        if is_transient(exc) and not isinstance(exc, TransientDatabaseError):
            raise TransientDatabaseError(f"{exc.__class__.__name__}: {exc}") from None
        raise


def _told(processor: BatchProcessor, summary: BatchSummary) -> BatchSummary:
    """``summary``, with the outbox rows of this worker that no summary returned, after a call failed.

    A connection that breaks while its COMMIT is on the way fails the call, yet the server may have committed: the
    worker applies the records again, finds them applied, and no summary would ever carry that commit's outbox row,
    which the running worker would then never publish (``pending_outbox`` finds it only at the next start). This
    process commits one transaction at a time, so this worker's rows above the last one returned, other than the
    summary's own, are exactly those. (A retried call waits for the locks the lost transaction held, partitions and
    clock, or finds its records applied: its commit is visible by then.)
    """
    global _outbox_told, _unsure
    if _unsure:
        rows = processor.sink.outbox_after(processor.group_id, processor.settings.worker_id, _outbox_told)
        unreported = tuple(row for row in rows if row.id != summary.outbox_id)
        if unreported:
            summary = replace(summary, unreported=unreported)
        _unsure = False
    told = [row.id for row in summary.unreported]
    if summary.outbox_id is not None:
        told.append(summary.outbox_id)
    _outbox_told = max([_outbox_told, *told])
    return summary


#: Batches between full cycle collections (see ``settle_heap``).
FULL_COLLECTION_EVERY = 1_000

_batches_since_collection = 0


def without_cycle_collector(work: Callable[..., T], *args: Any) -> T:
    """Run ``work`` with the cycle collector paused (``settle_heap`` tidies up once its result is dropped).

    A batch keeps a million young objects alive until it ends (events, rows, entries, records); with the
    collector on, each generation-0 pass walks the hundred thousand made since the last one, only to
    promote them: measured as 8% of a batch's time. Nothing a batch makes needs a cycle collection.
    """
    gc.disable()
    try:
        return work(*args)
    finally:
        gc.enable()


def settle_heap() -> None:
    """After a batch, once its report is dropped: free the few cycles it made, freeze what outlives it.

    A young collection then walks only what the batch left alive (about 10 ms; about 180 small cycles freed);
    walking the batch's report as well cost 16 µs an event. What outlives the batch (the state cache's
    customer states and rows) is frozen (``gc.freeze``), so no collection walks it again: 9-10 µs an event less,
    measured in paired runs. Cycles among frozen objects that become garbage later (none were found in a
    100,000-event run) wait for a full collection, every ``FULL_COLLECTION_EVERY`` batches: one every 50 batches
    was 3.6% of the apply process's time in ``make bench``, as a full collection walks the whole cache.
    """
    global _batches_since_collection
    _batches_since_collection += 1
    if _batches_since_collection >= FULL_COLLECTION_EVERY:
        _batches_since_collection = 0
        gc.unfreeze()
        gc.collect()
    else:
        gc.collect(0)
    gc.freeze()


def process(
    processor: BatchProcessor,
    records: Sequence[InRecord],
    backlog: Collection[TopicPartition] = (),
    parked: Sequence[int] | None = None,
    force: bool = False,
) -> BatchSummary:
    """Apply ``records`` in one transaction (see BatchProcessor.process)."""
    summary = without_cycle_collector(_summarised, processor, records, backlog, parked, force)
    settle_heap()
    return summary


def _summarised(
    processor: BatchProcessor,
    records: Sequence[InRecord],
    backlog: Collection[TopicPartition],
    parked: Sequence[int] | None,
    force: bool,
) -> BatchSummary:
    # The report is summarised and dropped with the collector still paused: the first allocation after
    # gc.enable() runs a young collection, which would walk the whole report (6 µs an event, bench.apply).
    return BatchSummary.of(processor.process(records, backlog, parked, force), processor.applied)


def last_unparked(processor: BatchProcessor) -> list[int]:
    """The ids of the parked events the last batch took, committed or not (see BatchProcessor.process)."""
    return list(processor.last_unparked)


def reject_parked(processor: BatchProcessor, row_id: int, reason: str, detail: str) -> BatchSummary:
    """Dead-letter a parked event the database will never accept (see BatchProcessor.reject_parked)."""
    return BatchSummary.of(processor.reject_parked(row_id, reason, detail), processor.applied)


def tick(processor: BatchProcessor, backlog: Collection[TopicPartition] = ()) -> BatchSummary:
    """Follow the wall clock between batches (see BatchProcessor.tick); also shows the process still answers."""
    return BatchSummary.of(processor.tick(backlog), processor.applied)


def reject(processor: BatchProcessor, records: Sequence[InRecord], reason: str, detail: str) -> BatchSummary:
    """Dead-letter records the database will never accept (see BatchProcessor.reject)."""
    return BatchSummary.of(processor.reject(records, reason, detail), processor.applied)


def reload(processor: BatchProcessor) -> dict[tuple[str, int], int]:
    """Re-read applied offsets and the clock; return the offsets."""
    processor.reload()
    return dict(processor.applied)


def pending_outbox(processor: BatchProcessor, worker_id: str, orphaned_before: datetime) -> tuple[str, list[OutboxRow]]:
    """The database's id and the outbox rows to publish at start (see SqlSink.pending_outbox)."""
    global _outbox_told
    rows = processor.sink.pending_outbox(processor.group_id, worker_id, orphaned_before)
    _outbox_told = max([_outbox_told, *(row.id for row in rows if row.worker_id == worker_id)])
    return processor.sink.database_id(), rows


def delete_outbox(processor: BatchProcessor, ids: Sequence[int]) -> None:
    """Forget published outbox rows (see SqlSink.delete_outbox)."""
    processor.sink.delete_outbox(ids)
