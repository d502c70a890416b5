"""The Faust application: one agent over every channel topic, feeding batches to the BatchProcessor.

Why one agent and no internal hops: every Faust hop costs a full per-record pass (~200-260 µs here,
ARCHITECTURE §7), and every per-event table write as much again. State lives in the results database
and is written once per batch with the input offsets, so stitching, timelines, metrics and alerts need
no repartition topic and no Faust table: one pass over the input, one transaction per batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

import faust
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import DBAPIError, OperationalError

from config.settings import Settings
from config.topics import Topics
from sinks.database import make_engine, upgrade
from sinks.store import SqlStore, customers_count
from streams.observability import Metrics
from streams.pipeline import BatchProcessor, BatchReport, InRecord, Outputs

log = logging.getLogger(__name__)

#: Longest pause between retries of a failing database write.
MAX_BACKOFF_S = 10.0


def is_transient(exc: BaseException) -> bool:
    """True for database errors worth retrying (connection lost, server down, lock timeout)."""
    if isinstance(exc, OperationalError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


class Worker:
    """Ties the Faust app, the batch processor, the outbox publisher and the Prometheus metrics together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.metrics = Metrics(settings.worker_id)
        self.engine = make_engine(settings.database_url)
        upgrade(self.engine)
        self.store = SqlStore(self.engine)
        self.processor = BatchProcessor(settings, self.store)
        self.app = self._build_app()

    def _build_app(self) -> faust.App:
        s = self.settings
        app = faust.App(
            s.app_id,
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
            broker_commit_every=1000,
            broker_commit_interval=1.0,
        )
        inputs = app.topic(*self.topics.channels, value_serializer="raw", key_serializer="raw")

        @app.agent(inputs, name="cxstream.touchpoints")
        async def touchpoints(stream: faust.StreamT) -> None:
            # noack_take: offsets move only after our SQL commit, never because the batch was merely read.
            async for events in stream.noack_take(s.batch_max_events, within=s.batch_max_wait):
                records = [
                    InRecord(e.message.topic, e.message.partition, e.message.offset, e.value) for e in events
                ]
                await self.handle(records)
                for event in events:
                    await stream.ack(event)

        @app.on_partitions_assigned.connect
        async def on_assigned(_app: Any, assigned: Any = None, **_: Any) -> None:
            # Another worker may have applied our new partitions: learn how far from the database.
            self.processor.reload()

        @app.task
        async def flush_leftover_outbox() -> None:
            await self.publish_pending()

        @app.timer(interval=5.0)
        async def gauges() -> None:
            await self.update_gauges()

        @app.page("/metrics")
        async def metrics_page(_web: Any, _request: Any) -> web.Response:
            return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

        return app

    # --- batches ----------------------------------------------------------------------------------

    async def handle(self, records: list[InRecord]) -> None:
        """Apply one batch, retrying transient database failures with backoff (the stream pauses meanwhile)."""
        delay = 0.2
        while True:
            started = time.perf_counter()
            try:
                report = await asyncio.to_thread(self.processor.process, records)
                break
            except Exception as exc:
                if not is_transient(exc):
                    self.metrics.sink_failures.labels(self.settings.worker_id, "permanent").inc()
                    raise
                self.metrics.sink_failures.labels(self.settings.worker_id, "transient").inc()
                self.metrics.sink_retries.labels(self.settings.worker_id).inc()
                log.warning("database write failed (%s); retrying in %.1fs", exc.__class__.__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                # The failed transaction rolled back: start again from what the database says.
                await asyncio.to_thread(self.processor.reload)
        self.observe(report, records, time.perf_counter() - started)
        if report.outbox_id is not None:
            await self.publish(report.outputs)
            await asyncio.to_thread(self.store.delete_outbox, [report.outbox_id])

    def observe(self, report: BatchReport, records: list[InRecord], duration: float) -> None:
        """Record a batch in the Prometheus metrics."""
        m, w = self.metrics, self.settings.worker_id
        for rec in records:
            channel = rec.topic.rsplit(".", 1)[-1]
            m.events_in.labels(w, channel, rec.topic).inc()
        m.sink_batch_size.labels(w).observe(len(report.events))
        m.sink_write_duration.labels(w).observe(duration)
        for dead in report.dead_letters:
            m.dead_letters.labels(dead.channel or "unknown", dead.reason, dead.stage).inc()
        result = report.result
        if result is None or report.committed_at is None:
            return
        m.duplicates.labels(w, "all").inc(result.duplicates)
        m.late_events.labels(w, "accepted").inc(result.late_accepted)
        m.late_events.labels(w, "too_late").inc(len(result.too_late))
        m.identity_merges.labels(w).inc(len(result.merges))
        m.blocked_identifiers.labels(w, "blocked").inc(result.blocked)
        m.blocked_identifiers.labels(w, "over_limit").inc(result.over_limit)
        committed = report.committed_at
        for entry in result.entries:
            lag = (committed - entry.received_at).total_seconds()
            m.processing_latency.labels(w).observe(lag)
            m.end_to_end_latency.labels(w).observe(lag)

    async def publish(self, outputs: Outputs) -> None:
        """Send a batch's downstream records and wait for the broker's acknowledgements."""
        producer = self.app.producer
        futures = [await producer.send(topic, key, value, None, None, None) for topic, key, value in outputs.records]
        await asyncio.gather(*futures)
        for topic, _, _ in outputs.records:
            self.metrics.outputs_published.labels(self.settings.worker_id, topic).inc()

    async def publish_pending(self) -> None:
        """Publish outbox rows a previous run committed but did not get acknowledged (at-least-once)."""
        for row_id, payload in await asyncio.to_thread(self.store.pending_outbox, self.processor.group_id):
            await self.publish(Outputs.decode(payload))
            await asyncio.to_thread(self.store.delete_outbox, [row_id])

    async def update_gauges(self) -> None:
        """Refresh gauges that are read rather than counted: customers in state, consumer lag."""
        w = self.settings.worker_id
        try:
            self.metrics.customers.labels(w).set(await asyncio.to_thread(customers_count, self.engine))
        except OperationalError:
            pass  # the database is down: the sink's failure counters say so
        consumer = self.app.consumer
        try:
            assignment = consumer.assignment()
            highwaters = {tp: consumer.highwater(tp) for tp in assignment}
        except Exception:  # consumer not started yet
            return
        for tp, high in highwaters.items():
            if high is None:
                continue
            applied = self.processor.applied.get((tp.topic, tp.partition), -1)
            self.metrics.consumer_lag.labels(w, tp.topic, str(tp.partition)).set(max(0, high - applied - 1))


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run a worker in the foreground until SIGINT/SIGTERM."""
    from streams.kafka import ensure_topics

    ensure_topics(settings)
    worker = Worker(settings)
    log.info(
        "cxstream worker %s: /metrics on http://%s:%d/metrics, database %s (started %s)",
        settings.worker_id,
        settings.web_host,
        settings.web_port,
        settings.database_url,
        datetime.now(UTC).isoformat(),
    )
    faust.Worker(worker.app, loglevel=loglevel, quiet=True).execute_from_commandline()
