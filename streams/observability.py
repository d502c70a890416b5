"""Operational instruments of a cxstream process: its Prometheus metrics (``cxstream_`` prefix, units in names,
``_total`` counters). Not to be confused with the experience metrics (``streams.domain.metrics``), which are data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from streams.recent import ENGAGEMENT_TTL_S, Recent

log = logging.getLogger(__name__)

#: Latency buckets in seconds, from a millisecond to a minute: an event's path spans both.
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000, 20000, 50000)


class Instruments:
    """The Prometheus instruments of one process, registered in their own registry (tests run several side by side)."""

    def __init__(self, worker: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.worker = worker
        self.events_in = Counter(
            "cxstream_events_in_total",
            "Touchpoint events read by the worker.",
            ["worker", "channel", "topic"],
            registry=r,
        )
        self.events_published = Counter(
            "cxstream_events_published_total", "Touchpoint events published by an adapter.", ["channel"], registry=r
        )
        self.dead_letters = Counter(
            "cxstream_dead_letters_total",
            "Records sent to the dead-letter topic.",
            ["channel", "reason", "stage"],
            registry=r,
        )
        self.duplicates = Counter(
            "cxstream_duplicates_dropped_total", "Repeated event ids dropped.", ["worker"], registry=r
        )
        self.late_events = Counter(
            "cxstream_late_events_total",
            "Events older than the event-time watermark: accepted (applied in place, windows revised), or too late "
            "(dead-lettered, only with CXSTREAM_MAX_EVENT_AGE_S).",
            ["worker", "outcome"],
            registry=r,
        )
        self.outbox_unpublished = Gauge(
            "cxstream_outbox_unpublished",
            "Committed outbox rows (one per batch) this worker has not yet had acknowledged by the broker.",
            ["worker"],
            registry=r,
        )
        self.outputs_transactional = Gauge(
            "cxstream_outputs_transactional",
            "1 when this worker publishes downstream records in Kafka transactions (exactly once for read_committed "
            "consumers), 0 when at least once (CXSTREAM_OUTPUT_TRANSACTIONS).",
            ["worker"],
            registry=r,
        )
        self.database_up = Gauge(
            "cxstream_database_up",
            "1 while the worker's last database call succeeded, 0 while it waits for the database to answer.",
            ["worker"],
            registry=r,
        )
        self.unattributed = Counter(
            "cxstream_unattributed_events_total",
            "Events with no usable identifier: applied to no customer, counted for their channel and overall.",
            ["worker"],
            registry=r,
        )
        self.history_restored = Counter(
            "cxstream_history_restored_total",
            "Customers whose history was read back from SQL for events older than their state keeps.",
            ["worker"],
            registry=r,
        )
        self.identity_merges = Counter(
            "cxstream_identity_merges_total", "Customers merged by identity stitching.", ["worker"], registry=r
        )
        self.identity_splits = Counter(
            "cxstream_identity_splits_total",
            "Customers split off by splits made by hand (cxstream split).",
            ["worker"],
            registry=r,
        )
        self.identity_splits_refused = Counter(
            "cxstream_identity_splits_refused_total",
            "Splits made by hand a worker refused: their customer had more touchpoints than "
            "CXSTREAM_SPLIT_MAX_TOUCHPOINTS.",
            ["worker"],
            registry=r,
        )
        self.blocked_identifiers = Counter(
            "cxstream_identifiers_rejected_total",
            "Identifiers not used for stitching: blocked values, over a per-type limit, kept apart by a never-link rule, "
            "or whose customer a merge would take over CXSTREAM_MERGE_MAX_TOUCHPOINTS.",
            ["worker", "reason"],
            registry=r,
        )
        self.processing_latency = Histogram(
            "cxstream_processing_latency_seconds",
            "Event received_at to its timeline entry being applied by the worker.",
            ["worker"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end_latency = Histogram(
            "cxstream_end_to_end_latency_seconds",
            "Event received_at to its rows committed in SQL.",
            ["worker"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.sink_batch_size = Histogram(
            "cxstream_sink_batch_events", "Events per SQL transaction.", ["worker"], buckets=BATCH_BUCKETS, registry=r
        )
        self.sink_write_duration = Histogram(
            "cxstream_sink_write_duration_seconds",
            "Duration of one SQL batch transaction.",
            ["worker"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.lock_wait = Counter(
            "cxstream_sink_lock_wait_seconds_total",
            "Seconds batches spent taking locks other workers' batches may hold, by lock (partitions, customers: their "
            "rows, keys: identifier keys no row holds yet, clock: the group's): compare with "
            "cxstream_sink_write_duration_seconds_sum.",
            ["worker", "lock"],
            registry=r,
        )
        self.suppressed = Counter(
            "cxstream_suppressed_events_total",
            "Events dropped because they carry an erased person's identifier (cxstream erase, suppress_with_delete).",
            ["worker"],
            registry=r,
        )
        self.events_parked = Counter(
            "cxstream_events_parked_total",
            "Events a batch parked rather than wait for another worker's batch holding their customer (PostgreSQL; "
            "an event parked again counts again); a later batch applies them, counted then in "
            "cxstream_events_in_total.",
            ["worker"],
            registry=r,
        )
        self.sink_contended = Counter(
            "cxstream_sink_contended_total",
            "Batches applied again because another worker's batch took a new identifier or event id first, or the "
            "two deadlocked (PostgreSQL).",
            ["worker"],
            registry=r,
        )
        self.sink_retries = Counter(
            "cxstream_sink_retries_total", "SQL batch writes retried after a transient failure.", ["worker"], registry=r
        )
        self.sink_failures = Counter(
            "cxstream_sink_failures_total",
            "SQL batch writes that failed (transient: retried; permanent: dead-lettered).",
            ["worker", "kind"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "cxstream_consumer_lag_records",
            "Records of a channel (input) topic partition not applied yet: behind its high watermark.",
            ["worker", "topic", "partition"],
            registry=r,
        )
        self.customers = Gauge("cxstream_customers", "Customers known to the results database.", ["worker"], registry=r)
        self.experience_drops = Gauge(
            "cxstream_experience_drop_firing",
            "1 for each channel's (or the overall) metric whose experience-drop alert fires in the current or the "
            "previous short window (event time); absent otherwise. Read from the results database: every worker "
            "exports the same.",
            ["worker", "scope", "key", "metric"],
            registry=r,
        )
        self.outputs_published = Counter(
            "cxstream_outputs_published_total",
            "Records published on downstream topics.",
            ["worker", "topic"],
            registry=r,
        )


class EngagementCollector(Collector):
    """The engagement score's distribution per channel as gauges, read from the results database at scrape time
    (at most once per ``ttl_s``: one scan of the customers table, ``sinks.queries.engagement_quantiles``).

    ``cxstream_engagement_score{channel, quantile}``: the score's quantiles among the customers met in the channel
    (``all``: every customer); ``cxstream_engagement_customers{channel}``: how many they are. A read that fails
    (the database is down) leaves the gauges out of that scrape.
    """

    def __init__(
        self,
        worker: str,
        read: Callable[[], Sequence[dict[str, Any]]],
        quantiles: Sequence[float],
        ttl_s: float = ENGAGEMENT_TTL_S,
    ) -> None:
        self.worker = worker
        self.quantiles = tuple(quantiles)
        self.rows = Recent(read, ttl_s)

    def describe(self) -> list[Any]:
        # Registering must not read the database: the families, without samples.
        return list(self._families([]))

    def collect(self) -> Iterator[Any]:
        try:
            rows = self.rows.get()
        except Exception as exc:  # the database is down: this scrape goes without the gauges
            log.warning("engagement distribution not read: %s", exc)
            return iter(())
        return self._families(rows)

    def _families(self, rows: Sequence[dict[str, Any]]) -> Iterator[Any]:
        scores = GaugeMetricFamily(
            "cxstream_engagement_score",
            "Engagement score quantiles (nearest rank, 0-100) among the customers met in a channel (all: every "
            "customer), from the results database.",
            labels=["worker", "channel", "quantile"],
        )
        customers = GaugeMetricFamily(
            "cxstream_engagement_customers",
            "Customers with an engagement score met in a channel (all: every customer).",
            labels=["worker", "channel"],
        )
        for row in rows:
            customers.add_metric([self.worker, row["channel"]], row["customers"])
            for q in self.quantiles:
                value = row[f"p{round(q * 100)}"]
                if value is not None:
                    scores.add_metric([self.worker, row["channel"], str(q)], value)
        yield scores
        yield customers
