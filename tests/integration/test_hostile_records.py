"""Records on a channel topic that hold no event never stop the worker: each is dead-lettered, the rest applied.

Written straight to the topic with a plain producer, as any other producer (or a mistake) could: a tombstone, an
empty value, a value over the size limit, a non-JSON value, a nesting bomb, an envelope of thousands of invalid
items, a JSON ``null``, all between valid events of the same partition.
"""

from __future__ import annotations

import orjson
import psutil
import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from sqlalchemy import select

from config.topics import Topics
from schemas.deadletter import DeadLetter
from sinks import tables as t
from sinks.database import make_engine
from tests.support.kafka import read_topic
from tests.support.processes import wait_until
from tests.support.results import caught_up, end_offsets, prometheus_value
from tests.support.workers import WorkerFactory


def event(n: int) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"web-hostile-{n}",
            "channel": "web",
            "type": "page_view",
            "occurred_at": f"2024-05-01T10:{n:02d}:00Z",
            "received_at": f"2024-05-01T10:{n:02d}:01Z",
            "identifiers": {"web_anonymous_id": f"anon-{n}"},
            "source": {"system": "test", "id": f"hostile-{n}"},
        }
    )


@pytest.mark.conformance
def test_records_holding_no_event_are_dead_lettered_and_the_worker_goes_on(
    kafka_url: str, topic_prefix: str, sqlite_url: str, workers: WorkerFactory
) -> None:
    topic = Topics(topic_prefix).channel("web")
    env = workers.env(sqlite_url, topic_prefix)
    hostile = {
        "tombstone": None,
        "empty": b"",
        "blank": b"  \n",
        "too_large": b'{"padding": "' + b"x" * (2 * 1024 * 1024) + b'"}',
        "not_json": b"{oops",
        "nesting_bomb": b"[" * 100_000 + b"]" * 100_000,
        "garbage_envelope": orjson.dumps([{"item": n} for n in range(5000)]),
        "json_null": b"null",
    }
    expected_reasons = {
        "tombstone": "empty_record",
        "empty": "empty_record",
        "blank": "empty_record",
        "too_large": "record_too_large",
        "not_json": "invalid_json",
        "nesting_bomb": "invalid_json",
        "garbage_envelope": "validation_error",
        "json_null": "validation_error",
    }
    servers = kafka_url.split("://", 1)[1].split(",")
    # Apache Kafka refuses records over 1 MiB unless the topic allows more: this one does, so the worker's own
    # limit (CXSTREAM_MAX_RECORD_BYTES) is what the oversized record meets, as on a topic configured for it.
    admin = KafkaAdminClient(bootstrap_servers=servers)
    admin.create_topics([NewTopic(topic, 4, 1, topic_configs={"max.message.bytes": str(8 * 1024 * 1024)})])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=servers, max_request_size=8 * 1024 * 1024, acks="all")
    offsets = {}
    producer.send(topic, key=b"k", value=event(0), partition=0).get(timeout=30)
    for n, (name, value) in enumerate(hostile.items(), 1):
        offsets[name] = producer.send(topic, key=b"k", value=value, partition=0).get(timeout=30).offset
        producer.send(topic, key=b"k", value=event(n), partition=0).get(timeout=30)
    producer.close()

    worker = workers.start(env)
    engine = make_engine(sqlite_url)
    ends = end_offsets(kafka_url, Topics(topic_prefix).channels)
    wait_until(lambda: caught_up(engine, env["CXSTREAM_APP_ID"], ends), 90, "the worker to apply every record")
    assert worker.proc.poll() is None, worker.log()[-3000:]
    with engine.connect() as conn:
        applied = set(conn.execute(select(t.touchpoints.c.event_id)).scalars())
    assert applied == {f"web-hostile-{n}" for n in range(len(hostile) + 1)}, "every valid event around them lands"

    dead = [DeadLetter.model_validate_json(v) for _, v in read_topic(kafka_url, Topics(topic_prefix).deadletter)]
    by_offset = {d.offset: d for d in dead if d.topic == topic}
    for name, offset in offsets.items():
        letter = by_offset[offset]
        assert (letter.reason, letter.stage, letter.partition) == (expected_reasons[name], "worker", 0), name
        assert f"{topic}[0] offset {offset}" in letter.detail
    assert by_offset[offsets["garbage_envelope"]].original() == hostile["garbage_envelope"], "one for the record"
    assert len(by_offset[offsets["too_large"]].original()) == 64 * 1024
    assert len(dead) == len(hostile)

    tree = [psutil.Process(worker.proc.pid), *psutil.Process(worker.proc.pid).children(recursive=True)]
    assert sum(p.memory_info().rss for p in tree) < 1024 * 1024 * 1024, "memory stays bounded"
    wait_until(
        lambda: prometheus_value(worker.metrics_text(), "cxstream_dead_letters_total", stage="worker") == len(hostile),
        30,
        "the dead letters to be counted",
    )

    # A restarted worker does not trip over them again: they are applied offsets now.
    worker.stop()
    again = workers.start(env)
    wait_until(lambda: caught_up(engine, env["CXSTREAM_APP_ID"], ends), 60, "the restarted worker to catch up")
    assert again.proc.poll() is None
