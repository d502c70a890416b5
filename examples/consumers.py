"""How a downstream system reads cxstream's output topics: one small consumer per topic (kafka-python).

Run one as ``python examples/consumers.py TOPIC`` (a snapshot: the topic read to its end and folded) or
``python examples/consumers.py TOPIC --follow GROUP`` (a service: records as they come) with ``CXSTREAM_KAFKA_URL`` and
``CXSTREAM_TOPIC_PREFIX`` as the worker has them (defaults: ``localhost:9092``, ``cx.``). Each consumer shows the
rule its topic needs:

- ``profiles``: compacted, keyed by customer: keep the latest record per key; a record with ``merged_into`` says
  the customer was merged away (drop it, or follow it to the survivor).
- ``timeline``: an entry is re-emitted when a later event changes it: keep the latest per ``event_id``.
- ``metrics``: one record per cell (scope, key, window, start) holding all its figures: keep the record with the
  highest ``revision`` per key; ``status`` turns ``final`` when the window closes (a late event may still revise
  a final cell, with a higher revision).
- ``alerts``: ``alert_id`` is deterministic per cause: a redelivered alert has the same id; act once per id.
- ``experience-alerts``: a channel's or the company's figure below its own baseline; compacted, keyed by
  ``alert_id``: the record of the highest ``revision`` per id is its status, ``firing`` or ``resolved``.
- ``identity``: every merge with its evidence: map merged customer ids to their survivor (chains resolved).
- ``deadletter``: rejected records with the reason and, as the settings keep them, the original bytes.

Read with ``isolation_level="read_committed"``: with output transactions on (Apache Kafka) a worker that crashes
mid-publish leaves an aborted transaction that such a consumer never sees. Each ``fold_*`` function is the rule
alone, on decoded values, so a consumer in another framework can copy it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from kafka import KafkaConsumer, TopicPartition

#: A record's key and decoded value; the value is None for a tombstone, which deletes its key (``cx.profiles`` and
#: ``cx.metrics`` after an erasure).
Record = tuple[bytes | None, dict[str, Any] | None]


def fold_profiles(records: Iterable[Record]) -> dict[str, dict[str, Any]]:
    """The current profile of every customer not merged away or erased (latest record per key wins)."""
    latest: dict[str, dict[str, Any]] = {}
    for key, value in records:
        if value is None:
            latest.pop((key or b"").decode(), None)
        else:
            latest[value["customer_id"]] = value
    return {customer_id: p for customer_id, p in latest.items() if p.get("merged_into") is None}


def fold_timeline(records: Iterable[Record]) -> dict[str, dict[str, Any]]:
    """Every timeline entry in its latest version, by event id."""
    return {value["event_id"]: value for _, value in records}


def fold_metrics(records: Iterable[Record]) -> dict[bytes | None, dict[str, Any]]:
    """The current record of every cell (scope, key, window, start), its figures under ``figures``: the highest
    revision per record key."""
    cells: dict[bytes | None, dict[str, Any]] = {}
    for key, value in records:
        if value is None:
            cells.pop(key, None)  # an erased person's cell, or a merged customer's
            continue
        if "figures" not in value:
            continue  # one figure per record, as versions before one record per cell published them
        held = cells.get(key)
        if held is None or value["revision"] > held["revision"]:
            cells[key] = value
    return cells


def fold_alerts(records: Iterable[Record]) -> dict[str, dict[str, Any]]:
    """Each alert once, by its deterministic id (a redelivery is the same alert)."""
    alerts: dict[str, dict[str, Any]] = {}
    for _, value in records:
        alerts.setdefault(value["alert_id"], value)
    return alerts


def fold_experience_alerts(records: Iterable[Record]) -> dict[str, dict[str, Any]]:
    """Each experience-drop alert's current status: the highest revision per id (two workers' records may arrive
    in either order)."""
    alerts: dict[str, dict[str, Any]] = {}
    for _, value in records:
        held = alerts.get(value["alert_id"])
        if held is None or value["revision"] > held["revision"]:
            alerts[value["alert_id"]] = value
    return alerts


def fold_identity(records: Iterable[Record]) -> dict[str, str]:
    """Merged customer id -> the customer it lives on as now (a chain of merges followed to its end).

    A ``split`` record (``cxstream split``) is no merge: its ``merged_id`` was split off and is a customer of its own
    again. The topic is keyed by ``merged_id``, so a customer's merges and splits arrive in order.
    """
    survivor: dict[str, str] = {}
    for _, value in records:
        if value.get("kind") == "split":
            survivor.pop(value["merged_id"], None)
        else:
            survivor[value["merged_id"]] = value["survivor_id"]

    def final(customer_id: str) -> str:
        seen = set()
        while customer_id in survivor and customer_id not in seen:
            seen.add(customer_id)
            customer_id = survivor[customer_id]
        return customer_id

    return {merged: final(merged) for merged in survivor}


def fold_deadletter(records: Iterable[Record]) -> dict[str, int]:
    """Dead letters counted by reason (what an operator looks at first)."""
    counts: dict[str, int] = {}
    for _, value in records:
        counts[value["reason"]] = counts.get(value["reason"], 0) + 1
    return counts


FOLDS: dict[str, Callable[[Iterable[Record]], Any]] = {
    "profiles": fold_profiles,
    "timeline": fold_timeline,
    "metrics": fold_metrics,
    "alerts": fold_alerts,
    "experience-alerts": fold_experience_alerts,
    "identity": fold_identity,
    "deadletter": fold_deadletter,
}


def _servers(kafka_url: str) -> list[str]:
    return [part.split("://", 1)[-1] for part in kafka_url.split(",")]


def read_topic(kafka_url: str, topic: str, timeout_s: float = 60.0) -> Iterator[Record]:
    """Decoded records of ``topic`` from its beginning to its current end, committed transactions only (a
    snapshot: no consumer group, nothing committed). A tombstone comes as ``(key, None)``: until compaction the
    key's earlier records are still there, and the tombstone says to forget them."""
    consumer = KafkaConsumer(
        bootstrap_servers=_servers(kafka_url),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic} not read to its end within {timeout_s} s (an open transaction?)")
            for messages in consumer.poll(timeout_ms=500).values():
                for message in messages:
                    yield message.key, None if message.value is None else json.loads(message.value)
    finally:
        consumer.close()


def follow_topic(kafka_url: str, topic: str, group_id: str) -> Iterator[Record]:
    """Decoded records of ``topic`` as they come, in a consumer group (a service).

    The position is committed only once the caller has handled a record (when it asks for the next one), never
    by a timer before: a service that crashes mid-record reads that record again instead of skipping it. Here
    after every record for clarity; a busy service commits every few hundred.
    """
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=_servers(kafka_url),
        group_id=group_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    try:
        for message in consumer:
            yield message.key, None if message.value is None else json.loads(message.value)
            consumer.commit()
    finally:
        consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("topic", choices=sorted(FOLDS))
    parser.add_argument("--follow", metavar="GROUP", help="keep reading in this consumer group; print each record")
    args = parser.parse_args()
    kafka_url = os.environ.get("CXSTREAM_KAFKA_URL", "localhost:9092")
    topic = os.environ.get("CXSTREAM_TOPIC_PREFIX", "cx.") + args.topic
    if args.follow:
        for key, value in follow_topic(kafka_url, topic, args.follow):
            print((key or b"").decode(), json.dumps(value), flush=True)
        return
    folded = FOLDS[args.topic](read_topic(kafka_url, topic))
    json.dump({k.decode() if isinstance(k, bytes) else str(k): v for k, v in folded.items()}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
