"""Erasure (GDPR Art. 17) of one person: ``cxstream erase REF`` and ``POST /v1/erasures``.

1. The person's identifier keys are hashed (``streams.domain.suppression``) and, unless the mode is
   ``delete_only``, published on the compacted suppressions topic first: a worker replaying the input topics into
   a fresh database reads them at start, so the person does not come back there either.
2. In one transaction (``sinks.erasure``): the customer's row locked as a batch locks it, then its identities,
   touchpoints, alerts, merges and per-customer metric cells and the customer itself removed, the suppression
   entries and an audit row added. From then on every worker drops the events that carry one of the person's
   identifiers: redeliveries, replays from offset 0 and events yet to come (``cxstream_suppressed_events_total``).
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
from sinks.erasure import ErasedRows, add_suppressions, erase_customer, identifier_keys, outbox_pending_upto
from streams.domain.metrics import METRICS
from streams.domain.suppression import suppression_hash
from streams.kafka import BrokerUnreachable, ensure_topics, make_producer, partition_for
from streams.policies import identifier_hashing, suppression_salt
from streams.references import find_customer


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
    """Erase the customer ``ref`` names (an id or ``type:value``); raise ``NoSuchCustomer`` if none."""
    engine = make_engine(settings.database_url, writer=True)
    try:
        customer_id = find_customer(engine, ref, identifier_hashing(settings), settings.default_phone_region)
        if customer_id is None:
            raise NoSuchCustomer(f"no customer {ref!r}")
        salt = suppression_salt(settings)
        topics = Topics(settings.topic_prefix)
        erasure_id = str(uuid.uuid4())
        at = datetime.now(UTC)
        ensure_topics(settings)
        producer = make_producer(settings, client_id="cxstream-erase")
        try:
            published: set[str] = set()
            if mode is Mode.SUPPRESS_WITH_DELETE:
                hashes = [suppression_hash(salt, key) for key in identifier_keys(engine, customer_id)]
                published |= _publish_suppressions(producer, topics, hashes, erasure_id, at)
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
            if rows is None:  # erased or merged away meanwhile
                raise NoSuchCustomer(f"no customer {ref!r} (it went while the erasure began)")
            _publish_suppressions(producer, topics, [h for h in rows.hashes if h not in published], erasure_id, at)
            unpublished = _wait_outbox(engine, rows.outbox_before, wait_s)
            tombstones = _publish_tombstones(producer, topics, rows)
            producer.flush(30)
        except KafkaError as exc:
            raise BrokerUnreachable(f"no Kafka broker answered at {settings.kafka_url}: {exc}") from exc
        finally:
            producer.close(10)
        return ErasureReport(erasure_id, mode, rows, tombstones, unpublished)
    finally:
        engine.dispose()


def _publish_suppressions(producer: Any, topics: Topics, hashes: list[str], erasure_id: str, at: datetime) -> set[str]:
    for digest in hashes:
        value = orjson.dumps({"erasure_id": erasure_id, "created_at": at.isoformat()})
        producer.send(topics.suppressions, key=digest.encode(), value=value)
    producer.flush(30)
    return set(hashes)


def _wait_outbox(engine: Any, before: int | None, wait_s: float) -> int:
    """Wait until the outbox rows up to ``before`` are published; return how many are left after ``wait_s``."""
    if before is None:
        return 0
    deadline = time.monotonic() + wait_s
    while (left := outbox_pending_upto(engine, before)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _publish_tombstones(producer: Any, topics: Topics, rows: ErasedRows) -> int:
    """Null records for the person's keys on the compacted output topics, routed as the worker routes them."""
    sent = 0
    profiles = len(producer.partitions_for(topics.profiles))
    for customer_id in [rows.customer_id, *rows.merged_ids]:
        key = customer_id.encode()
        producer.send(topics.profiles, key=key, value=None, partition=partition_for(key, profiles))
        sent += 1
    metrics = len(producer.partitions_for(topics.metrics))
    for cell in rows.cells:
        entity = f"{cell.scope.value}|{cell.key}"
        partition = partition_for(entity.encode(), metrics)
        start = cell.window_start.isoformat()
        for metric in METRICS:
            key = f"{entity}|{metric}|{cell.window}|{start}".encode()
            producer.send(topics.metrics, key=key, value=None, partition=partition)
            sent += 1
    return sent


def restore_suppressions(settings: Settings, engine: Any, timeout_s: float = 30.0) -> int:
    """Add the suppression entries on the suppressions topic that the database lacks (a fresh database, or one
    restored from a backup older than an erasure); return how many. Run by the worker at start."""
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
    try:
        found = consumer.partitions_for_topic(topic)
        if not found:
            return 0
        parts = [TopicPartition(topic, p) for p in sorted(found)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        entries: list[tuple[str, str, datetime]] = []
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
        return add_suppressions(engine, entries)
    finally:
        consumer.close()
