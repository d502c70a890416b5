"""Which unpublished outbox rows a starting worker publishes: its own, and those of workers that are gone; a running
worker publishes the rows of commits whose answer the database connection lost."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import OperationalError

from config.settings import load_settings
from config.topics import Topics
from schemas.touchpoint import Channel
from sinks import tables as t
from sinks.database import make_engine, upgrade
from sinks.sql import SqlSink
from streams import apply_process
from streams.adapters.reader import convert_one
from streams.pipeline import BatchProcessor, InRecord
from streams.sandbox.journeys import simulate


def test_a_starting_worker_leaves_a_live_workers_recent_rows_alone(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    now = datetime.now(UTC)
    rows = [
        ("g", "worker-1", now - timedelta(seconds=5), b"mine, recent"),
        ("g", "worker-2", now - timedelta(seconds=5), b"a live worker's"),
        ("g", "worker-2", now - timedelta(minutes=10), b"orphaned"),
        ("g", "worker-1", now - timedelta(minutes=10), b"mine, old"),
        ("other-group", "worker-1", now, b"another group's"),
    ]
    with engine.begin() as conn:
        conn.execute(
            insert(t.outbox),
            [{"group_id": g, "worker_id": w, "created_at": at, "payload": p} for g, w, at, p in rows],
        )

    pending = SqlSink(engine).pending_outbox("g", "worker-1", now - timedelta(minutes=2))

    assert [(row.worker_id, row.payload) for row in pending] == [
        ("worker-1", b"mine, recent"),
        ("worker-2", b"orphaned"),
        ("worker-1", b"mine, old"),
    ], "in commit order, each with the worker that committed it"


def test_outbox_ids_are_never_reused_once_the_table_is_empty(database_url: str) -> None:
    """The commit markers of transactional outputs say "published up to id N": a later row must get an id above N.

    SQLite gives the largest rowid + 1, so an emptied table would start again at 1, unless it is AUTOINCREMENT.
    """
    engine = make_engine(database_url)
    upgrade(engine)
    sink = SqlSink(engine)
    row = {"group_id": "g", "worker_id": "worker-1", "created_at": datetime.now(UTC), "payload": b"x"}
    ids = []
    for _ in range(3):
        with engine.begin() as conn:
            ids.append(conn.execute(insert(t.outbox).values(row).returning(t.outbox.c.id)).scalar_one())
        sink.delete_outbox([ids[-1]])
    assert ids == sorted(set(ids)), f"ids reused: {ids}"
    assert len(sink.database_id()) == 36


class CommitAnswerLost(SqlSink):
    """The SQL sink, whose transaction commits and then fails when ``lose_next`` is set: the connection broke while
    the COMMIT's answer was on its way (the server committed; the worker cannot know)."""

    lose_next = False

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with super().transaction() as conn:
            yield conn
        if self.lose_next:
            self.lose_next = False
            raise OperationalError("COMMIT", None, ConnectionError("server closed the connection unexpectedly"))


def test_a_batch_committed_by_a_call_that_seemed_to_fail_is_published_by_the_running_worker(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database outage can break the connection after the server received a COMMIT: the call fails, the worker
    applies the batch again and finds it applied. The committed outbox row must still reach the Faust process (which
    publishes, then deletes it), once and in commit order: else it waits in the outbox until the worker restarts."""
    settings = load_settings(database_url=database_url)
    engine = make_engine(database_url, writer=True)
    upgrade(engine)
    sink = CommitAnswerLost(engine)
    for name, value in (("_processor", BatchProcessor(settings, sink)), ("_outbox_told", -1), ("_unsure", False)):
        monkeypatch.setattr(apply_process, name, value)
    topics, offsets, records = Topics(settings.topic_prefix), Counter[str](), []
    for n, rec in enumerate(simulate(customers=20, days=2, seed=7)):
        event = getattr(convert_one(Channel(rec.channel), rec.raw, source_file="simulate", line=n), "event", None)
        if event is not None:
            topic = topics.channel(event.channel)
            records.append(InRecord(topic, 0, offsets[topic], event.model_dump_json().encode()))
            offsets[topic] += 1
    first, lost, after = records[:20], records[20:40], records[40:60]

    call = apply_process._call
    assert call(apply_process.pending_outbox, False, settings.worker_id, datetime.now(UTC))[1] == []
    summaries = [call(apply_process.process, False, first)]
    sink.lose_next = True
    with pytest.raises(apply_process.TransientDatabaseError):
        call(apply_process.process, False, lost)
    # The worker retries the call after a reload (``Worker._with_database``), then goes on.
    summaries += [call(apply_process.process, True, lost), call(apply_process.process, False, after)]

    with engine.connect() as conn:
        committed = conn.execute(select(t.outbox.c.id, t.outbox.c.payload).order_by(t.outbox.c.id)).all()
    published: list[tuple[int, bytes | None]] = []  # what ``Worker._publish`` queues, in order
    for summary in summaries:
        published += [(row.id, row.payload) for row in summary.unreported]
        published += [] if summary.outbox_id is None else [(summary.outbox_id, summary.outbox)]
    assert len(committed) == 3, "the lost call committed"
    assert [i for i, _ in published] == [i for i, _ in committed], "every committed row told of once, in commit order"
    assert [p for _, p in published] == [bytes(p) for _, p in committed]
    assert [s.unreported for s in summaries[::2]] == [(), ()], "only the call after the failure carries the lost row"
