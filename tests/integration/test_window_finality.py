"""When metric windows turn final, through the worker's batches on SQL: a cell's last record on ``cx.metrics`` is
the same however the batches were cut, and a merge in the batch that closes the merged customer's cells moves
them into the survivor's instead of finalising them under the merged id."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from config.settings import Settings, load_settings
from schemas.touchpoint import Channel, EventType, IdentifierType, SourceRef, TouchpointEvent
from sinks import tables as t
from streams.pipeline import BatchReport, InRecord
from tests.support.population import worker_processor

D = datetime(2026, 10, 1, 9, tzinfo=UTC)
ANN = {IdentifierType.EMAIL: "ann@example.org"}
BOB = {IdentifierType.PHONE: "+447700900123"}


def page_views(*views: tuple[datetime, dict[IdentifierType, str]], partition: int = 0) -> list[InRecord]:
    """Web page views at the given times, by the given identifiers, as records of one partition."""
    out = []
    for n, (at, ids) in enumerate(views):
        event = TouchpointEvent(
            event_id=f"web-{partition}-{n}",
            channel=Channel.WEB,
            type=EventType.PAGE_VIEW,
            occurred_at=at,
            received_at=at,
            identifiers=ids,
            source=SourceRef(system="test", id=f"{partition}-{n}"),
        )
        out.append(InRecord("cx.touchpoints.web", partition, n, event.model_dump_json().encode()))
    return out


def apply(settings: Settings, batches: Sequence[Sequence[InRecord]]) -> tuple[Any, list[BatchReport]]:
    """Apply the batches as a worker does, on a fresh schema; return the engine and the batches' reports."""
    engine, processor = worker_processor(settings)
    return engine, [processor.process(list(batch)) for batch in batches]


def last_records(reports: Sequence[BatchReport], prefix: str = "") -> dict[bytes, dict[str, Any] | None]:
    """The last ``cx.metrics`` record of every key starting with ``prefix`` (None: a tombstone)."""
    return {
        key: None if value is None else orjson.loads(value)
        for report in reports
        for topic, key, value, _ in report.outputs.records
        if topic == "cx.metrics" and key.startswith(prefix.encode())
    }


def test_a_cell_created_by_the_batch_that_closes_it_ends_final_as_with_any_other_cut(
    database_url: str, second_database_url: str
) -> None:
    # Two page views ten days apart on one partition: the second moves the watermark past day D's windows.
    records = page_views((D, ANN), (D + timedelta(days=10), BOB))
    day = f"channel|web|1d|{D.date().isoformat()}T00:00:00+00:00".encode()
    lasts = []
    for url, batches in ((database_url, [records]), (second_database_url, [records[:1], records[1:]])):
        engine, reports = apply(load_settings(database_url=url), batches)
        lasts.append(last_records(reports)[day])
        c = t.metric_cells.c
        with engine.connect() as conn:
            assert conn.scalar(select(c.final).where((c.scope == "channel") & (c.key == "web") & (c.window == "1d")))
        engine.dispose()
    one_batch, two_batches = lasts
    assert one_batch["status"] == "final"
    assert one_batch == two_batches


def test_a_merge_in_the_batch_that_closes_the_merged_customers_cells_moves_them_once(database_url: str) -> None:
    # Ann and Bob, two customers on day D, each with a daily cell; five days later one event carries both: one
    # merges into the other in the batch whose watermark closes their day-D cells.
    settings = load_settings(database_url=database_url, customer_metric_windows=["1d", "all"])
    records = page_views((D, ANN), (D + timedelta(hours=1), BOB), (D + timedelta(days=5), ANN | BOB))
    first, second = records[:2], records[2:]
    engine, reports = apply(settings, [first, second])
    ((merged, survivor),) = [(m.merged_id, m.survivor_id) for m in reports[1].result.merges]
    c = t.metric_cells.c
    with engine.connect() as conn:
        cells = conn.execute(select(c.key, c.window, c.counters, c.final).where(c.scope == "customer")).all()
    engine.dispose()
    assert {row.key for row in cells} == {survivor}, "the merged customer's cells are not written back"
    day = [row for row in cells if row.window == "1d" and row.counters.get("touchpoints") != 1]
    assert [(row.counters["touchpoints"], row.final) for row in day] == [(2, True)], "counted once, then final"
    gone = last_records(reports[1:], f"customer|{merged}|")
    assert gone and all(record is None for record in gone.values()), "the merged id's cells tombstoned, no figures"
    assert last_records(reports[1:], f"customer|{survivor}|1d|{D.date().isoformat()}")


@pytest.mark.postgres
def test_a_customer_cell_another_workers_batch_closed_meanwhile_is_written_and_published_final(
    postgres_url: str,
) -> None:
    # Worker A merges its customers' cells before it takes the clock's lock. Worker B's batch commits in between,
    # moving the watermark past Ann's day-D cell and finalising it: A must write it back final and publish it
    # final, not provisional after B's final record.
    settings = load_settings(database_url=postgres_url, customer_metric_windows=["1d", "all"])
    engine, a = worker_processor(settings)
    _, b = worker_processor(settings.model_copy(update={"worker_id": "worker-b"}))
    first, second = page_views((D, ANN), (D + timedelta(hours=2), ANN))
    a.process([first])
    bob = page_views((D + timedelta(days=10), BOB), partition=1)
    later = time.time() + settings.partition_idle_s + 1
    b.clock = lambda: later  # A's partition idle: B's event time alone moves the watermark

    metrics_done, b_done = threading.Event(), threading.Event()
    lock_clock = a._lock_clock

    def paused(*args: Any) -> Any:
        metrics_done.set()
        assert b_done.wait(60)
        return lock_clock(*args)

    a._lock_clock = paused  # type: ignore[method-assign]
    with ThreadPoolExecutor(1) as pool:
        report_a = pool.submit(a.process, [second])
        assert metrics_done.wait(60)
        b.process(bob)
        b_done.set()
        reports = [report_a.result(60)]
    (customer,) = {e.customer_id for e in reports[0].result.entries}
    key = f"customer|{customer}|1d|{D.date().isoformat()}T00:00:00+00:00"
    c = t.metric_cells.c
    with engine.connect() as conn:
        stored = conn.execute(
            select(c.counters, c.final).where((c.scope == "customer") & (c.key == customer) & (c.window == "1d"))
        ).one()
    engine.dispose()
    assert (stored.counters["touchpoints"], stored.final) == (2, True)
    assert last_records(reports, key)[key.encode()]["status"] == "final"
