"""Migrations applied to a database that already holds rows, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import insert, select, text

from sinks import tables as t
from sinks.database import make_engine, upgrade
from sinks.migrations import run_migrations
from sinks.sql import SqlSink, as_utc


def test_0006_keeps_the_day_of_identities_last_seen_and_first_seen_exact(database_url: str) -> None:
    engine = make_engine(database_url)
    run_migrations(engine, "0005")
    first, last = datetime(2024, 5, 1, 9, 30, 1, 250000, tzinfo=UTC), datetime(2024, 5, 3, 17, 45, 59, 1, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(t.identities).values(
                identifier="email:ann@example.org",
                id_type="email",
                id_value="ann@example.org",
                customer_id="c-ann",
                first_seen=first,
                last_seen=last,
            )
        )

    upgrade(engine)

    with engine.connect() as conn:
        stored_first, stored_last = conn.execute(select(t.identities.c.first_seen, t.identities.c.last_seen)).one()
    assert as_utc(stored_first) == first
    assert as_utc(stored_last) == datetime(2024, 5, 3, tzinfo=UTC)
    engine.dispose()


def test_0019_follows_merges_chained_in_one_batch_to_the_customer_that_lives_on(database_url: str) -> None:
    engine = make_engine(database_url)
    run_migrations(engine, "0018")
    at = datetime(2026, 5, 1, tzinfo=UTC)
    # As a batch merging a into b, then b into c, then c into d wrote them before 0019; e's survivor d lives on,
    # and x's survivor y is gone with no merge row (as an erasure leaves it): both stay.
    stored = [("a", "b"), ("b", "c"), ("c", "d"), ("e", "d"), ("x", "y")]
    with engine.begin() as conn:
        conn.execute(
            insert(t.customers),
            [
                {"customer_id": "d", "first_seen": at, "last_seen": at, "stage": "awareness", "state": {}},
            ],
        )
        conn.execute(
            insert(t.identity_merges),
            [
                {
                    "merged_id": m,
                    "survivor_id": s,
                    "merged_into": s,
                    "event_id": "e",
                    "identifiers": {},
                    "occurred_at": at,
                }
                for m, s in stored
            ],
        )

    upgrade(engine)

    m = t.identity_merges.c
    with engine.connect() as conn:
        rows = {
            r.merged_id: (r.survivor_id, r.merged_into)
            for r in conn.execute(select(m.merged_id, m.survivor_id, m.merged_into))
        }
    assert rows == {"a": ("d", "b"), "b": ("d", "c"), "c": ("d", "d"), "e": ("d", "d"), "x": ("y", "y")}
    engine.dispose()


def test_0020_leaves_room_for_heap_only_updates_on_postgresql(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    upgrade(engine)
    tables = ("customers", "metric_cells", "identities")
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT relname, reloptions FROM pg_class WHERE relname = ANY(:t)"), {"t": list(tables)}
        )
        options = dict(rows.all())
    engine.dispose()
    assert options == {
        "customers": ["fillfactor=50"],
        "metric_cells": ["fillfactor=50"],
        "identities": ["fillfactor=70"],
    }


def test_0022_indexes_only_the_customers_with_an_open_issue_and_the_sweep_still_finds_them(database_url: str) -> None:
    engine = make_engine(database_url)
    run_migrations(engine, "0021")
    due = datetime(2024, 5, 2, 12, tzinfo=UTC)
    with engine.begin() as conn:
        for customer_id, overdue_at in (("c-ann", due), ("c-bob", None)):
            conn.execute(
                insert(t.customers).values(
                    customer_id=customer_id,
                    first_seen=due,
                    last_seen=due,
                    stage="purchase",
                    events=1,
                    purchases=1,
                    revenue=0,
                    contacts=0,
                    returns=0,
                    open_issues=0 if overdue_at is None else 1,
                    overdue_at=overdue_at,
                    state={"v": 2},
                )
            )

    upgrade(engine)

    with engine.connect() as conn:
        found = SqlSink(engine).customers_due(conn, datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 5, 3, tzinfo=UTC))
        if engine.dialect.name == "sqlite":
            definition = conn.execute(
                text("SELECT sql FROM sqlite_master WHERE name = 'ix_customers_overdue_at'")
            ).scalar_one()
            plan = conn.execute(
                text("EXPLAIN QUERY PLAN SELECT customer_id FROM customers WHERE overdue_at <= :until"),
                {"until": "2024-05-03 00:00:00.000000"},
            ).all()
            assert "ix_customers_overdue_at" in str(plan)  # the sweep's comparison implies IS NOT NULL
        else:
            definition = conn.execute(
                text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_customers_overdue_at'")
            ).scalar_one()
    engine.dispose()
    assert list(found) == ["c-ann"]
    assert "WHERE (overdue_at IS NOT NULL)" in definition or "WHERE overdue_at IS NOT NULL" in definition
