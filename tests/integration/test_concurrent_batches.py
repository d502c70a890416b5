"""Batches of two workers on PostgreSQL, statement by statement: what they wait for, and what makes one of them
apply again (``sinks.contract.Contended``). The whole-run proof is the concurrent crash-equivalence harness
(test_crash_equivalence.py); these pin down the sink's part of the protocol on two open transactions."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest

from sinks.contract import BatchWrite, Contended, IdentityRow
from sinks.database import make_engine, upgrade
from sinks.sql import SqlSink
from tests.integration.test_bulk_writes import _customer, _touchpoint

pytestmark = pytest.mark.postgres

DAY = datetime(2026, 5, 1, tzinfo=UTC)


@pytest.fixture
def sink(postgres_url: str) -> SqlSink:
    engine = make_engine(postgres_url, writer=True)
    upgrade(engine)
    return SqlSink(engine)


def _claiming(key: str, customer_id: str) -> BatchWrite:
    row = IdentityRow(key, *key.split(":"), customer_id, DAY, DAY)
    return BatchWrite("g", {}, identities=[row], claimed_identities={key})


def _in_thread(work: object) -> tuple[threading.Thread, dict[str, object]]:
    out: dict[str, object] = {}

    def run() -> None:
        started = time.monotonic()
        try:
            out["result"] = work()  # type: ignore[operator]
        except Exception as exc:  # what the other transaction ran into is the assertion
            out["error"] = exc
        out["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_a_key_claimed_by_another_batch_meanwhile_makes_the_batch_contended(sink: SqlSink) -> None:
    with sink.transaction() as first:
        sink.write_state(first, _claiming("email:ann@example.com", "c-1"))

        def second() -> None:
            with sink.transaction() as tx:
                sink.write_state(tx, _claiming("email:ann@example.com", "c-2"))

        thread, out = _in_thread(second)
        time.sleep(0.5)
        assert thread.is_alive(), "the second insert of the key waits for the first transaction"
    thread.join(10)
    assert isinstance(out.get("error"), Contended), out


def test_a_customer_locked_by_one_batch_waits_the_other_and_the_version_counts_writes(sink: SqlSink) -> None:
    with sink.transaction() as tx:
        sink.write_state(tx, BatchWrite("g", {}, customers=[_customer(1), _customer(2)]))
    with sink.transaction() as first:
        assert sink.lock_customers(first, ["c-9", "c-1"]) == {"c-1": 1}, "the versions of those that exist"
        sink.write_state(first, BatchWrite("g", {}, customers=[_customer(1)]))

        def second() -> dict[str, int]:
            with sink.transaction() as tx:
                return sink.lock_customers(tx, ["c-1"])

        thread, out = _in_thread(second)
        other, other_out = _in_thread(lambda: _lock_and_return(sink, ["c-2"]))
        other.join(10)
        assert other_out.get("result") == {"c-2": 1}, "a batch not sharing the customer does not wait"
        time.sleep(0.5)
        assert thread.is_alive(), "a batch sharing the customer waits for the first to end"
    thread.join(10)
    assert out.get("result") == {"c-1": 2}, "and then reads the version the first one wrote"


def _lock_and_return(sink: SqlSink, ids: list[str]) -> dict[str, int]:
    with sink.transaction() as tx:
        return sink.lock_customers(tx, ids)


def test_a_deadlock_between_two_batches_fails_one_as_contended(sink: SqlSink) -> None:
    with sink.transaction() as tx:
        sink.write_state(tx, BatchWrite("g", {}, customers=[_customer(1), _customer(2)]))
    barrier = threading.Barrier(2)

    def lock(first: str, then: str) -> None:
        with sink.transaction() as tx:
            sink.lock_customers(tx, [first])
            barrier.wait(10)
            sink.lock_customers(tx, [then])  # out of order: only after a customer's keys moved (a merge)

    one, out_one = _in_thread(lambda: lock("c-1", "c-2"))
    two, out_two = _in_thread(lambda: lock("c-2", "c-1"))
    one.join(30)
    two.join(30)
    errors = [out.get("error") for out in (out_one, out_two) if "error" in out]
    assert len(errors) == 1 and isinstance(errors[0], Contended), errors


def test_touchpoints_of_event_ids_claimed_meanwhile_make_the_batch_contended(sink: SqlSink) -> None:
    row = _touchpoint(1)
    with sink.transaction() as tx:
        sink.write_state(tx, BatchWrite("g", {}, touchpoints=[row]))
    with pytest.raises(Contended), sink.transaction() as tx:
        sink.write_state(tx, BatchWrite("g", {}, touchpoints=[row, _touchpoint(2)], claimed_events={"e-1", "e-2"}))
