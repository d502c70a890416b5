"""Erasure (GDPR Art. 17) of one person: ``cxstream erase REF`` and ``POST /v1/erasures``.

1. In one transaction (``sinks.erasure``): the customer's row locked as a batch locks it, then the groups'
   clocks, then its identities, touchpoints, alerts, merges and per-customer metric cells and the customer itself
   removed, and (unless the mode is ``delete_only``) a suppression entry per identifier key — a salted hash,
   ``streams.domain.suppression`` — and an audit row added. From then on every worker drops the events that carry
   one of the person's identifiers: redeliveries, replays from offset 0 and events yet to come
   (``cxstream_suppressed_events_total``), and drops its cached state.
2. The entries are published on the compacted suppressions topic: a worker replaying the input topics into a
   fresh database reads them at start, so the person does not come back there either (and a worker publishes
   entries the topic lacks, should this step fail).
3. Once the outbox rows committed before the erasure are published (a running worker does so within seconds),
   tombstones for the person's keys go to the compacted output topics: ``cx.profiles`` (the customer and the ids
   merged into it) and ``cx.metrics`` (its per-customer figures). Compaction then removes what those topics held.

What is outside cxstream's reach: the raw records on the input topics, and the non-compacted output topics'
records until their retention ends (README, Personal data).

The channel and overall metric cells keep the person's contributions as anonymous counts: they hold sums, not
people, and recomputing them would need the very touchpoints the erasure removes.
"""

from __future__ import annotations

import getpass
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson
from kafka.errors import KafkaError

from config.settings import Settings
from config.topics import Topics
from sinks.database import make_engine
from sinks.erasure import ErasedRows, add_suppressions, erase_customer, outbox_pending_upto, suppression_entries
from streams.domain.metrics import METRICS
from streams.domain.suppression import suppression_hash
from streams.kafka import BrokerUnreachable, ensure_topics, make_producer, partition_for, wait_for_broker
from streams.policies import identifier_hashing, suppression_salt
from streams.references import find_customer
from streams.result_records import metric_cell_route


class Mode(StrEnum):
    """What an erasure leaves behind (Segment's regulation types of the same names)."""

    #: Rows removed, and events carrying the person's identifiers dropped from now on, replays included.
    SUPPRESS_WITH_DELETE = "suppress_with_delete"
    #: Rows removed only: a replay of the input topics, or a new event, brings the person back.
    DELETE_ONLY = "delete_only"


class NoSuchCustomer(LookupError):
    """The reference names no customer."""


@dataclass
class ErasureReport:
    """What an erasure did: its id (the audit row's subject), mode, counts, and whether tombstones went out."""

    erasure_id: str
    mode: Mode
    rows: ErasedRows
    tombstones: int
    #: Outbox rows committed before the erasure and still unpublished when the tombstones were sent (0: none).
    unpublished_before: int
    #: What went wrong after the rows were erased (publishing to the broker), if anything.
    problem: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The report as the API answers it (no identifiers: the customer id is the only reference kept)."""
        return {
            "erasure_id": self.erasure_id,
            "mode": self.mode.value,
            "customer_id": self.rows.customer_id,
            "merged_ids": self.rows.merged_ids,
            "identifiers": self.rows.identifiers,
            "touchpoints": self.rows.touchpoints,
            "alerts": self.rows.alerts,
            "merges": self.rows.merges,
            "metric_cells": len(self.rows.cells),
            "suppressed_identifiers": self.rows.suppressed,
            "tombstones": self.tombstones,
            "unpublished_before": self.unpublished_before,
            "problem": self.problem,
        }


def cli_actor() -> str:
    """Who runs a command, as the audit trail records it."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def erase(
    settings: Settings, ref: str, *, mode: Mode, actor: str, reason: str = "", wait_s: float = 60.0
) -> ErasureReport:
    """Erase the customer ``ref`` names (an id or ``type:value``); raise ``NoSuchCustomer`` if none, and
    ``BrokerUnreachable`` if the broker cannot be reached before anything is erased.

    The SQL transaction comes first: it decides (a customer merged away meanwhile is not erased) and is what every
    worker on this database obeys. The topics follow; when publishing fails after the commit, the report says so
    (``problem``) rather than raising: the rows are gone either way, and the workers republish suppression entries
    missing from their topic at start (``restore_suppressions``).
    """
    wait_for_broker(settings)
    ensure_topics(settings)
    engine = make_engine(settings.database_url, writer=True)
    try:
        customer_id = find_customer(engine, ref, identifier_hashing(settings), settings.default_phone_region)
        if customer_id is None:
            raise NoSuchCustomer(f"no customer {ref!r}")
        salt = suppression_salt(settings)
        erasure_id = str(uuid.uuid4())
        at = datetime.now(UTC)
        rows = erase_customer(
            engine,
            customer_id,
            suppress=(lambda keys: [suppression_hash(salt, key) for key in keys])
            if mode is Mode.SUPPRESS_WITH_DELETE
            else None,
            erasure_id=erasure_id,
            at=at,
            actor=actor,
            reason=reason,
            options={"mode": mode.value},
        )
        if rows is None:  # erased or merged away since it was found
            raise NoSuchCustomer(f"no customer {ref!r} (it went while the erasure began)")
        report = ErasureReport(erasure_id, mode, rows, tombstones=0, unpublished_before=0)
        topics = Topics(settings.topic_prefix)
        try:
            producer = make_producer(settings, client_id="cxstream-erase")
            try:
                _send_all(producer, _suppression_records(topics, [(h, erasure_id, at) for h in rows.hashes]))
                report.unpublished_before = _wait_outbox(engine, rows.outbox_before, wait_s)
                tombstones = _tombstones(producer, topics, rows)
                _send_all(producer, tombstones)
                report.tombstones = len(tombstones)
            finally:
                producer.close(10)
        except (KafkaError, BrokerUnreachable) as exc:
            report.problem = (
                f"erased in SQL, but publishing to {settings.kafka_url} failed ({exc}): "
                f"{'suppression entries are republished by the next worker start; ' if rows.hashes else ''}"
                "the tombstones were not published"
            )
        return report
    finally:
        engine.dispose()


def _suppression_records(
    topics: Topics, entries: list[tuple[str, str, datetime]]
) -> list[tuple[str, bytes, bytes | None, int | None]]:
    """The ``cx.suppressions`` records of (hash, erasure id, time) entries, keyed by the hash."""
    return [
        (topics.suppressions, digest.encode(), orjson.dumps({"erasure_id": eid, "created_at": at.isoformat()}), None)
        for digest, eid, at in entries
    ]


def _send_all(producer: Any, records: list[tuple[str, bytes, bytes | None, int | None]]) -> None:
    """Send (topic, key, value, partition) records and wait until the broker acknowledged every one (raising the
    first failure: ``flush`` alone does not)."""
    futures = [producer.send(topic, key=key, value=value, partition=part) for topic, key, value, part in records]
    producer.flush(30)
    for future in futures:
        future.get(timeout=30)


def _wait_outbox(engine: Any, before: int | None, wait_s: float) -> int:
    """Wait until the outbox rows up to ``before`` are published; return how many are left after ``wait_s``."""
    if before is None:
        return 0
    deadline = time.monotonic() + wait_s
    while (left := outbox_pending_upto(engine, before)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _tombstones(producer: Any, topics: Topics, rows: ErasedRows) -> list[tuple[str, bytes, bytes | None, int | None]]:
    """Null records for the person's keys on the compacted output topics, routed as the worker routes them."""
    records: list[tuple[str, bytes, bytes | None, int | None]] = []
    profiles = len(producer.partitions_for(topics.profiles))
    for customer_id in [rows.customer_id, *rows.merged_ids]:
        key = customer_id.encode()
        records.append((topics.profiles, key, None, partition_for(key, profiles)))
    metrics = len(producer.partitions_for(topics.metrics))
    for cell in rows.cells:
        start = cell.window_start.isoformat()
        key, entity = metric_cell_route(cell, start)
        partition = partition_for(entity.encode(), metrics)
        records.append((topics.metrics, key.encode(), None, partition))
        # Versions before one record per cell published one per figure, under keys naming the metric: a topic
        # written by them may still hold the person's figures there.
        for metric in METRICS:
            records.append((topics.metrics, f"{entity}|{metric}|{cell.window}|{start}".encode(), None, partition))
    return records


def restore_suppressions(settings: Settings, engine: Any, timeout_s: float = 30.0) -> int:
    """Add the suppression entries on the suppressions topic that the database lacks (a fresh database, or one
    restored from a backup older than an erasure), and publish those the topic lacks (an erasure whose publishing
    failed after its commit); return how many the database gained. Run by the worker at start."""
    from kafka import KafkaConsumer, TopicPartition

    topic = Topics(settings.topic_prefix).suppressions
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id="cxstream-suppressions",
        group_id=None,
        enable_auto_commit=False,
        allow_auto_create_topics=False,
        fetch_max_wait_ms=100,
        request_timeout_ms=15_000,
    )
    entries: list[tuple[str, str, datetime]] = []
    try:
        # The worker creates the topic first (ensure_topics); none means nothing to read.
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        if parts:
            consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts) if parts else {}
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} took over {timeout_s:.0f}s")
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    if record.key is None or record.value is None:
                        continue
                    body = orjson.loads(record.value)
                    created = datetime.fromisoformat(body["created_at"])
                    entries.append((record.key.decode(), str(body["erasure_id"]), created))
        added = add_suppressions(engine, entries)
    finally:
        consumer.close()
    on_topic = {digest for digest, _, _ in entries}
    missing = [entry for entry in suppression_entries(engine) if entry[0] not in on_topic]
    if missing:
        producer = make_producer(settings, client_id="cxstream-suppressions")
        try:
            _send_all(producer, _suppression_records(Topics(settings.topic_prefix), missing))
        finally:
            producer.close(10)
    return added
