"""identity_merges keeps, for every merge, the customer it joined (``merged_into``), however later merges re-point
``survivor_id`` to the customer that lives on; SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from sinks import tables as t
from sinks.contract import BatchWrite, MergeRow
from sinks.database import make_engine, upgrade
from sinks.sql import SqlSink

T0 = datetime(2026, 5, 1, tzinfo=UTC)


def _merge(merged: str, survivor: str) -> MergeRow:
    return MergeRow(merged, survivor, f"e-{merged}", {"email": f"{merged}@example.org"}, T0, survivor)


def test_a_chain_of_merges_keeps_each_merges_own_survivor(database_url: str) -> None:
    engine = make_engine(database_url, writer=True)
    upgrade(engine)
    sink = SqlSink(engine)
    # a -> b, then b -> c in a later batch, then c -> d and e -> d in one batch.
    batches = [[_merge("a", "b")], [_merge("b", "c")], [_merge("c", "d"), _merge("e", "d")]]
    for merges in batches:
        with sink.transaction() as tx:
            sink.write(tx, BatchWrite("g", {}, merges=merges))
    m = t.identity_merges.c
    with engine.connect() as conn:
        rows = {
            row.merged_id: (row.survivor_id, row.merged_into)
            for row in conn.execute(select(m.merged_id, m.survivor_id, m.merged_into))
        }
    assert rows == {"a": ("d", "b"), "b": ("d", "c"), "c": ("d", "d"), "e": ("d", "d")}
