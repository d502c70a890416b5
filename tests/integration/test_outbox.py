"""Which unpublished outbox rows a starting worker publishes: its own, and those of workers that are gone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import insert

from sinks import tables as t
from sinks.database import make_engine, upgrade
from sinks.sql import SqlSink


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
