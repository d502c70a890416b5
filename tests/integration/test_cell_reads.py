"""Reading metric cells back: the right cells on both databases, through the primary key on SQLite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event

from schemas.outputs import MetricScope
from sinks.contract import BatchWrite, CellKey, CellRow
from sinks.database import make_engine, upgrade
from sinks.sql import SqlSink

START = datetime(2026, 3, 1, tzinfo=UTC)


def _key(key: str, start: datetime) -> CellKey:
    return CellKey(MetricScope.CUSTOMER, key, "hour", int(start.timestamp()))


def _cell(key: str, hours: int, touchpoints: float) -> CellRow:
    start = START + timedelta(hours=hours)
    return CellRow("customer", key, "hour", start, start + timedelta(hours=1), {"touchpoints": touchpoints}, False)


def test_load_cells_finds_exactly_the_cells_asked_for(database_url: str) -> None:
    engine = make_engine(database_url, writer=True)
    upgrade(engine)
    store = SqlSink(engine)
    stored = [_cell(f"c{i}", hours, i * 10 + hours) for i in range(300) for hours in range(3)]
    with engine.begin() as conn:
        store.write(conn, BatchWrite(group_id="g", offsets={}, cells={row.cell: row for row in stored}))
    wanted = [_key(f"c{i}", START + timedelta(hours=i % 3)) for i in range(0, 300, 2)]
    missing = [_key("c1", START + timedelta(hours=7)), _key("nobody", START)]

    with engine.connect() as conn:
        found = store.load_cells(conn, wanted + missing)

    assert found == {key: {"touchpoints": int(key.key[1:]) * 10 + key.window_start.hour} for key in wanted}
    engine.dispose()


def test_sqlite_reads_cells_through_the_primary_key_not_a_table_scan(sqlite_url: str) -> None:
    # A row-value IN list is answered by SQLite with a scan of the whole table: a cost that grows with every
    # cell a long-running worker keeps. The plan of the query load_cells runs must search the key.
    engine = make_engine(sqlite_url, writer=True)
    upgrade(engine)
    executed: list[tuple[str, Any]] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "FROM metric_cells" in statement:
            executed.append((statement, parameters))

    keys = [_key(f"c{i}", START) for i in range(5)]
    with engine.connect() as conn:
        SqlSink(engine).load_cells(conn, keys)
        queries = list(executed)  # the EXPLAINs below would be captured too
        assert queries, "load_cells queried metric_cells"
        for statement, parameters in queries:
            plan = " / ".join(row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters))
            assert "SCAN metric_cells" not in plan, plan
            assert "SEARCH metric_cells USING INDEX" in plan, plan
    engine.dispose()
