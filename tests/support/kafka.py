"""Reading topics back in tests with a separate kafka-python consumer, as a downstream system would."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import orjson
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from config.topics import Topics

#: Seconds without a new record after which a topic counts as drained.
QUIET_S = 1.5


def log_ends(kafka_url: str, topics: list[str], timeout: float = 30.0) -> dict[tuple[str, int], int]:
    """One past the last offset of every partition, found by reading the partitions to the end."""
    servers = [part.split("://", 1)[-1] for part in kafka_url.split(",")]
    consumer = KafkaConsumer(bootstrap_servers=servers, group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for topic in topics for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = {(tp.topic, tp.partition): 0 for tp in tps}
        deadline, quiet_since = time.monotonic() + timeout, time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=300)
            for tp, msgs in batch.items():
                key = (tp.topic, tp.partition)
                ends[key] = max(ends[key], msgs[-1].offset + 1)
            if batch:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > QUIET_S:
                reported = consumer.end_offsets(tps)
                if all(ends[(tp.topic, tp.partition)] >= reported[tp] for tp in tps):
                    return ends
        return ends
    finally:
        consumer.close()


def read_topic(
    kafka_url: str,
    topic: str,
    *,
    until: Callable[[list[tuple[bytes | None, bytes]]], bool] | None = None,
    timeout: float = 30.0,
) -> list[tuple[bytes | None, bytes]]:
    """Every (key, value) on ``topic`` from the beginning: until ``until`` holds, or the topic is drained."""
    pairs: list[tuple[bytes | None, bytes]] = []

    def done(messages: list[ConsumerRecord]) -> bool:
        pairs.extend((m.key, m.value) for m in messages[len(pairs) :])
        return until is not None and until(pairs)

    messages = read_messages(kafka_url, [topic], until=done if until is not None else None, timeout=timeout)
    return [(m.key, m.value) for m in messages]


def read_messages(
    kafka_url: str,
    topics: list[str],
    *,
    until: Callable[[list[ConsumerRecord]], bool] | None = None,
    timeout: float = 30.0,
) -> list[ConsumerRecord]:
    """Every record of ``topics`` from the beginning, with offsets and timestamps: until ``until`` holds, or drained.

    Topics that do not exist by the deadline are left out; none existing gives [].
    """
    servers = [part.split("://", 1)[-1] for part in kafka_url.split(",")]
    consumer = KafkaConsumer(bootstrap_servers=servers, group_id=None, enable_auto_commit=False)
    try:
        deadline = time.monotonic() + timeout
        partitions: dict[str, set[int]] = {}
        while len(partitions) < len(topics) and time.monotonic() < deadline:
            for topic in topics:
                found = consumer.partitions_for_topic(topic)
                if found is not None:
                    partitions[topic] = found
            if len(partitions) < len(topics):
                time.sleep(0.2)
        if not partitions:
            return []
        tps = [TopicPartition(topic, p) for topic in topics if topic in partitions for p in sorted(partitions[topic])]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list[ConsumerRecord] = []
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=500)
            for msgs in batch.values():
                records.extend(msgs)
            if until is not None:
                if until(records):
                    break
            elif batch:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > QUIET_S:
                # The embedded broker's ListOffsets can answer short of the log end, so "drained" means
                # nothing new for a while and the reported ends reached, not the reported ends alone.
                ends = consumer.end_offsets(tps)
                if all(consumer.position(tp) >= ends[tp] for tp in tps):
                    break
        return records
    finally:
        consumer.close()


def read_committed(kafka_url: str, topics: list[str]) -> Counter[tuple[str, bytes | None, bytes | None]]:
    """Every (topic, key, value) of ``topics`` a ``read_committed`` consumer reads from the start, with how often.

    Read up to the last stable offset: a transaction still open holds what follows it back.
    """
    servers = [part.split("://", 1)[-1] for part in kafka_url.split(",")]
    consumer = KafkaConsumer(
        bootstrap_servers=servers, group_id=None, enable_auto_commit=False, isolation_level="read_committed"
    )
    try:
        tps = [TopicPartition(topic, p) for topic in topics for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        seen: Counter[tuple[str, bytes | None, bytes | None]] = Counter()
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, f"{topics} not read to their ends within 60 s (an open transaction?)"
            for tp, messages in consumer.poll(timeout_ms=500).items():
                seen.update((tp.topic, m.key, m.value) for m in messages)
        return seen
    finally:
        consumer.close()


def published_outbox_rows(kafka_url: str, prefix: str, group_id: str) -> Counter[tuple[str, int]]:
    """(worker, outbox row id) of every committed transaction of a group's workers, with how often it committed."""
    markers = read_committed(kafka_url, [Topics(prefix).outbox_commits])
    rows: Counter[tuple[str, int]] = Counter()
    for (_, key, value), count in markers.items():
        group, worker = orjson.loads(key or b"[]")
        if group == group_id and value is not None:
            rows[(worker, orjson.loads(value)[1])] += count
    return rows
