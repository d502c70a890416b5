"""Kafka plumbing shared by adapters and tools (kafka-python): topic creation, producers, partitioning."""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable, Mapping

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.partitioner.default import murmur2

from config.settings import Settings
from config.topics import Topics

log = logging.getLogger(__name__)


class BrokerUnreachable(RuntimeError):
    """No broker answered at the configured URL."""


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` (murmur2), so envelopes route like keyed records."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def wait_for_broker(settings: Settings, timeout_s: float = 5.0) -> None:
    """Raise BrokerUnreachable unless a bootstrap server accepts a TCP connection within ``timeout_s``.

    kafka-python's own clients retry for much longer before giving up; an operator wants the answer now.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        for server in settings.bootstrap_servers:
            host, _, port = server.rpartition(":")
            try:
                with socket.create_connection((host, int(port)), timeout=1.0):
                    return
            except OSError:
                continue
        if time.monotonic() > deadline:
            raise BrokerUnreachable(f"no Kafka broker answered at {settings.kafka_url}")
        time.sleep(0.25)


def admin_client(settings: Settings) -> KafkaAdminClient:
    """An admin client, or BrokerUnreachable with the URL when no broker answers."""
    wait_for_broker(settings)
    try:
        return KafkaAdminClient(
            bootstrap_servers=settings.bootstrap_servers, client_id="cxstream-admin", request_timeout_ms=10_000
        )
    except KafkaError as exc:
        raise BrokerUnreachable(f"no Kafka broker answered at {settings.kafka_url}: {exc}") from exc


def ensure_topics(settings: Settings, topics: list[str] | None = None) -> None:
    """Create cxstream's topics (channel, dead-letter and downstream) when they do not exist yet."""
    names = Topics(settings.topic_prefix)
    wanted = topics or [*names.channels, names.deadletter, *names.outputs, names.outbox_commits, names.suppressions]
    admin = admin_client(settings)
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(
                name,
                1 if name == names.outbox_commits else settings.partitions,
                settings.replication_factor,
                topic_configs={"cleanup.policy": "compact"} if name in names.compacted else {},
            )
            for name in wanted
            if name not in existing
        ]
        if new:
            # Another process may have created them first: that is what we wanted.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(new)
    finally:
        admin.close()


def make_producer(settings: Settings, *, linger_ms: int = 5, client_id: str = "cxstream-adapter") -> KafkaProducer:
    """A producer configured for durability: acks from all replicas, retries, bounded in-flight requests."""
    try:
        return KafkaProducer(
            bootstrap_servers=settings.bootstrap_servers,
            client_id=client_id,
            acks="all",
            retries=10,
            retry_backoff_ms=200,
            # Idempotence needs InitProducerId, which the embedded broker does not grant (docs/architecture.md §7), and
            # kafka-python 3 turns it on by default: a producer stalls after a broker restart with it. One
            # request in flight keeps retried batches in order without it; duplicates are harmless downstream
            # because event ids are deterministic and the worker deduplicates.
            enable_idempotence=False,
            max_in_flight_requests_per_connection=1,
            linger_ms=linger_ms,
            batch_size=256 * 1024,
            max_request_size=8 * 1024 * 1024,
            request_timeout_ms=15_000,
            delivery_timeout_ms=60_000,
        )
    except KafkaError as exc:
        raise BrokerUnreachable(f"no Kafka broker answered at {settings.kafka_url}: {exc}") from exc


class LogMismatch(RuntimeError):
    """The results database applied records that the broker does not hold: it followed another log."""


def missing_applied_records(
    settings: Settings,
    applied: Mapping[tuple[str, int], tuple[int, str | None]],
    fingerprint: Callable[[bytes | None], str],
    timeout_s: float = 10.0,
) -> list[str]:
    """Partitions whose applied record (offset and fingerprint, as the database holds them) the broker lacks.

    The record at each applied offset is fetched and compared: a fresh broker (an embedded one starts empty) or
    another cluster with the same topic names holds no such record, or a different one at that offset. Its
    reported log ends are not trusted alone, because the embedded broker reports the end of the last *batch*.
    A record removed by retention (below the log start) cannot be checked and is not reported.
    """
    if not applied:
        return []
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id="cxstream-log-check",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="none",
    )
    try:
        problems: list[str] = []
        wanted: dict[TopicPartition, tuple[int, str | None]] = {}
        for (topic, partition), (offset, digest) in sorted(applied.items()):
            if partition not in (consumer.partitions_for_topic(topic) or set()):
                problems.append(f"{topic}[{partition}]: offset {offset} applied, but the broker has no such partition")
            else:
                wanted[TopicPartition(topic, partition)] = (offset, digest)
        starts = consumer.beginning_offsets(list(wanted)) if wanted else {}
        checked = {tp: want for tp, want in wanted.items() if want[0] >= starts.get(tp, 0)}
        found: dict[TopicPartition, bytes | None] = {}
        if checked:
            consumer.assign(list(checked))
            for tp, (offset, _) in checked.items():
                consumer.seek(tp, offset)
            deadline = time.monotonic() + timeout_s
            while len(found) < len(checked) and time.monotonic() < deadline:
                for tp, records in consumer.poll(timeout_ms=200).items():
                    for record in records:
                        if record.offset == checked[tp][0]:
                            found[tp] = record.value
                    consumer.pause(tp)
        ends = consumer.end_offsets([tp for tp in checked if tp not in found]) if len(found) < len(checked) else {}
        for tp, (offset, digest) in checked.items():
            where = f"{tp.topic}[{tp.partition}]"
            if tp not in found:
                problems.append(f"{where}: offset {offset} applied, but the broker's log ends at {ends.get(tp, 0)}")
            elif digest is not None and fingerprint(found[tp]) != digest:
                problems.append(f"{where}: the record at applied offset {offset} is not the one the database applied")
        return problems
    finally:
        consumer.close()
