"""Two workers' batches sharing a customer on PostgreSQL: the batch that finds the customer held by the other's
parks that customer's events rather than wait for the other's commit, in its own transaction, and a later batch
applies them: nothing lost, nothing counted twice, the watermark held back meanwhile. An event parked
``PATIENT_AFTER`` times waits for its lock. A customer another worker's batch changed is counted from what it
stored, not from this worker's cache. (New keys another batch is adding: test_key_locks.py. The whole-run
proof with crashes: the concurrent crash-equivalence harness.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, timedelta

import pytest
from sqlalchemy import Engine, select

from config.settings import load_settings
from schemas.touchpoint import Channel, EventType, IdentifierType, TouchpointEvent
from sinks import tables as t
from sinks.sql import SqlSink
from streams.pipeline import PATIENT_AFTER, BatchProcessor, InRecord
from tests.integration.test_crash_equivalence import differences
from tests.integration.test_never_link import event
from tests.support.population import worker_processor
from tests.support.results import snapshot

pytestmark = pytest.mark.postgres

ANN = {IdentifierType.EMAIL: "ann@example.org"}
BOB = {IdentifierType.EMAIL: "bob@example.org"}
TOPIC = "cx.touchpoints.web"


def records(events: list[TouchpointEvent], first_offset: int) -> list[InRecord]:
    return [InRecord(TOPIC, 0, first_offset + n, e.model_dump_json().encode()) for n, e in enumerate(events)]


def customer_of(engine: Engine, key: str) -> str:
    with engine.connect() as conn:
        return conn.execute(select(t.identities.c.customer_id).where(t.identities.c.identifier == key)).scalar_one()


def parked_rows(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(select(t.parked_events.c.attempts)).scalars())


@contextmanager
def held(engine: Engine, customer_id: str) -> Iterator[None]:
    """Another worker's batch holding a customer's row until the block ends."""
    sink = SqlSink(engine)
    with sink.transaction() as tx:
        assert sink.lock_customers(tx, [customer_id])
        yield


def finish(processor: BatchProcessor) -> None:
    """The input ends: its partition idle, the watermark reaches the latest event time (parked events applied)."""
    later = time.time() + processor.settings.partition_idle_s + 1
    processor.clock = lambda: later
    processor.tick()


FIRST = [event(1, Channel.WEB, EventType.PAGE_VIEW, ANN), event(2, Channel.WEB, EventType.PAGE_VIEW, BOB)]
LATER = [
    event(3, Channel.WEB, EventType.PURCHASE, ANN, amount=40, currency="GBP"),
    event(10, Channel.WEB, EventType.PAGE_VIEW, BOB),
]


def test_a_batch_parks_the_events_of_a_customer_another_batch_holds_and_a_later_one_applies_them(
    postgres_url: str, tmp_path
) -> None:
    settings = load_settings(database_url=postgres_url)
    engine, processor = worker_processor(settings)
    processor.process(records(FIRST, 0))
    ann = customer_of(engine, "email:ann@example.org")
    with held(engine, ann), ThreadPoolExecutor(1) as pool:
        # Finishes while Ann is held (a batch that waited for her would time out here).
        report = pool.submit(processor.process, records(LATER, 2)).result(timeout=30)
        assert [e.attempts for e in report.parked] == [1] and [e.event_id for e in report.events] == ["web-10"]
        assert parked_rows(engine) == [1], "parked with the batch's offsets, in its transaction"
        assert processor.sink.applied_offsets(processor.group_id) == {(TOPIC, 0): 3}
        # The partition read up to Bob's event at hour 10; the watermark waits for Ann's parked one (hour 3).
        watermark = processor.sink.clock(processor.group_id).watermark
        assert watermark is not None and watermark <= LATER[0].occurred_at
    finish(processor)
    assert parked_rows(engine) == []
    with engine.connect() as conn:
        owners = dict(conn.execute(select(t.touchpoints.c.event_id, t.touchpoints.c.customer_id)).all())
    assert owners["web-3"] == ann
    # The same results as one worker applying the same records alone.
    alone_settings = load_settings(database_url=f"sqlite:///{tmp_path / 'alone.db'}")
    alone_engine, alone = worker_processor(alone_settings)
    alone.process(records(FIRST, 0))
    alone.process(records(LATER, 2))
    finish(alone)
    difference = differences(snapshot(alone_engine), snapshot(engine))
    engine.dispose()
    alone_engine.dispose()
    assert not difference, difference


def test_an_event_parked_patient_after_times_waits_for_its_customer(postgres_url: str) -> None:
    settings = load_settings(database_url=postgres_url)
    engine, processor = worker_processor(settings)
    processor.process(records(FIRST, 0))
    ann = customer_of(engine, "email:ann@example.org")
    with ThreadPoolExecutor(1) as pool:
        with held(engine, ann):
            processor.process(records(LATER[:1], 2))
            for _ in range(PATIENT_AFTER - 1):  # the next batches (here: ticks') take it and park it again
                processor.tick()
            assert parked_rows(engine) == [PATIENT_AFTER]
            waiting = pool.submit(processor.tick)
            with pytest.raises(TimeoutError):
                waiting.result(timeout=1.0)
        report = waiting.result(timeout=30)
    assert report.unparked == 1 and not report.parked and [e.event_id for e in report.events] == ["web-3"]
    assert report.lock_wait_s["customers"] > 0.5
    assert parked_rows(engine) == []
    with engine.connect() as conn:
        owner = conn.execute(select(t.touchpoints.c.customer_id).where(t.touchpoints.c.event_id == "web-3")).scalar()
    engine.dispose()
    assert owner == ann


def test_a_resent_event_waits_for_its_parked_first_copy(postgres_url: str, tmp_path) -> None:
    """Of two copies of one event, the first applied is kept (the second is a duplicate): a copy read after one
    that was parked waits for it, even when its customer is free, or the touchpoint would keep the resend's
    ``received_at``, unlike a worker applying the records alone."""
    settings = load_settings(database_url=postgres_url)
    engine, processor = worker_processor(settings)
    processor.process(records(FIRST, 0))
    ann = customer_of(engine, "email:ann@example.org")
    first_copy = LATER[0]
    resend = first_copy.model_copy(update={"received_at": first_copy.received_at + timedelta(minutes=5)})
    with held(engine, ann):
        report = processor.process(records([first_copy], 2))
    assert [e.event_id for e in report.events] == [] and len(report.parked) == 1
    # The resend's batch takes the parked copy first: both are applied, in the order they were read.
    # Taken elsewhere (another worker's batch holding its row), the resend would be parked behind it.
    with processor.sink.transaction() as other:
        assert processor.sink.take_parked(other, processor.group_id, 10), "another batch takes the first copy"
        report = processor.process(records([resend], 3))
    assert [e.event_id for e in report.events] == [] and [e.event_id for e in report.parked] == ["web-3"]
    finish(processor)
    with engine.connect() as conn:
        received = conn.execute(
            select(t.touchpoints.c.received_at).where(t.touchpoints.c.event_id == "web-3")
        ).scalar_one()
    alone_engine, alone = worker_processor(load_settings(database_url=f"sqlite:///{tmp_path / 'alone.db'}"))
    alone.process(records(FIRST, 0))
    alone.process(records([first_copy, resend], 2))
    finish(alone)
    difference = differences(snapshot(alone_engine), snapshot(engine))
    engine.dispose()
    alone_engine.dispose()
    assert received.astimezone(UTC) == first_copy.received_at
    assert not difference, difference


def test_a_worker_counts_a_customer_another_worker_changed_since_from_its_stored_cells(postgres_url: str) -> None:
    """A worker keeps the metric cells it wrote, and merges a batch's customers' cells before it takes the clock's
    lock: those of a customer another worker's batch changed since must be read again, or Ann's cell would count
    her events as if the other worker's were not there."""
    settings = load_settings(database_url=postgres_url)
    engine, a = worker_processor(settings)
    _, b = worker_processor(settings.model_copy(update={"worker_id": "worker-b"}))
    views = [event(n, Channel.WEB, EventType.PAGE_VIEW, ANN) for n in (1, 2, 3)]
    a.process(records(views[:1], 0))
    b.process([InRecord(TOPIC, 1, 0, views[1].model_dump_json().encode())])
    a.process(records(views[2:], 1))
    ann = customer_of(engine, "email:ann@example.org")
    c = t.metric_cells.c
    with engine.connect() as conn:
        counters = conn.execute(
            select(c.counters).where(c.scope == "customer", c.key == ann, c.window == "all")
        ).scalar_one()
    engine.dispose()
    assert counters["touchpoints"] == 3
