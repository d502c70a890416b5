"""Migrations applied to a database that already holds rows, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import insert, select

from sinks import tables as t
from sinks.database import make_engine, upgrade
from sinks.migrations import run_migrations
from sinks.sql import as_utc


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
