"""Exactly-once downstream on Apache Kafka: outbox rows published in Kafka transactions, each seen once by a
``read_committed`` consumer even when the worker dies between the Kafka commit and the row's deletion.

The crash window is made certain rather than hit by chance: the first publisher's deletion of published rows
fails (as if the process died right after the broker committed), then a new publisher of the same worker starts
on the same database and broker. With transactions it finds the rows in its commit markers and only deletes
them; without (the embedded broker's at-least-once path) it publishes them again, which the same check shows.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, select

from config.settings import Settings
from config.topics import Topics
from sinks import tables as t
from sinks.database import make_engine, upgrade
from sinks.sql import SqlSink
from streams.downstream import DownstreamProducer, OutboxPayload, OutboxPublisher, OutboxRef, Outputs, OutRecord
from streams.kafka import ensure_topics
from tests.support.kafka import published_outbox_rows, read_committed
from tests.support.processes import wait_until

ROWS, RECORDS_PER_ROW = 3, 40


def outbox_rows(topics: Topics) -> list[bytes]:
    """``ROWS`` committed batches' outputs, every record distinct."""
    payloads = []
    for row in range(ROWS):
        outputs = Outputs()
        for n in range(RECORDS_PER_ROW):
            topic = topics.outputs[n % len(topics.outputs)]
            outputs.add(topic, f"key-{row}-{n}", f'{{"row": {row}, "n": {n}}}'.encode())
        payloads.append(outputs.encode())
    return payloads


class AnswerLostAfterCommit(DownstreamProducer):
    """The first row's transaction commits at the broker, but the answer is lost (a timeout, a dropped connection):
    the publisher sees a failure. Sending the row again would publish it twice."""

    lost = False

    async def publish(self, row: OutboxRef, records: Iterable[OutRecord]) -> Counter[str]:
        sent = await super().publish(row, records)
        if not self.lost:
            self.lost = True
            raise TimeoutError("the broker's answer to the commit was lost")
        return sent


def committed(engine: Engine, payloads: list[bytes]) -> None:
    """Outbox rows of worker-1 of group g, as committed batches leave them."""
    rows = [{"group_id": "g", "worker_id": "worker-1", "created_at": datetime.now(UTC), "payload": p} for p in payloads]
    with engine.begin() as conn:
        conn.execute(insert(t.outbox), rows)


async def run_publisher(
    settings: Settings,
    sink: SqlSink,
    transactions: str,
    delete_fails: bool,
    producer_class: type[DownstreamProducer] = DownstreamProducer,
) -> bool:
    """Start a worker's outbox publisher on what the database holds, let it publish, stop it; return whether its
    producer was transactional."""

    async def delete(ids: Sequence[int]) -> None:
        if delete_fails:
            raise ConnectionError("the worker died after the broker committed, before the rows were deleted")
        sink.delete_outbox(ids)

    topics = Topics(settings.topic_prefix)
    producer = producer_class(
        settings.bootstrap_servers,
        "test-downstream",
        group_id=settings.app_id,
        worker_id="worker-1",
        transactions=transactions,
        commits_topic=topics.outbox_commits,
    )
    orphaned_before = datetime.now(UTC) - timedelta(minutes=2)
    publisher = OutboxPublisher(
        producer,
        "worker-1",
        pending=lambda: asyncio.to_thread(
            lambda: (sink.database_id(), sink.pending_outbox(settings.app_id, "worker-1", orphaned_before))
        ),
        delete=delete,
        on_sent=lambda _sent: None,
    )
    await publisher.start()
    try:
        for _ in range(200):
            if publisher.waiting == 0 and publisher.ready.is_set():
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the deletion of the last rows runs after their acknowledgement
        return producer.transactional
    finally:
        await publisher.stop()


@pytest.mark.parametrize(
    ("kafka_url", "transactions", "copies"),
    [
        pytest.param("apache-kafka", "auto", 1, marks=pytest.mark.apache_kafka, id="apache-kafka-transactions"),
        pytest.param("tansu", "auto", 2, id="embedded-at-least-once"),
    ],
    indirect=["kafka_url"],
)
def test_rows_published_before_a_crash_are_not_published_again(
    kafka_url: str, topic_prefix: str, sqlite_url: str, transactions: str, copies: int
) -> None:
    settings = Settings(kafka_url=kafka_url, database_url=sqlite_url, topic_prefix=topic_prefix, app_id="g")
    topics = Topics(topic_prefix)
    ensure_topics(settings)
    engine = make_engine(sqlite_url)
    upgrade(engine)
    sink = SqlSink(engine)
    payloads = outbox_rows(topics)
    committed(engine, payloads)

    first = asyncio.run(run_publisher(settings, sink, transactions, delete_fails=True))
    with engine.connect() as conn:
        assert len(conn.execute(select(t.outbox.c.id)).all()) == ROWS, "the crash left every published row behind"
    second = asyncio.run(run_publisher(settings, sink, transactions, delete_fails=False))

    assert first == second == (copies == 1), "transactions exactly where the broker grants them"
    expected = {
        (topic, key, value) for payload in payloads for topic, key, value, _ in OutboxPayload(payload).records()
    }
    wait_until(lambda: set(read_committed(kafka_url, topics.outputs)) == expected, 30, "every record")
    seen = read_committed(kafka_url, topics.outputs)
    assert set(seen.values()) == {copies}, f"each record {copies} time(s) to a read_committed consumer"
    with engine.connect() as conn:
        assert conn.execute(select(t.outbox.c.id)).first() is None, "the outbox is empty again"
    markers = published_outbox_rows(kafka_url, topic_prefix, "g")
    assert markers == ({("worker-1", n): 1 for n in range(1, ROWS + 1)} if copies == 1 else {}), "one commit per row"


@pytest.mark.apache_kafka
@pytest.mark.parametrize("kafka_url", ["apache-kafka"], indirect=True)
def test_a_fresh_database_on_the_same_topics_publishes_its_rows(
    kafka_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    """Markers name the database: a new one, whose outbox ids start again at 1, is not taken as published."""
    topics = Topics(topic_prefix)
    payloads = outbox_rows(topics)
    for run in ("old", "new"):
        url = f"sqlite:///{tmp_path / run}.db"
        settings = Settings(kafka_url=kafka_url, database_url=url, topic_prefix=topic_prefix, app_id="g")
        ensure_topics(settings)
        engine = make_engine(url)
        upgrade(engine)
        committed(engine, payloads)
        assert asyncio.run(run_publisher(settings, SqlSink(engine), "on", delete_fails=False))
    seen = read_committed(kafka_url, topics.outputs)
    assert len(seen) == ROWS * RECORDS_PER_ROW and set(seen.values()) == {2}, "both databases' rows, each once"


@pytest.mark.apache_kafka
@pytest.mark.parametrize("kafka_url", ["apache-kafka"], indirect=True)
def test_a_commit_whose_answer_was_lost_is_not_published_again(
    kafka_url: str, topic_prefix: str, sqlite_url: str
) -> None:
    """The retry after a failed attempt first settles the attempt's transaction and reads the markers."""
    settings = Settings(kafka_url=kafka_url, database_url=sqlite_url, topic_prefix=topic_prefix, app_id="g")
    topics = Topics(topic_prefix)
    ensure_topics(settings)
    engine = make_engine(sqlite_url)
    upgrade(engine)
    payloads = outbox_rows(topics)
    committed(engine, payloads)
    assert asyncio.run(run_publisher(settings, SqlSink(engine), "on", False, AnswerLostAfterCommit))
    seen = read_committed(kafka_url, topics.outputs)
    assert len(seen) == ROWS * RECORDS_PER_ROW and set(seen.values()) == {1}, "each record once"
    assert published_outbox_rows(kafka_url, topic_prefix, "g") == {("worker-1", n): 1 for n in range(1, ROWS + 1)}
