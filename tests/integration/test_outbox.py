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

    assert [payload for _, payload in pending] == [b"mine, recent", b"orphaned", b"mine, old"], "in commit order"
