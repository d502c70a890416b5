"""Kafka plumbing shared by adapters and tools (kafka-python): topic creation, producers, partitioning."""

from __future__ import annotations

import contextlib
import logging
import socket
import time

from kafka import KafkaAdminClient, KafkaProducer
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
    wanted = topics or [*names.channels, names.deadletter, *names.outputs]
    admin = admin_client(settings)
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(
                name,
                settings.partitions,
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
            # Idempotence needs InitProducerId, which the embedded broker does not grant (ARCHITECTURE §7), and
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
