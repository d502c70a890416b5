"""Two workers' batches adding the same new identifier key at once (PostgreSQL): the second parks the events
carrying it, and a later batch applies them on what the first committed, rather than finding the key taken at its
insert and applying the whole batch again; and the claims of new keys that make it so."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, select

from config.settings import load_settings
from schemas.touchpoint import Channel, EventType, IdentifierType
from sinks import tables as t
from sinks.contract import BatchWrite
from sinks.database import make_engine, upgrade
from sinks.sql import SqlSink
from streams.pipeline import BatchProcessor, BatchReport, InRecord
from tests.integration.test_never_link import event

pytestmark = pytest.mark.postgres

ANN = {IdentifierType.EMAIL: "ann@example.org"}


class HeldSink(SqlSink):
    """A sink whose first batch stops before writing, until ``go`` is set (as a batch on a loaded database)."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.holding, self.go = threading.Event(), threading.Event()

    def write_state(self, tx: Any, batch: BatchWrite) -> None:
        if not self.go.is_set():
            self.holding.set()
            assert self.go.wait(30), "never let go"
        super().write_state(tx, batch)


def test_a_batch_parks_the_events_of_a_new_key_another_batch_is_adding_and_applies_them_once_it_committed(
    postgres_url: str,
) -> None:
    engine = make_engine(postgres_url, writer=True)
    upgrade(engine)
    settings = load_settings(database_url=postgres_url)
    # Ann's first contact on the phone and first web visit, on two workers' partitions at the same moment.
    phone = event(1, Channel.PHONE, EventType.SUPPORT_CONTACT, ANN, issue_id="CASE-1")
    web = event(2, Channel.WEB, EventType.PAGE_VIEW, ANN)
    first_sink = HeldSink(engine)
    first, second = BatchProcessor(settings, first_sink), BatchProcessor(settings, SqlSink(engine))
    with ThreadPoolExecutor(2) as pool:
        held = pool.submit(first.process, [InRecord("cx.touchpoints.phone", 0, 0, phone.model_dump_json().encode())])
        assert first_sink.holding.wait(30), "the first batch never reached its write"
        # The second batch holds different partitions, but Ann's e-mail is new to both: rather than wait for the
        # first batch's commit, or insert the key too and find it taken (the whole batch applied again), it parks
        # the event.
        parking = pool.submit(second.process, [InRecord("cx.touchpoints.web", 0, 0, web.model_dump_json().encode())])
        try:
            parked = parking.result(timeout=20)
        finally:
            first_sink.go.set()
        reports: list[BatchReport] = [held.result(30), parked, second.tick()]
    assert [report.retries for report in reports] == [0, 0, 0], "a batch was applied again"
    assert len(parked.parked) == 1 and not parked.events
    assert reports[2].unparked == 1 and [e.event_id for e in reports[2].events] == ["web-2"]
    with engine.connect() as conn:
        owners = conn.execute(select(t.touchpoints.c.customer_id).order_by(t.touchpoints.c.event_id)).scalars().all()
        identities = conn.execute(select(t.identities.c.customer_id)).scalars().all()
    engine.dispose()
    assert len(owners) == 2 and len(set(owners)) == 1 and identities == [owners[0]], "Ann is one customer"


def test_claims_of_new_keys_last_while_their_transaction_runs_and_have_no_bound(postgres_url: str) -> None:
    # A batch of a history load adds thousands of new keys: claims are rows, not advisory locks, each of which
    # would hold an entry of the server's shared lock table (6,400 by default) until the commit.
    engine = make_engine(postgres_url, writer=True)
    upgrade(engine)
    sink = SqlSink(engine)
    first_keys = [f"email:{n}@example.org" for n in range(5_000)]
    more = [f"email:{n}@example.net" for n in range(10)]
    advisory = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    with pytest.raises(RuntimeError), sink.transaction() as first:
        assert sink.claim_keys(first, first_keys) == set(), "nothing claimed them before"
        assert first.exec_driver_sql(advisory).scalar_one() == 0
        with sink.transaction() as second:
            assert sink.claim_keys(second, [first_keys[0], *more]) == {first_keys[0]}, "held while the first runs"
        raise RuntimeError("the first batch rolls back")
    with sink.transaction() as third:
        assert sink.claim_keys(third, first_keys[:3]) == set(), "a rolled-back batch's claims are not in force"
        write = BatchWrite("g", {}, claims=set(first_keys[:3]))
        sink.write_shared(third, write)
    with engine.connect() as conn:
        left = set(conn.execute(select(t.identity_claims.c.identifier)).scalars())
    assert not left & set(first_keys[:3]), "a batch deletes its claims with its commit"
    # A claim restored from another server's backup: its xid may be "in the future" here (txid_status fails on
    # it); a claim from another run of the server is void.
    with engine.begin() as conn:
        conn.execute(
            t.identity_claims.insert().values(
                identifier="email:restored@example.org", xid=10**9, server_started=datetime(2020, 1, 1, tzinfo=UTC)
            )
        )
    with sink.transaction() as fourth:
        assert sink.claim_keys(fourth, ["email:restored@example.org"]) == set()
    engine.dispose()
