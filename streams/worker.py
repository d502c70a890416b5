"""The Faust application: one agent over every channel topic, feeding batches to the apply process.

Why one agent and no internal hops: every Faust hop costs a full per-record pass (~200-260 µs here,
docs/architecture.md §7), and every per-event table write as much again. State lives in the results database
and is written once per batch with the input offsets, so stitching, timelines, metrics and alerts need
no repartition topic and no Faust table: one pass over the input, one transaction per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import faust
import orjson
from aiohttp import web
from faust.types import TP
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import OperationalError

from config.settings import Settings, SettingsError, exposure_problems
from config.topics import Topics
from schemas.deadletter import label_values
from sinks.contract import OutboxRow
from sinks.database import make_engine, upgrade
from sinks.lease import LeaseUncertain, WorkerLease
from sinks.queries import ENGAGEMENT_QUANTILES, engagement_quantiles
from sinks.sql import SqlSink, current_experience_drops, customers_count
from streams import apply_process
from streams.apply_process import ApplyProcess, BatchSummary, is_transient, tune_collector
from streams.batch_bound import BatchBound
from streams.collector import SEGMENT_PATHS, Collector, CollectorReply
from streams.downstream import DownstreamProducer, OutboxPayload, OutboxPublisher
from streams.erasure import restore_suppressions
from streams.faust_app import App
from streams.http import CollectorHttp, application_options, enqueue_with
from streams.identity_rules import record_rules_at_start
from streams.kafka import LogMismatch, missing_applied_records
from streams.observability import EngagementCollector, Instruments
from streams.pipeline import InRecord, record_fingerprint
from streams.policies import drop_policy

log = logging.getLogger(__name__)

T = TypeVar("T")
Done = TypeVar("Done")

#: A committed transaction's summary and the seconds it took, from submitting it to its summary.
Applied = tuple[BatchSummary, float]

#: Age after which another worker's unpublished outbox row counts as orphaned (its worker is gone) and is
#: published by a worker starting up. A live worker publishes a row within seconds of committing it. Longer than the
#: broker keeps a vanished worker's transaction open (downstream.TRANSACTION_TIMEOUT_MS): rows are taken over
#: only once their worker's unfinished transaction is aborted.
ORPHANED_OUTBOX_S = 120.0

#: Seconds between ticks of the wall clock (see ``follow_the_clock``): idle partitions, sweeps, and the check
#: that the apply process still answers.
TICK_S = 1.0

#: Longest pause between retries of a failing database write.
MAX_BACKOFF_S = 10.0

#: Seconds between checks of the worker id's lease: by a worker waiting for it, and by the holder (whose
#: PostgreSQL session may have ended in an outage, dropping the lease with it).
LEASE_CHECK_S = 2.0

#: A worker waiting for its id's lease says so at most this often, seconds.
LEASE_SAY_S = 30.0

#: A worker says it waits for its id's lease once it has waited this long, seconds: a restart overlapping the end of
#: the process it replaces waits a moment, which is no misconfiguration.
LEASE_FIRST_SAY_S = 5.0


class Worker:
    """Ties the Faust app, the apply process, the outbox publisher and the Prometheus instruments together."""

    def __init__(self, settings: Settings, loglevel: str = "info") -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.instruments = Instruments(settings.worker_id)
        # Held by the agent's batches and the clock's, each from its call to the apply process to settling a failure:
        # settling asks which parked events "the last batch" took, which the other's batch must not be in between
        # (the clock's then read none, took its failure for not the parked events', and stopped the worker).
        self.turn = asyncio.Lock()
        self.engine = make_engine(settings.database_url)  # this process only reads (gauges)
        self.drops = drop_policy(settings)
        self.instruments.registry.register(
            EngagementCollector(
                settings.worker_id, functools.partial(engagement_quantiles, self.engine), ENGAGEMENT_QUANTILES
            )
        )
        # Every write goes through the apply process, in submission order: a batch, then the deletion of outbox
        # rows published meanwhile; this process keeps fetching and publishing while it runs.
        self.apply_process = ApplyProcess(settings, loglevel)
        #: Each input partition's highest applied offset, as the apply process last reported it (for the lag gauge).
        self.applied: dict[tuple[str, int], int] = {}
        self.publisher = OutboxPublisher(
            DownstreamProducer(
                settings.bootstrap_servers,
                f"{settings.app_id}-{settings.worker_id}-downstream",
                group_id=settings.app_id,
                worker_id=settings.worker_id,
                transactions=settings.output_transactions,
                commits_topic=self.topics.outbox_commits,
            ),
            settings.worker_id,
            pending=self._pending_outbox,
            delete=functools.partial(self._with_database, apply_process.delete_outbox),
            on_sent=self._count_published,
            on_waiting=self.instruments.outbox_unpublished.labels(settings.worker_id).set,
            on_transactional=self.instruments.outputs_transactional.labels(settings.worker_id).set,
        )
        self.bound = BatchBound(settings.batch_max_events, settings.batch_max_events_behind, settings.batch_behind_s)
        self.batches = BatchFeeder(self._apply_batch, self._finish_batch, self._batch_limit, self._fail)
        self.app = self._build_app()

    def _build_app(self) -> faust.App:
        s = self.settings
        (s.data_dir / s.worker_id).mkdir(parents=True, exist_ok=True)
        app = App(
            s.app_id,
            fetch_max_wait=s.broker_fetch_max_wait,
            broker=",".join(f"kafka://{b}" for b in s.bootstrap_servers),
            store="memory://",
            topic_partitions=s.partitions,
            topic_replication_factor=s.replication_factor,
            datadir=str(s.data_dir / s.worker_id),
            web_enabled=True,
            web_port=s.web_port,
            web_bind=s.web_host,
            web_host=s.web_host,
            broker_session_timeout=s.broker_session_timeout,
            broker_heartbeat_interval=s.broker_heartbeat_interval,
            broker_max_poll_interval=s.broker_max_poll_interval,
            consumer_auto_offset_reset="earliest",
            producer_acks=-1,
            # Faust counts its buffer in records whatever they hold: 4,096 by default, which with envelopes of a
            # hundred events was ~125 MB of the worker's memory (the input waits in the topic just as well).
            stream_buffer_maxsize=s.stream_buffer_records,
            # Do not wait at a rebalance or shutdown for taken records to be acknowledged: a record not
            # acknowledged is redelivered, and applying it again changes nothing (offsets in SQL, idempotent ids),
            # whereas waiting behind a stuck batch or outbox made shutdown never end.
            stream_wait_empty=False,
            broker_commit_every=1000,
            broker_commit_interval=1.0,
            # Body cap, read timeouts, no decompression before the write key is checked: see streams.http.
            web_application_options=application_options(s),
        )
        inputs = app.topic(*self.topics.channels, value_serializer="raw", key_serializer="raw")

        @app.agent(inputs, name="cxstream.touchpoints")
        async def touchpoints(stream: faust.StreamT) -> None:
            # noack_take: offsets move only after our SQL commit, never because the batch was merely read.
            # Takes are bounded in records too: the batches gather takes up to the batch bound's events
            # (``_batch_limit``), and a take of that many envelopes would hold a hundred times that.
            async for events in stream.noack_take(s.stream_buffer_records, within=s.batch_max_wait):
                await self.batches.add(
                    [InRecord(e.message.topic, e.message.partition, e.message.offset, e.value) for e in events],
                    functools.partial(self._ack, stream, events),
                )

        @app.on_partitions_assigned.connect
        async def on_assigned(_app: Any, assigned: Any = None, **_: Any) -> None:
            # Another worker may have applied our new partitions: learn how far from the database.
            self.applied = await self._with_database(apply_process.reload)

        app.service(self.publisher)  # type: ignore[arg-type]  # an instance is accepted (on_init_extra_service)

        @app.timer(interval=5.0)
        async def gauges() -> None:
            await self.update_gauges()

        @app.timer(interval=TICK_S)
        async def follow_the_clock() -> None:
            # Between batches, partitions that went idle stop holding the event-time watermark back, and what it
            # passes is swept. A worker with nothing to apply submits nothing else: this call is also how a dead
            # apply process is noticed when no record arrives.
            if not self.publisher.ready.is_set():
                return  # what a previous run left unpublished goes out first
            async with self.turn:
                done = await self._tick()
            # Outside the turn: publishing may wait for the broker, and the agent's batches need not wait for that.
            if isinstance(done, list):
                await self._finish_batch(done)
            elif done is not None:
                await self._publish(done)

        deadletters = app.topic(self.topics.deadletter, value_serializer="raw", key_serializer="raw")

        @app.agent(deadletters, name="cxstream.deadletters")
        async def count_dead_letters(stream: faust.StreamT) -> None:
            # Dead letters are counted where they land, whoever wrote them (adapters, collector, worker),
            # so the one Prometheus counter accounts for every rejected record exactly once per group.
            async for value in stream:
                try:
                    dead = orjson.loads(value)
                    labels = label_values(dead.get("channel"), dead.get("reason"), dead.get("stage"))
                except (orjson.JSONDecodeError, AttributeError, TypeError):
                    labels = label_values(None, None, None)
                self.instruments.dead_letters.labels(*labels).inc()

        @app.page("/metrics")
        async def metrics_page(_web: Any, _request: Any) -> web.Response:
            # In a thread: the engagement gauges read the database at scrape time (``EngagementCollector``).
            body = await asyncio.to_thread(generate_latest, self.instruments.registry)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        # The collector: write key first, then the body (bounded in size and time); see streams.http.
        collector = CollectorHttp(s, Collector(s, enqueue_with(app), self.instruments))

        def answer(view: View, reply: CollectorReply) -> Response:
            if reply.status == 204:
                return view.bytes(b"", status=204, headers=reply.headers)
            return view.json(reply.body, status=reply.status, headers=reply.headers)

        @app.page("/v1/{path}")
        class SegmentEndpoint(View):
            async def post(self, request: Request, path: str) -> Response:
                kind = SEGMENT_PATHS.get(path)
                if kind is None:
                    return self.json({"error": f"unknown endpoint /v1/{path}"}, status=404)
                return answer(self, await collector.respond(request, kind))  # type: ignore[arg-type]  # aiohttp's

            async def options(self, request: Request, path: str) -> Response:
                if path not in SEGMENT_PATHS:
                    return self.json({"error": f"unknown endpoint /v1/{path}"}, status=404)
                return answer(self, collector.preflight(request))  # type: ignore[arg-type]

        @app.page("/v1/ecommerce/{marketplace}")
        class MarketplaceEndpoint(View):
            async def post(self, request: Request, marketplace: str) -> Response:
                return answer(self, await collector.respond(request, "ecommerce", marketplace))  # type: ignore[arg-type]

        return app

    async def _apply_batch(self, records: list[InRecord]) -> list[Applied] | None:
        try:
            return await self.handle(records)
        except Exception as exc:
            await self._fail(exc)
            return None

    async def _fail(self, exc: BaseException) -> None:
        """Stop the worker loudly: a worker that cannot apply or finish its input must stop (and be restarted by
        its supervisor), not linger with a dead agent or an outbox nobody publishes. Nothing unfinished was
        acknowledged, so nothing is lost."""
        log.error("cannot go on (%s: %s); stopping the worker", exc.__class__.__name__, exc, exc_info=exc)
        await self.app.crash(exc)

    async def _finish_batch(self, applied: list[Applied]) -> None:
        """What follows a committed batch: count it, log it, seek past gaps, queue its outputs for publishing."""
        for summary, seconds in applied:
            self.observe(summary, seconds)
            self._log_batch(summary, seconds)
            await self._publish(summary)

    def _log_batch(self, summary: BatchSummary, seconds: float) -> None:
        """One info line per batch that read new records (see ``describe_batch``)."""
        # A batch of redelivered records only (after a rebalance) read nothing new: no line, as for an idle tick.
        if summary.partitions and log.isEnabledFor(logging.INFO):
            log.info("%s", describe_batch(summary, seconds, sum(self._lag().values())))
        for customer_id in summary.outgrown:
            log.warning("%s", outgrown_warning(customer_id, self.settings.merge_max_touchpoints))

    @staticmethod
    async def _ack(stream: faust.StreamT, events: list[Any]) -> None:
        # Committed with their offsets and outbox row: the outputs are the publisher's now.
        for event in events:
            await stream.ack(event)

    # --- batches ----------------------------------------------------------------------------------

    def _batch_limit(self) -> int:
        """The most events the next batch takes (``BatchBound``): more while the worker is behind its input."""
        return self.bound.limit(sum(self._lag().values()))

    async def _tick(self) -> BatchSummary | list[Applied] | None:
        """The clock's batch (``follow_the_clock``): its summary to publish; if it failed on parked events, the
        batches that settled them, to finish; None when there is nothing to publish (the worker stops, or waits for
        the database)."""
        try:
            summary = await self.apply_process.run(apply_process.tick, self._backlog())
        except BrokenProcessPool as exc:
            log.error("the apply process died; stopping the worker")
            await self.app.crash(exc)
            return None
        except Exception as exc:
            if is_transient(exc):
                # A worker without input asks the database only here: its gauge must say so too.
                self._database_answered(False)
                log.warning("database unavailable (%s); the clock waits", exc)
                return None
            log.warning("the clock's batch failed (%s: %s)", exc.__class__.__name__, exc)
            try:  # a tick's batch that took parked events: one of them may be what failed
                settled = await self._settle_parked()
            except Exception as again:
                await self._fail(again)
                return None
            if settled is None:
                await self._fail(exc)
            return settled
        self._database_answered(True)
        return summary

    async def handle(self, records: list[InRecord]) -> list[Applied]:
        """Apply records in transactions of at most ``_batch_limit()`` events (envelopes hold many).

        Returns each transaction's summary, in commit order, for ``_finish_batch``.
        """
        await self.publisher.ready.wait()  # what a previous run left unpublished goes out first
        applied: list[Applied] = []
        for chunk in chunk_by_events(records, self._batch_limit()):
            done = await self._handle_chunk(chunk)
            if len(done) == 1:  # not applied one record at a time after a failure, whose pace says nothing
                summary, seconds = done[0]
                self.bound.observe(len(chunk), sum(map(events_in, chunk)), summary.events, seconds)
            applied += done
        return applied

    async def _handle_chunk(self, records: list[InRecord]) -> list[Applied]:
        """Apply one transaction's records; a record the database rejects for good is dead-lettered on its own."""
        async with self.turn:
            return await self._apply_chunk(records)

    async def _apply_chunk(self, records: list[InRecord]) -> list[Applied]:
        try:
            return [await self._apply(apply_process.process, records, self._backlog())]
        except BrokenProcessPool:
            raise  # the apply process died, not the batch: the worker stops with nothing acknowledged
        except Exception as exc:
            log.warning("batch rejected by the database (%s); applying its records one by one", exc)
        applied = await self._settle_parked() or []
        for record in records:
            # Without parked events: one the database refuses would fail every record's batch.
            applied.append(await self._alone(([record], self._backlog(), []), apply_process.reject, [record]))
        return applied

    async def _alone(self, batch: tuple[Any, ...], reject: Callable[..., BatchSummary], what: Any) -> Applied:
        """Apply ``batch`` (``apply_process.process``'s arguments) in a transaction of its own; if the database
        refuses it for good, dead-letter ``what`` as ``sink_rejected`` with ``reject`` instead."""
        try:
            return await self._apply(apply_process.process, *batch)
        except BrokenProcessPool:
            raise  # the apply process died, not the batch
        except Exception as exc:
            self.instruments.sink_failures.labels(self.settings.worker_id, "permanent").inc()
            detail = f"{exc.__class__.__name__}: {exc}"[:2000]
            return await self._apply(reject, what, "sink_rejected", detail)

    async def _settle_parked(self) -> list[Applied] | None:
        """After a failed batch that took parked events: apply them one per transaction, dead-lettering one the
        database refuses for good (a parked event is taken by every batch until applied, and must not fail them
        all). None if the batch took none, or if a batch without them (and without records) fails too: then the
        failure is not theirs, and none of them is dead-lettered."""
        taken = await self._with_database(apply_process.last_unparked)
        if not taken:
            return None
        try:
            applied = [await self._apply(apply_process.process, [], self._backlog(), [], True)]
        except BrokenProcessPool:
            raise
        except Exception as exc:
            log.error("a batch without parked events fails too (%s: %s)", exc.__class__.__name__, exc)
            return None
        for row_id in taken:
            applied.append(await self._alone(([], self._backlog(), [row_id]), apply_process.reject_parked, row_id))
        return applied

    async def _apply(self, work: Callable[..., BatchSummary], *args: Any) -> Applied:
        """Apply a batch in the apply process (retrying like every database call); return it with its seconds."""
        started = time.perf_counter()
        summary = await self._with_database(work, *args)
        self.applied = summary.applied
        return summary, time.perf_counter() - started

    async def _with_database(self, work: Callable[..., T], *args: Any) -> T:
        """Run ``work`` in the apply process, retrying transient database failures with backoff.

        The stream waits meanwhile (its buffer fills, then Faust stops fetching) and no offset moves, so a
        database outage pauses the job instead of dropping or double-writing anything.
        """
        delay, reload = 0.2, False
        while True:
            try:
                result = await self.apply_process.run(work, *args, reload=reload)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._database_answered(False)
                self.instruments.sink_retries.labels(self.settings.worker_id).inc()
                log.warning("database unavailable (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                # A failed transaction rolled back: go on from what the database says, not from memory.
                reload = work is not apply_process.reload
            else:
                self._database_answered(True)
                return result

    def _database_answered(self, answered: bool) -> None:
        """Record how a database call ended: ``cxstream_database_up``, and a transient failure counted."""
        self.instruments.database_up.labels(self.settings.worker_id).set(1 if answered else 0)
        if not answered:
            self.instruments.sink_failures.labels(self.settings.worker_id, "transient").inc()

    async def _publish(self, summary: BatchSummary) -> None:
        for (topic, partition), offset in summary.gaps.items():
            log.warning(
                "records of %s[%d] from offset %d went missing in transit: seeking back", topic, partition, offset
            )
            await self.app.consumer.seek(TP(topic, partition), offset)
        for row in summary.unreported:
            log.warning("outbox row %d was committed by a database call that seemed to fail: publishing it", row.id)
            await self.publisher.put(row.id, OutboxPayload(row.payload))
        if summary.outbox_id is not None:
            if summary.outbox is None:
                raise RuntimeError(f"outbox row {summary.outbox_id} came back without its payload")
            await self.publisher.put(summary.outbox_id, OutboxPayload(summary.outbox))

    async def _pending_outbox(self) -> tuple[str, list[OutboxRow]]:
        orphaned_before = datetime.now(UTC) - timedelta(seconds=ORPHANED_OUTBOX_S)
        return await self._with_database(apply_process.pending_outbox, self.settings.worker_id, orphaned_before)

    def _count_published(self, sent: Counter[str]) -> None:
        for topic, count in sent.items():
            self.instruments.outputs_published.labels(self.settings.worker_id, topic).inc(count)

    def observe(self, summary: BatchSummary, duration: float) -> None:
        """Record a batch in the Prometheus metrics."""
        inst, w = self.instruments, self.settings.worker_id
        for channel, count in summary.events_by_channel.items():
            inst.events_in.labels(w, channel, self.topics.channel(channel)).inc(count)
        inst.sink_batch_size.labels(w).observe(summary.events)
        inst.sink_write_duration.labels(w).observe(duration)
        for lock, seconds in summary.lock_wait_s.items():
            inst.lock_wait.labels(w, lock).inc(seconds)
        if summary.suppressed:
            inst.suppressed.labels(w).inc(summary.suppressed)
        if summary.retries:
            inst.sink_contended.labels(w).inc(summary.retries)
        if summary.parked:
            inst.events_parked.labels(w).inc(summary.parked)
        inst.duplicates.labels(w).inc(summary.duplicates)
        inst.late_events.labels(w, "accepted").inc(summary.late_accepted)
        inst.late_events.labels(w, "too_late").inc(summary.too_late)
        if summary.unattributed:
            inst.unattributed.labels(w).inc(summary.unattributed)
        if summary.restored:
            inst.history_restored.labels(w).inc(summary.restored)
        inst.identity_merges.labels(w).inc(summary.merges)
        if summary.splits:
            inst.identity_splits.labels(w).inc(summary.splits)
        if summary.splits_refused:
            inst.identity_splits_refused.labels(w).inc(summary.splits_refused)
        inst.blocked_identifiers.labels(w, "blocked").inc(summary.blocked)
        inst.blocked_identifiers.labels(w, "over_limit").inc(summary.over_limit)
        inst.blocked_identifiers.labels(w, "never_link").inc(summary.kept_apart)
        inst.blocked_identifiers.labels(w, "merge_too_large").inc(summary.merge_too_large)
        # Only entries new in this batch: one re-emitted because a later event changed it is not a new arrival.
        processing, end_to_end = inst.processing_latency.labels(w), inst.end_to_end_latency.labels(w)
        for seconds in summary.processing_s:
            processing.observe(seconds)
        for seconds in summary.end_to_end_s:
            end_to_end.observe(seconds)

    async def update_gauges(self) -> None:
        """Refresh gauges that are read rather than counted: customers in state, consumer lag, watermark."""
        w = self.settings.worker_id
        with contextlib.suppress(OperationalError):  # the database is down: the sink's failure counters say so
            self.instruments.customers.labels(w).set(await asyncio.to_thread(customers_count, self.engine))
            await self._experience_drop_gauges()
        for (topic, partition), lag in self._lag().items():
            self.instruments.consumer_lag.labels(w, topic, str(partition)).set(lag)

    async def _experience_drop_gauges(self) -> None:
        """Set the firing experience-drop alerts of the current windows; a series that stopped firing goes away."""
        policy = self.drops
        if policy is None:
            return
        firing = await asyncio.to_thread(
            current_experience_drops,
            self.engine,
            self.settings.app_id,
            policy.window,
            policy.window_s,
            policy.window_s * policy.baseline_windows,
        )
        gauge, w = self.instruments.experience_drops, self.settings.worker_id
        gauge.clear()
        for scope, key, metric in firing:
            gauge.labels(w, scope, key, metric).set(1)

    def _lag(self) -> dict[tuple[str, int], int]:
        """Records not yet applied on each input partition assigned to this worker (as far as fetches told)."""
        consumer = self.app.consumer
        inputs = set(self.topics.channels)
        try:
            # Input partitions only: the worker also reads the dead-letter topic (to count it), whose offsets
            # are not in ``applied`` — its whole length would show as lag, for ever.
            highwaters = {tp: consumer.highwater(tp) for tp in consumer.assignment() if tp.topic in inputs}
        except Exception:  # consumer not started yet
            return {}
        return {
            (tp.topic, tp.partition): max(0, high - self.applied.get((tp.topic, tp.partition), -1) - 1)
            for tp, high in highwaters.items()
            if high is not None
        }

    def _backlog(self) -> list[tuple[str, int]]:
        """This worker's input partitions with records still to apply: they hold the event-time watermark."""
        return [tp for tp, lag in self._lag().items() if lag > 0]


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count:,} {one if count == 1 else many or one + 's'}"


def describe_batch(summary: BatchSummary, seconds: float, lag: int) -> str:
    """A committed batch in one line: what was applied, what was not, from where, how long it took, how far the
    event time got and how far behind the worker is. Counts that are usually 0 are named only when they are not.

    ``applied 4,812 events (2 dead letters [too_late 2], 31 duplicates, 3 merges, 5 alerts) from 4 partitions in
    0.42 s; watermark 2026-12-01T10:00:00Z; lag 0 records``
    """
    # Duplicates, events too late and event ids held by another customer were decoded but not applied.
    conflicts = summary.rejected.get("event_id_conflict", 0)
    applied = summary.events - summary.duplicates - summary.too_late - conflicts
    dead = _n(sum(summary.rejected.values()), "dead letter")
    if summary.rejected:
        dead += " [" + ", ".join(f"{reason} {n:,}" for reason, n in sorted(summary.rejected.items())) + "]"
    counts = [dead, _n(summary.duplicates, "duplicate"), _n(summary.merges, "merge"), _n(summary.alerts, "alert")]
    for count, one, many in (
        (summary.late_accepted, "late", "late"),
        (summary.unattributed, "unattributed", "unattributed"),
        (summary.restored, "history read back", "histories read back"),
        (
            summary.merge_too_large,
            "link refused (CXSTREAM_MERGE_MAX_TOUCHPOINTS)",
            "links refused (CXSTREAM_MERGE_MAX_TOUCHPOINTS)",
        ),
        (summary.retries, "retry after contention", "retries after contention"),
        (summary.suppressed, "suppressed (erased person)", "suppressed (erased people)"),
        (summary.parked, "parked (customer held by another worker)", "parked (customers held by another worker)"),
        (summary.unparked, "parked earlier taken", "parked earlier taken"),
    ):
        if count:
            counts.append(_n(count, one, many))
    watermark = summary.watermark.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if summary.watermark else "none yet"
    return (
        f"applied {_n(applied, 'event')} ({', '.join(counts)}) from {_n(summary.partitions, 'partition')} "
        f"in {seconds:.2f} s; watermark {watermark}; lag {_n(lag, 'record')}"
    )


def outgrown_warning(customer_id: str, bound: int) -> str:
    """The warning a worker logs once a customer holds more touchpoints than the merge bound."""
    return (
        f"customer {customer_id} now holds more than {bound:,} touchpoints (CXSTREAM_MERGE_MAX_TOUCHPOINTS): links "
        "to it are refused from now on. If an identifier many people share made it (a till's house loyalty card, "
        "a shared inbox), add that identifier to CXSTREAM_BLOCKED_IDENTIFIERS (cxstream timeline "
        f"{customer_id} lists its identifiers)"
    )


def until_database_answers(settings: Settings, work: Callable[[], T]) -> T:
    """Run ``work`` until no transient database error stops it, waiting with backoff and saying so meanwhile."""
    delay = 0.5
    while True:
        try:
            return work()
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning(
                "database %s unreachable (%s: %s); the worker is not ready, retrying in %.1fs",
                settings.database_url,
                exc.__class__.__name__,
                str(exc).splitlines()[0] if str(exc) else "",
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)


def until_leased(settings: Settings, lease: WorkerLease) -> None:
    """Wait until this process holds the lease of its worker id (``sinks.lease``): while another process of the
    group runs with the same ``CXSTREAM_WORKER_ID``, this one waits, saying so, rather than start beside it.

    Raises SettingsError when the SQLite lease's lock file cannot be made (a missing or read-only directory)."""
    said = time.monotonic() - LEASE_SAY_S + LEASE_FIRST_SAY_S
    while True:
        try:
            if until_database_answers(settings, lease.take):
                break
        except OSError as exc:  # the lock file beside a SQLite database
            raise SettingsError(
                f"CXSTREAM_DATABASE_URL: cannot make the worker's lease file {lease.lock_path()} beside the SQLite "
                f"database ({exc.strerror or exc})"
            ) from None
        if time.monotonic() - said >= LEASE_SAY_S:
            said = time.monotonic()
            log.error(
                "CXSTREAM_WORKER_ID=%s is in use: another process of group %s holds its lease (%s); waiting for it "
                "to stop. Give every running worker its own CXSTREAM_WORKER_ID.",
                settings.worker_id,
                settings.app_id,
                lease.where,
            )
        time.sleep(LEASE_CHECK_S)
    log.info("worker id %s leased (%s)", settings.worker_id, lease.where)


def keep_lease(
    settings: Settings,
    lease: WorkerLease,
    check_s: float = LEASE_CHECK_S,
    *,
    sleep: Callable[[float], None] = time.sleep,
    stop: Callable[[], None] = lambda: os.kill(os.getpid(), signal.SIGTERM),
) -> None:
    """Check the lease every ``check_s`` and take it again when a database outage ended it (a thread of the running
    worker). Should another process with this worker id have taken it meanwhile, this worker stops (``stop``:
    SIGTERM to itself): its supervisor's restart waits for the lease, and the other runs."""
    said = -LEASE_SAY_S
    while True:
        sleep(check_s)
        try:
            held = lease.take()
        except Exception as exc:
            # The database is down (the lease is taken again when it answers), refuses, or still holds this
            # worker's earlier session: said now and then, and asked again.
            if not is_transient(exc) and time.monotonic() - said >= LEASE_SAY_S:
                said = time.monotonic()
                if isinstance(exc, LeaseUncertain):
                    log.warning("%s; asking again", exc)
                else:
                    log.error("checking the worker id's lease failed (%s: %s)", exc.__class__.__name__, exc)
            continue
        if not held:
            log.error(
                "CXSTREAM_WORKER_ID=%s: another process took this worker id's lease while the database was "
                "unreachable; stopping this one. Give every running worker its own CXSTREAM_WORKER_ID.",
                settings.worker_id,
            )
            stop()
            return


def check_log(settings: Settings, store: SqlSink) -> None:
    """Refuse to start on a database that followed another log than the broker's (``LogMismatch``).

    Each input partition's applied offset means "every record up to here is in the results": against a broker
    that does not hold those records (a fresh embedded broker and an old ``cxstream.db``, say), the worker would
    skip every new record up to that offset, silently.
    """
    applied = store.applied_records(settings.app_id)
    problems = missing_applied_records(settings, applied, record_fingerprint)
    if problems:
        shown = "\n  ".join(problems[:8]) + ("\n  ..." if len(problems) > 8 else "")
        raise LogMismatch(
            f"the results database {settings.database_url} applied records that the broker at {settings.kafka_url} "
            f"does not hold ({len(problems)} of {len(applied)} partitions):\n  {shown}\n"
            "It followed another copy of these topics (a fresh embedded broker starts empty). Use a fresh database "
            "(CXSTREAM_DATABASE_URL), or run `cxstream db reset-offsets` to read these topics from their start: "
            "the results stay, and events applied before are recognised by their event id."
        )


class BatchFeeder(Generic[Done]):
    """Feeds taken records to the apply process, one transaction after the other, while more are taken.

    Faust's per-record work (taking records) and the SQL transaction overlap: while one batch is applied, what
    arrives meanwhile is gathered, and applied next as one batch. Under load batches grow (fewer transactions,
    less fixed cost per event); when idle, a record waits only for the take window. ``add`` waits while
    ``max_events()`` events are already gathered, so memory stays bounded.

    The apply process is the worker's bottleneck, so it is never kept waiting for bookkeeping: once a batch is
    applied, the next one is submitted first, and only then is the applied one finished (``finish``: metrics,
    outputs queued for publishing) and acknowledged, while the next one applies. Batches are finished and
    acknowledged in the order they were applied, and never before they committed. Should finishing fail, ``fail``
    is called (the worker stops) and nothing after it is acknowledged.
    """

    def __init__(
        self,
        apply: Callable[[list[InRecord]], Awaitable[Done | None]],
        finish: Callable[[Done], Awaitable[None]],
        max_events: Callable[[], int],
        fail: Callable[[BaseException], Awaitable[None]],
    ) -> None:
        """``max_events``: how many events may be gathered for the next batch, asked as records arrive."""
        self._apply = apply
        self._finish = finish
        self._fail = fail
        self._max_events = max_events
        self._records: list[InRecord] = []
        self._events = 0
        self._acks: list[Callable[[], Awaitable[None]]] = []
        self._room = asyncio.Event()
        self._draining: asyncio.Future[None] | None = None

    async def add(self, records: list[InRecord], ack: Callable[[], Awaitable[None]]) -> None:
        """Gather ``records``; ``ack`` runs once they are committed and finished.

        ``apply`` returns None when it could not apply a batch (the worker is stopping): that batch is neither
        finished nor acknowledged, and nothing after it is applied.
        """
        # Bounded by events, not records: an envelope holds a hundred.
        while self._events >= self._max_events():
            self._room.clear()
            await self._room.wait()
        self._records += records
        self._events += sum(map(events_in, records))
        self._acks.append(ack)
        if self._draining is None or self._draining.done():
            self._draining = asyncio.ensure_future(self._drain_or_fail())

    async def _drain_or_fail(self) -> None:
        # The drain runs as a task of its own: an exception in it (say, in ``finish``) would end it silently,
        # leaving committed outputs unpublished and records unacknowledged. It is reported instead.
        try:
            await self._drain()
        except Exception as exc:
            await self._fail(exc)

    async def _drain(self) -> None:
        applied: tuple[Done, list[Callable[[], Awaitable[None]]]] | None = None  # committed, not yet finished
        while True:
            if not self._records:
                if applied is None:
                    return
                await self._complete(*applied)
                applied = None
                continue  # records may have arrived meanwhile
            records, acks = self._records, self._acks
            self._records, self._acks, self._events = [], [], 0
            self._room.set()
            applying = asyncio.ensure_future(self._apply(records))
            if applied is not None:
                await asyncio.sleep(0)  # the apply task submits its batch before this one is finished
                await self._complete(*applied)
            done = await applying
            if done is None:
                return  # the worker is stopping; nothing of this batch is acknowledged
            applied = (done, acks)

    async def _complete(self, done: Done, acks: list[Callable[[], Awaitable[None]]]) -> None:
        await self._finish(done)
        for ack in acks:
            await ack()


def events_in(record: InRecord) -> int:
    """How many events a record holds, without parsing it: its ``"event_id"`` keys (at least one; a record
    without a value, a tombstone, counts one: it is dead-lettered like any record that holds no event)."""
    return max(1, record.value.count(b'"event_id"')) if record.value else 1


def chunk_by_events(records: list[InRecord], max_events: int) -> list[list[InRecord]]:
    """Split records into runs of whole records holding at most ``max_events`` events each (roughly).

    A record is never split, so its offset is committed only with all of its events.
    """
    chunks: list[list[InRecord]] = [[]]
    size = 0
    for record in records:
        events = events_in(record)
        if chunks[-1] and size + events > max_events:
            chunks.append([])
            size = 0
        chunks[-1].append(record)
        size += events
    return chunks


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run a worker in the foreground until SIGINT/SIGTERM.

    Waits, before joining the group, while another process holds the lease of its worker id (``sinks.lease``).
    Raises LogMismatch, before consuming anything, when the database applied records the broker does not hold, and
    SettingsError for a configuration unsafe outside a laptop (``config.settings.exposure_problems``).
    """
    from streams.kafka import ensure_topics

    errors, warnings = exposure_problems(settings)
    if errors:
        raise SettingsError("unsafe configuration:\n  " + "\n  ".join(errors))
    for warning in warnings:
        log.warning("UNSAFE: %s", warning)
    ensure_topics(settings)
    lease = WorkerLease(settings.database_url, settings.app_id, settings.worker_id)
    until_leased(settings, lease)
    if lease.can_lapse:
        threading.Thread(target=keep_lease, args=(settings, lease), name="worker-lease", daemon=True).start()
    worker = Worker(settings, loglevel)
    # The database may be down or locked at start: wait for it, as a running worker does, rather than exit.
    until_database_answers(settings, lambda: upgrade(worker.engine))
    until_database_answers(settings, lambda: check_log(settings, SqlSink(worker.engine)))
    # Erasures made against another database of these topics hold here too (for new events: rows a restored backup
    # holds stay until erased again), and entries an erasure failed to publish reach the topic.
    restored = until_database_answers(settings, lambda: restore_suppressions(settings, worker.engine))
    if restored:
        log.info("added %d suppression entries from %s", restored, Topics(settings.topic_prefix).suppressions)
    if until_database_answers(settings, lambda: record_rules_at_start(settings, worker.engine)):
        log.info("identity rule settings recorded in audit_log (first start, or changed since the last)")
    tune_collector()
    log.info(
        "cxstream worker %s: /metrics on http://%s:%d/metrics, database %s (started %s)",
        settings.worker_id,
        settings.web_host,
        settings.web_port,
        settings.database_url,
        datetime.now(UTC).isoformat(),
    )
    BoundedWorker(worker.app, settings.shutdown_timeout_s, loglevel=loglevel, quiet=True).execute_from_commandline()


class BoundedWorker(faust.Worker):
    """Faust's worker, stopping within ``shutdown_timeout_s`` of SIGTERM or Ctrl-C whatever is stuck.

    Stopping waits for services to end cleanly; something that never ends (a batch waiting on a database lock, a
    broker that does not answer) would keep the process alive for ever. Exiting at the bound loses nothing: what
    was not acknowledged is redelivered, and the apply process dies with this one.
    """

    def __init__(self, app: faust.App, shutdown_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.shutdown_timeout_s = shutdown_timeout_s

    def _schedule_shutdown(self, signal: Any) -> None:  # mode's hook for SIGINT and SIGTERM
        if not self._signal_stop_time:
            timer = threading.Timer(self.shutdown_timeout_s, _exit_now, (self.shutdown_timeout_s,))
            timer.daemon = True
            timer.start()
        super()._schedule_shutdown(signal)


def _exit_now(after_s: float) -> None:
    log.error(
        "still stopping after %.0fs (CXSTREAM_SHUTDOWN_TIMEOUT_S): exiting now; what was not acknowledged will be "
        "redelivered",
        after_s,
    )
    logging.shutdown()
    os._exit(1)
