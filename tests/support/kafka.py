"""Reading topics back in tests with a separate kafka-python consumer, as a downstream system would."""

from __future__ import annotations

import time
from collections.abc import Callable

from kafka import KafkaConsumer, TopicPartition


def read_topic(
    kafka_url: str,
    topic: str,
    *,
    until: Callable[[list[tuple[bytes | None, bytes]]], bool] | None = None,
    timeout: float = 30.0,
) -> list[tuple[bytes | None, bytes]]:
    """Every (key, value) on ``topic`` from the beginning: until ``until`` holds, or the topic is drained."""
    servers = [part.split("://", 1)[-1] for part in kafka_url.split(",")]
    consumer = KafkaConsumer(bootstrap_servers=servers, group_id=None, enable_auto_commit=False)
    try:
        deadline = time.monotonic() + timeout
        partitions = None
        while partitions is None and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic)
            if partitions is None:
                time.sleep(0.2)
        if partitions is None:
            return []
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list[tuple[bytes | None, bytes]] = []
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=500)
            for msgs in batch.values():
                records.extend((m.key, m.value) for m in msgs)
            if until is not None:
                if until(records):
                    break
            elif not batch:
                ends = consumer.end_offsets(tps)
                if all(consumer.position(tp) >= ends[tp] for tp in tps):
                    break
        return records
    finally:
        consumer.close()
