"""The merge bound (``CXSTREAM_MERGE_MAX_TOUCHPOINTS``) on SQLite and PostgreSQL, in-process against the real
databases: a till's house loyalty card, scanned for every shopper without a card of their own, holds more
touchpoints than the bound. When Ann scans it too, the link is refused and counted, and the card's history is not
read back into memory; without the bound the same record merges the two and reads it back. ``cxstream merge``
refuses such a merge up front, naming the variable."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select

from schemas.touchpoint import Channel, EventType, IdentifierType, TouchpointEvent
from sinks import tables as t
from sinks.sql import SqlSink
from streams.apply_process import BatchSummary
from streams.cli import main
from streams.identity_rules import BadIdentifier, MergeTooLarge, merge_customers
from streams.pipeline import BatchProcessor, BatchReport
from tests.integration.test_never_link import customer_of, customers, event, feed, records, worker
from tests.support.processes import wait_until

ANN, HOUSE = "email:ann@example.org", "loyalty_id:HOUSE"
#: The bound of these tests: the house card holds 40 touchpoints, Ann 2.
BOUND = 20


def shoppers() -> list[TouchpointEvent]:
    """The house card at the till, once a day for 40 days, and Ann on the web in the first and second week."""
    house = {IdentifierType.LOYALTY_ID: "HOUSE"}
    ann = {IdentifierType.EMAIL: "ann@example.org"}
    till = [
        event(24 * day, Channel.STORE, EventType.PURCHASE, house, amount=Decimal(5), currency="GBP")
        for day in range(40)
    ]
    web = [
        event(24 * day + 1, Channel.WEB, EventType.PURCHASE, ann, amount=Decimal(30), currency="GBP") for day in (3, 10)
    ]
    return till + web


def ann_scans_the_house_card() -> TouchpointEvent:
    both = {IdentifierType.LOYALTY_ID: "HOUSE", IdentifierType.EMAIL: "ann@example.org"}
    return event(24 * 40 + 2, Channel.STORE, EventType.PURCHASE, both, amount=Decimal(12), currency="GBP")


def scanned(database_url: str, bound: int) -> tuple[BatchProcessor, list[str], BatchReport]:
    """Feed the shoppers in batches of 10, then Ann's scan of the house card in a batch of its own, under
    ``bound``; return the customers the batches said outgrew the bound, and the scan's report."""
    settings, engine, _ = worker(database_url)
    processor = BatchProcessor(settings.model_copy(update={"merge_max_touchpoints": bound}), SqlSink(engine))
    ends: dict[str, int] = {}
    items, outgrown = records(shoppers(), ends), []
    for start in range(0, len(items), 10):
        outgrown += BatchSummary.of(processor.process(items[start : start + 10]), {}).outgrown
    assert customers(engine) == 2
    return processor, outgrown, processor.process(records([ann_scans_the_house_card()], ends))


def test_a_link_to_a_customer_over_the_bound_is_refused_and_its_history_is_not_read_back(database_url: str) -> None:
    processor, outgrown, report = scanned(database_url, BOUND)
    scan = ann_scans_the_house_card()
    assert report.result is not None
    assert report.result.too_large == {scan.event_id: [ANN]} and not report.result.merges
    assert report.restored == 0, "the house card's touchpoints stay in the database"
    assert BatchSummary.of(report, {}).merge_too_large == 1  # cxstream_identifiers_rejected_total{reason=...}
    engine = processor.sink.engine
    house = customer_of(engine, HOUSE)
    assert outgrown == [house], "the batch that took it over the bound said so (the worker logs a warning)"
    assert customers(engine) == 2 and customer_of(engine, ANN) != house
    with engine.connect() as conn:
        owner = conn.execute(select(t.touchpoints.c.customer_id).where(t.touchpoints.c.event_id == scan.event_id))
        # Its strongest identifier's customer, as when a per-type limit refuses a link.
        assert owner.scalar_one() == house


def test_without_the_bound_the_same_record_merges_and_reads_the_history_back(database_url: str) -> None:
    processor, outgrown, report = scanned(database_url, 100_000)
    assert not outgrown
    assert report.result is not None and len(report.result.merges) == 1 and not report.result.too_large
    assert report.restored >= 1, "a merge reads back the older side's history from the younger's first event"
    assert customers(processor.sink.engine) == 1


def test_a_merge_by_hand_over_the_bound_is_refused_up_front(database_url: str) -> None:
    settings, engine, processor = worker(database_url)
    feed(processor, records(shoppers()), size=10)
    bounded = settings.model_copy(update={"merge_max_touchpoints": BOUND})
    with pytest.raises(
        MergeTooLarge, match=rf"more than {BOUND} touchpoints together \(CXSTREAM_MERGE_MAX_TOUCHPOINTS={BOUND}\)"
    ):
        merge_customers(bounded, ANN, HOUSE, actor="test", wait_s=0)
    with engine.connect() as conn:
        assert conn.execute(select(t.manual_merges)).all() == [], "nothing recorded"
    # Together they hold 42: at that bound the merge is recorded.
    assert merge_customers(
        settings.model_copy(update={"merge_max_touchpoints": 42}), ANN, HOUSE, actor="test", wait_s=0
    )


def test_a_merge_by_hand_that_a_worker_refuses_by_its_own_bound_is_not_reported_done(database_url: str) -> None:
    # The command's bound let it through (another process, another setting); the worker's does not.
    settings, engine, _ = worker(database_url)
    processor = BatchProcessor(settings.model_copy(update={"merge_max_touchpoints": BOUND}), SqlSink(engine))
    feed(processor, records(shoppers()), size=10)
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(merge_customers, settings, ANN, HOUSE, actor="test", wait_s=30)
        wait_until(lambda: bool(manual_merges(engine)), 20, "the merge to be recorded", 0.05)
        report = processor.tick()
        assert report.result is not None and report.result.over_bound == 1
        with pytest.raises(BadIdentifier, match=r"a worker refused merge .*: the customers stay apart"):
            answer.result()
    assert customers(engine) == 2 and all(applied_at is not None for _, applied_at in manual_merges(engine))


def manual_merges(engine: Engine) -> list[tuple[str, object]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(select(t.manual_merges.c.merge_id, t.manual_merges.c.applied_at))]


def test_the_merge_command_names_the_variable(sqlite_url: str) -> None:
    *_, processor = worker(sqlite_url)
    feed(processor, records(shoppers()), size=10)
    env = {"CXSTREAM_DATABASE_URL": sqlite_url, "CXSTREAM_MERGE_MAX_TOUCHPOINTS": str(BOUND)}
    refused = CliRunner().invoke(main, ["merge", ANN, HOUSE], env=env)
    assert refused.exit_code == 1 and f"(CXSTREAM_MERGE_MAX_TOUCHPOINTS={BOUND})" in refused.output
    assert len(refused.output.strip().splitlines()) == 1, refused.output
