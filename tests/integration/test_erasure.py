"""Erasure (GDPR Art. 17): a person's rows removed, and kept out through redeliveries, replays from offset 0 into
the same database and into a fresh one, and later events: on SQLite and PostgreSQL, in-process against the real
databases (the batch processor fed from offset 0, as a consumer group that lost its offsets is). The command,
its topics and a real worker: test_erasure_topics.py."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from config.settings import load_settings
from sinks import tables as t
from sinks.database import make_engine, upgrade
from sinks.erasure import add_suppressions, erase_customer
from sinks.sql import SqlSink
from streams.domain.suppression import suppression_hash
from streams.pipeline import BatchProcessor, InRecord
from streams.policies import suppression_salt
from tests.integration.test_crash_equivalence import LOGS, redelivery

AT = datetime(2026, 12, 6, tzinfo=UTC)


def apply_all(database_url: str) -> tuple[Engine, BatchProcessor, Counter[str]]:
    """Every simulated record, from offset 0, in batches of 50; what the batches reported, summed."""
    settings = load_settings(database_url=database_url)
    engine = make_engine(database_url, writer=True)
    upgrade(engine)
    processor = BatchProcessor(settings, SqlSink(engine))
    totals = feed(processor, list(redelivery(dict.fromkeys(LOGS, 0))))
    return engine, processor, totals


def feed(processor: BatchProcessor, records: list[InRecord]) -> Counter[str]:
    totals = Counter[str]()
    for start in range(0, len(records), 50):
        report = processor.process(records[start : start + 50])
        totals["suppressed"] += report.suppressed
        totals["events"] += len(report.events)
    return totals


def person(engine: Engine) -> tuple[str, list[str], list[str]]:
    """A customer with several identifiers and a merge behind it: its id, identifier keys and event ids."""
    i, m = t.identities.c, t.identity_merges.c
    with engine.connect() as conn:
        customer_id = conn.execute(
            select(i.customer_id)
            .where(i.customer_id.in_(select(m.survivor_id)))
            .group_by(i.customer_id)
            .order_by(func.count().desc(), i.customer_id)
            .limit(1)
        ).scalar_one()
        keys = sorted(conn.execute(select(i.identifier).where(i.customer_id == customer_id)).scalars())
        events = sorted(
            conn.execute(select(t.touchpoints.c.event_id).where(t.touchpoints.c.customer_id == customer_id)).scalars()
        )
    return customer_id, keys, events


def traces(engine: Engine, customer_id: str, keys: list[str], events: list[str]) -> dict[str, Any]:
    """Every row that still names the person: by customer id, identifier key or event id."""
    i, tp, c = t.identities.c, t.touchpoints.c, t.metric_cells.c
    with engine.connect() as conn:
        return {
            "customers": conn.scalar(select(func.count()).where(t.customers.c.customer_id == customer_id)),
            "identities": conn.scalar(select(func.count()).where(i.identifier.in_(keys))),
            "touchpoints": conn.scalar(select(func.count()).where(tp.event_id.in_(events))),
            "alerts": conn.scalar(select(func.count()).where(t.alerts.c.customer_id == customer_id)),
            "merges": conn.scalar(
                select(func.count()).where(
                    (t.identity_merges.c.survivor_id == customer_id) | (t.identity_merges.c.merged_id == customer_id)
                )
            ),
            "cells": conn.scalar(select(func.count()).where((c.scope == "customer") & (c.key == customer_id))),
            "metrics": conn.scalar(
                select(func.count()).where((t.metrics.c.scope == "customer") & (t.metrics.c.key == customer_id))
            ),
        }


NONE = {"customers": 0, "identities": 0, "touchpoints": 0, "alerts": 0, "merges": 0, "cells": 0, "metrics": 0}


def _erase(engine: Engine, customer_id: str, salt: str, suppress: bool) -> Any:
    return erase_customer(
        engine,
        customer_id,
        suppress=(lambda keys: [suppression_hash(salt, key) for key in keys]) if suppress else None,
        erasure_id="e-1",
        at=AT,
        actor="test",
        reason="the person asked",
        options={"mode": "suppress_with_delete" if suppress else "delete_only"},
    )


def test_an_erased_person_stays_erased_through_replays_into_this_database_and_a_fresh_one(
    database_url: str, tmp_path: Path
) -> None:
    engine, processor, _ = apply_all(database_url)
    customer_id, keys, events = person(engine)
    assert len(keys) >= 3 and events
    salt = suppression_salt(processor.settings)

    erased = _erase(engine, customer_id, salt, suppress=True)
    assert erased is not None and erased.touchpoints == len(events) and erased.identifiers == len(keys)
    assert traces(engine, customer_id, keys, events) == NONE
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(t.suppressions)) == len(keys)
        audit = conn.execute(select(t.audit_log)).mappings().one()
    assert audit["action"] == "erasure" and audit["subject"] == "e-1" and audit["reason"] == "the person asked"
    assert audit["detail"]["touchpoints"] == len(events)
    assert not any(key in str(dict(audit)) for key in keys), "the audit row names no identifier"

    # Redelivered, then replayed from offset 0 by a worker that lost its offsets: dropped and counted.
    everything = list(redelivery(dict.fromkeys(LOGS, 0)))
    SqlSink(engine).reset_offsets(processor.group_id)
    replay = BatchProcessor(processor.settings, SqlSink(engine))
    totals = feed(replay, everything)
    assert totals["suppressed"] >= len(events)
    assert traces(engine, customer_id, keys, events) == NONE

    # A fresh database that learns the entries (as a worker does from the suppressions topic at start).
    with engine.connect() as conn:
        entries = [tuple(row) for row in conn.execute(select(t.suppressions))]
    fresh_url = f"sqlite:///{tmp_path / 'fresh.db'}"
    fresh = make_engine(fresh_url, writer=True)
    upgrade(fresh)
    assert add_suppressions(fresh, entries) == len(keys)  # type: ignore[arg-type]
    fresh_processor = BatchProcessor(load_settings(database_url=fresh_url), SqlSink(fresh))
    assert feed(fresh_processor, everything)["suppressed"] >= len(events)
    assert traces(fresh, customer_id, keys, events) == NONE
    with fresh.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(t.customers)) > 100, "everyone else is there"

    # A later event carrying one of the person's identifiers: suppressed and counted, not applied.
    later = next(record for record in everything if record.value and keys[0].split(":", 1)[1].encode() in record.value)
    tp = (later.topic, later.partition)
    moved = InRecord(
        later.topic, later.partition, len(LOGS[tp]), later.value.replace(b'"event_id":"', b'"event_id":"x')
    )
    report = replay.process([moved])
    assert report.suppressed == 1 and not report.events
    assert traces(engine, customer_id, keys, events) == NONE


def test_delete_only_removes_the_rows_and_a_replay_brings_the_person_back(database_url: str) -> None:
    engine, processor, _ = apply_all(database_url)
    customer_id, keys, events = person(engine)
    assert _erase(engine, customer_id, suppression_salt(processor.settings), suppress=False) is not None
    assert traces(engine, customer_id, keys, events) == NONE

    # A later event of the person reaches the worker that cached their state: it starts a new customer, and
    # nothing of what was erased comes back with it.
    everything = list(redelivery(dict.fromkeys(LOGS, 0)))
    later = next(record for record in everything if record.value and keys[0].split(":", 1)[1].encode() in record.value)
    tp = (later.topic, later.partition)
    moved = InRecord(
        later.topic, later.partition, len(LOGS[tp]), later.value.replace(b'"event_id":"', b'"event_id":"x')
    )
    assert len(processor.process([moved]).events) == 1
    with engine.connect() as conn:
        rows = conn.execute(select(t.customers.c.customer_id, t.customers.c.events)).all()
        again = [row for row in rows if row.customer_id == customer_id]
        assert not again or again[0].events == 1, "the erased state was written back from the worker's cache"
        assert conn.scalar(select(func.count()).where(t.touchpoints.c.event_id.in_(events))) == 0
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(t.suppressions)) == 0
    SqlSink(engine).reset_offsets(processor.group_id)
    feed(BatchProcessor(processor.settings, SqlSink(engine)), everything)
    back = traces(engine, customer_id, keys, events)
    assert back["touchpoints"] == len(events) and back["identities"] == len(keys)


@pytest.mark.parametrize("erased_first", [True, False])
def test_erasing_a_customer_that_is_gone_finds_nothing(sqlite_url: str, erased_first: bool) -> None:
    engine, _, _ = apply_all(sqlite_url)
    customer_id, _, _ = person(engine)
    if erased_first:
        _erase(engine, customer_id, "salt", suppress=True)
    assert (_erase(engine, customer_id if erased_first else "c-nobody", "salt", suppress=True)) is None
