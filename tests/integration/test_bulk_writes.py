"""Bulk writes: on PostgreSQL a batch's rows go in one statement over column arrays (``BulkStatement.unnest_sql``);
what lands must be what row-by-row upserts give on SQLite, and a value the column cannot hold must fail, never be
cut to size."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from sinks import tables as t
from sinks.contract import BatchWrite, CustomerRow, TouchpointRow
from sinks.database import make_engine, upgrade
from sinks.sql import SqlSink

T0 = datetime(2026, 5, 1, 9, 30, 15, 123456, tzinfo=UTC)


def _touchpoint(n: int, **changes: Any) -> TouchpointRow:
    row = TouchpointRow(
        event_id=f"e-{n}",
        customer_id=None if n % 5 == 0 else f"c-{n % 3}",
        channel="phone",
        type="support_contact",
        occurred_at=T0 + timedelta(minutes=n),
        received_at=T0 + timedelta(minutes=n, seconds=1),
        committed_at=T0 + timedelta(hours=1),
        stage="post_purchase",
        moments="complaint" if n % 2 else "",
        amount=None if n % 4 else Decimal("12.3456"),
        currency=None if n % 4 else "EUR",
        issue_id=None,
        issue_key=f"k-{n % 2}",
        resolved=None if n % 3 == 0 else n % 3 == 1,
        transfers=n % 2,
        repeat_contact=n % 2 == 0,
        nps=None,
        csat=n % 5 + 1,
        ces=None,
        source_id=f"src-é-{n}",
        resolution_contradicted=None if n % 3 != 1 else n % 2 == 0,
    )
    return row._replace(**changes)


def _customer(n: int) -> CustomerRow:
    return CustomerRow(
        customer_id=f"c-{n}",
        first_seen=T0,
        last_seen=T0 + timedelta(days=n),
        stage="purchase",
        events=n,
        purchases=1,
        revenue=Decimal("99.9900"),
        contacts=0,
        returns=0,
        open_issues=0,
        overdue_at=None,
        state={"v": 2, "id": f"c-{n}", "note": 'quotes " and \\ and ünïcode', "n": [1, 2.5, None]},
        traits=None if n % 2 else {"plan": "gold"},
        engagement=n % 1000 / 10,
        channels="phone,web" if n % 2 else "",
    )


def _write(database_url: str, batches: list[BatchWrite]) -> dict[str, list[tuple[Any, ...]]]:
    engine = make_engine(database_url, writer=True)
    upgrade(engine)
    sink = SqlSink(engine)
    for batch in batches:
        with sink.transaction() as tx:
            sink.write(tx, batch)
    with engine.connect() as conn:
        return {
            "touchpoints": sorted(tuple(r) for r in conn.execute(select(t.touchpoints))),
            "customers": sorted(tuple(map(str, r)) for r in conn.execute(select(t.customers))),
        }


def test_postgresql_bulk_rows_equal_row_by_row_sqlite(postgres_url: str, sqlite_url: str) -> None:
    first = BatchWrite(
        "g", {}, touchpoints=[_touchpoint(n) for n in range(40)], customers=[_customer(n) for n in range(3)]
    )
    # A later batch revises entries (keeping their first committed_at) and one repeats a key: row by row then.
    again = BatchWrite(
        "g",
        {},
        touchpoints=[_touchpoint(n, stage="purchase", committed_at=T0 + timedelta(hours=2)) for n in range(30, 45)],
    )
    repeated = BatchWrite("g", {}, touchpoints=[_touchpoint(50), _touchpoint(50, moments="delight")])
    on_postgres = _write(postgres_url, [first, again, repeated])
    on_sqlite = _write(sqlite_url, [first, again, repeated])

    def normal(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        return [
            tuple(v.astimezone(UTC).replace(tzinfo=None) if isinstance(v, datetime) else v for v in r) for r in rows
        ]

    assert normal(on_postgres["touchpoints"]) == normal(on_sqlite["touchpoints"])
    assert len(on_postgres["touchpoints"]) == 46
    assert next(r for r in on_postgres["touchpoints"] if r[0] == "e-50")[8] == "delight"
    assert [r[0] for r in on_postgres["customers"]] == [r[0] for r in on_sqlite["customers"]]


def test_a_value_too_long_for_its_column_fails_the_bulk_write(postgres_url: str) -> None:
    rows = [_touchpoint(n) for n in range(3)] + [_touchpoint(3, channel="x" * 17)]  # channel is VARCHAR(16)
    with pytest.raises(DBAPIError, match="too long"):
        _write(postgres_url, [BatchWrite("g", {}, touchpoints=rows)])
