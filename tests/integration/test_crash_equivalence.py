"""Crashes at any point of a batch, replayed in-process against a real database, and broken sinks it catches.

The Kafka-level fault tests (test_faults.py) kill a real worker a few times; this harness crashes the batch
processor many times, inside transactions and between them, and redelivers from an earlier offset each time,
as a consumer group does after a crash. The results must equal an uninterrupted run's (metric revision numbers
aside, see ``without_versions``). The same harness run on deliberately broken variants of the sink must fail:
that is what shows the comparison can catch a lost state write or a non-idempotent write.

On PostgreSQL it also runs two and three apply processes at once, each owning some of the partitions (as the
workers of a consumer group do), committing concurrently on customers they share (a person's channels are
different topics), crashing inside and between transactions, parking the events of customers another process's
batch holds; and with the customers' row locks, or the clock's lock, skipped, or parked events lost, which it
must catch. Without the customers' locks, two workers' transactions are made to overlap on a customer both write
(``Meeting``), rather than left to the scheduler to interleave so.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy import Engine, select

from config.settings import load_settings
from schemas.touchpoint import Channel
from sinks import tables as t
from sinks.contract import BatchWrite
from sinks.database import make_engine, upgrade
from sinks.sql import SqlSink
from streams.adapters import partition_key
from streams.adapters.reader import convert_one
from streams.kafka import partition_for
from streams.pipeline import BatchProcessor, InRecord
from streams.sandbox.journeys import simulate
from tests.support.results import final_survivors, snapshot, snapshot_diff, without_versions

PARTITIONS = 2
SPAWN = multiprocessing.get_context("spawn")


class Crash(Exception):
    """The worker died here."""


def simulated_partitions() -> dict[tuple[str, int], list[InRecord]]:
    """A simulated population's events, as the channel topics' partitions hold them."""
    logs: dict[tuple[str, int], list[InRecord]] = {}
    for n, rec in enumerate(simulate(customers=250, days=6, seed=5), 1):
        item = convert_one(Channel(rec.channel), rec.raw, source_file="simulate", line=n)
        event = getattr(item, "event", None)
        if event is None:
            continue
        topic = f"cx.touchpoints.{event.channel.value}"
        partition = partition_for(partition_key(event), PARTITIONS)
        log = logs.setdefault((topic, partition), [])
        log.append(InRecord(topic, partition, len(log), event.model_dump_json().encode()))
    return logs


LOGS = simulated_partitions()
ARRIVALS = [tp for tp, log in LOGS.items() for _ in log]
random.Random(3).shuffle(ARRIVALS)  # one fixed interleaving of the partitions, as a consumer reads them


class CrashingSink(SqlSink):
    """The SQL sink, dying inside the transaction of the n-th batch write (n in ``crash_after``), before it commits.

    ``writes`` counts the writes of every sink of a run (a new worker after each crash has a sink of its own).
    """

    def __init__(self, engine: Engine, crash_after: set[int], writes: Counter[str]) -> None:
        super().__init__(engine)
        self.crash_after, self.writes = crash_after, writes

    def write_shared(self, tx: Any, batch: BatchWrite) -> int | None:
        self.writes["write"] += 1
        self.writes["parked"] += len(batch.parked)
        result = super().write_shared(tx, batch)
        if self.writes["write"] in self.crash_after:
            raise Crash(f"killed in batch {self.writes['write']}")
        return result


def redelivery(position: dict[tuple[str, int], int]) -> Iterator[InRecord]:
    """Every partition's records from ``position`` on, in the fixed interleaving of the partitions."""
    start, seen = dict(position), Counter[tuple[str, int]]()
    for tp in ARRIVALS:
        seen[tp] += 1
        if seen[tp] > start[tp]:
            yield LOGS[tp][seen[tp] - 1]


def run(database_url: str, crash_after: set[int], seed: int, sink: type[CrashingSink] = CrashingSink) -> dict:
    """Feed every record in batches of random size; after each crash, start afresh and redeliver from earlier."""
    settings = load_settings(database_url=database_url)
    engine = make_engine(database_url, writer=True)
    upgrade(engine)
    rng = random.Random(seed)
    writes = Counter[str]()
    processor = BatchProcessor(settings, sink(engine, crash_after, writes))
    records = redelivery(dict.fromkeys(LOGS, 0))
    pending: list[InRecord] = []
    size = rng.randint(1, 120)
    while True:
        record = next(records, None)
        if record is not None:
            pending.append(record)
            if len(pending) < size:
                continue
        if not pending:
            break
        try:
            processor.process(pending)
        except Crash:
            # Like a consumer group after a crash: a new worker (empty cache), and every partition rewound to
            # some offset at or before the first unapplied one (Kafka's committed offsets lag the applied ones).
            processor = BatchProcessor(settings, sink(engine, crash_after, writes))
            processor.reload()
            position = {
                tp: rng.randint(max(0, processor.applied.get(tp, -1) - 30), processor.applied.get(tp, -1) + 1)
                for tp in LOGS
            }
            records = redelivery(position)
        pending, size = [], rng.randint(1, 120)
    # The input ends: once its partitions have been idle a while, the watermark reaches the latest event time.
    later = time.time() + settings.partition_idle_s + 1
    processor.clock = lambda: later
    processor.tick()
    return snapshot(engine)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return run(f"sqlite:///{tmp_path_factory.mktemp('clean') / 'clean.db'}", set(), seed=1)


def comparable(snap: dict) -> dict:
    """A snapshot as two runs of the same input must agree on it, whatever their batch cuts and crashes.

    Besides the revision numbers, the merge log is the path by which merged ids reached their survivor (a merge
    discovered within one batch or across two is recorded differently): runs must agree on where every merged
    id ended up.
    """
    out = without_versions(snap)
    out["identity_merges"] = [{"merged": m, "ends_in": s} for m, s in sorted(final_survivors(snap).items())]
    return out


def test_crashes_anywhere_leave_the_results_of_an_uninterrupted_run(uninterrupted: dict, database_url: str) -> None:
    crashed = run(database_url, crash_after={3, 4, 9, 17, 30, 31, 52}, seed=2)
    assert uninterrupted["touchpoints"] and uninterrupted["metric_cells"] and uninterrupted["identity_merges"]
    difference = snapshot_diff(comparable(uninterrupted), comparable(crashed))
    assert not difference, difference


class SkippingStateWrites(CrashingSink):
    """Broken: some batches lose their customer states; everything else commits."""

    def write_state(self, tx: Any, batch: BatchWrite) -> None:
        if batch.customers and len(batch.touchpoints) % 5 == 0:
            batch.customers = []
        super().write_state(tx, batch)


class WithoutUpsert(CrashingSink):
    """Broken: metric cells are inserted, never updated: the first counters stay forever."""

    def __init__(self, engine: Engine, crash_after: set[int], writes: Counter[str]) -> None:
        super().__init__(engine, crash_after, writes)
        self._statements["metric_cells"] = self._upsert[t.metric_cells].on_conflict_do_nothing()


@pytest.mark.parametrize("broken", [SkippingStateWrites, WithoutUpsert], ids=lambda sink: sink.__doc__.split(":")[1])
def test_the_harness_catches_a_broken_sink(uninterrupted: dict, tmp_path: Path, broken: type[CrashingSink]) -> None:
    try:
        result = run(f"sqlite:///{tmp_path / 'broken.db'}", crash_after={5, 12, 25}, seed=2, sink=broken)
    except Exception as exc:  # state broken badly enough to stop the worker: caught too
        caught = f"the run failed: {exc!r}"
    else:
        caught = snapshot_diff(comparable(uninterrupted), comparable(result))
    assert caught, f"{broken.__doc__} went unnoticed"


# --- concurrent apply processes (PostgreSQL) -------------------------------------------------------------------


class Meeting:
    """Brings two apply processes' transactions together on a customer both write back, for
    ``WithoutCustomerLocks``: left to the scheduler (a pause before every write), one run in fifteen had no two
    transactions of different workers between reading a shared customer and writing it.

    A transaction about to write customers it read (not new ones) arrives (``arrive``) and waits for a transaction
    of another process about to write one of them too, which it then meets: the first writes and commits while the
    second waits for it to end, and the second writes back what it read before: the first's changes to the customer
    are lost, which the run must show (with the locks, the second could not have read the customer before the first
    committed). Neither is killed before its commit (``CrashingSink``). When every running process waits, and the
    one arriving last meets none of them, nobody else can come: all go on, and their next transactions try again.
    Once a pair both committed, nobody waits any more. Shared by the spawned processes through a manager.
    """

    def __init__(self, manager: Any, processes: int) -> None:
        self.lock = manager.Lock()
        #: The transactions waiting, by process: the customers each writes.
        self.waiting = manager.dict()
        #: ``pair``: the processes of the pair met, first and second; ``round``: how many times all went on.
        self.state = manager.dict(running=processes, round=0, pair=None, first_committed=None, met=False)

    def arrive(self, customers: set[str]) -> str | None:
        """Where a transaction about to write ``customers`` stands: "first" once a second came, "second" once the
        first ended; None if it met no other."""
        me, state = os.getpid(), self.state
        with self.lock:
            if state["met"] or state["pair"] is not None or not customers:
                return None
            first = next((pid for pid, theirs in self.waiting.items() if not customers.isdisjoint(theirs)), None)
            if first is not None:
                del self.waiting[first]
                state.update(pair=(first, me), first_committed=None)
            elif len(self.waiting) + 1 >= state["running"]:
                self._go_on()
                return None
            else:
                self.waiting[me] = sorted(customers)
                turn = state["round"]
        if first is not None:
            _until(lambda: state["first_committed"] is not None)
            return "second"
        _until(lambda: me not in self.waiting or state["round"] != turn or state["met"])
        with self.lock:
            self.waiting.pop(me, None)
            pair = state["pair"]
        return "first" if pair is not None and pair[0] == me else None

    def ended(self, role: str, committed: bool) -> None:
        """The transaction that arrived as ``role`` ended; once both committed, the meeting is over."""
        with self.lock:
            if role == "first":
                self.state["first_committed"] = committed
            else:
                self.state.update(pair=None, met=committed and bool(self.state["first_committed"]))

    def leave(self) -> None:
        """A process is done: the others stop waiting for it."""
        with self.lock:
            self.state["running"] -= 1
            if self.waiting and len(self.waiting) >= self.state["running"]:
                self._go_on()

    def met(self) -> bool:
        return bool(self.state["met"])

    def _go_on(self) -> None:
        self.waiting.clear()
        self.state["round"] += 1


def _until(done: Any, timeout: float = 10) -> None:
    """Wait until ``done()``, up to ``timeout``: a bound for what should not happen (a process that cannot come
    because it waits for a lock a waiter holds, as a correct sink's waiter would)."""
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.002)


class WithoutCustomerLocks(CrashingSink):
    """Broken: batches of different workers do not wait for each other on the customers they share (the rows are
    read, not locked).

    Two workers' transactions that read a customer both write back are brought together before either writes
    (``Meeting``), so that one's changes to it are lost every run.
    """

    #: Set in each apply process (``apply_partitions``).
    meeting: ClassVar[Meeting | None] = None

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        self.read: set[str] = set()  # the customers the transaction read, as they were before it
        self.role: str | None = None  # where it stands in the meeting
        committed = False
        try:
            with super().transaction() as tx:
                yield tx
            committed = True
        finally:
            if self.role is not None and self.meeting is not None:
                self.meeting.ended(self.role, committed)

    def lock_customers(self, conn: Any, ids: Any) -> dict[str, int]:
        c = t.customers.c
        found = dict(conn.execute(select(c.customer_id, c.version).where(c.customer_id.in_(sorted(ids)))).all())
        self.read.update(found)
        return found

    def try_lock_customers(self, conn: Any, ids: Any) -> tuple[dict[str, int], set[str]]:
        return self.lock_customers(conn, ids), set()  # none held: none parked

    def write_state(self, tx: Any, batch: BatchWrite) -> None:
        if self.meeting is not None:
            self.role = self.meeting.arrive({row.customer_id for row in batch.customers} & self.read)
            if self.role is not None:
                self.crash_after.discard(self.writes["write"] + 1)  # this transaction's: it commits
        super().write_state(tx, batch)


class WithoutClockLock(CrashingSink):
    """Broken: batches of different workers change what they share (the channel and overall metric cells, the
    clock) at the same time (the clock is read, not locked)."""

    def lock_clock(self, conn: Any, group_id: str) -> Any:
        return self.clock_in(conn, group_id)

    def write_shared(self, tx: Any, batch: BatchWrite) -> int | None:
        time.sleep(0.05)
        return super().write_shared(tx, batch)


class LosingParkedEvents(CrashingSink):
    """Broken: the events a batch parks (their customer held by another worker's batch) are not stored."""

    def _write_parked(self, conn: Any, batch: BatchWrite) -> None:
        batch.parked.clear()
        super()._write_parked(conn, batch)


def apply_partitions(
    database_url: str,
    arrivals: list[InRecord],
    seed: int,
    crash_every: int,
    sink: type[CrashingSink],
    start: Any = None,
    parked: Any = None,
    meeting: Meeting | None = None,
) -> None:
    """One worker of a group: the records of its partitions (``arrivals``, in the order it reads them) in random
    batches, crashing inside or between transactions now and then and redelivered from earlier each time (run in
    a process of its own; the records are passed, not simulated again, which would stamp other arrival times).
    ``start``: a barrier the group's processes pass together once started, so that their batches overlap;
    ``parked``: a shared counter of the events its batches parked (committed or not); ``meeting``: for
    ``WithoutCustomerLocks``."""
    WithoutCustomerLocks.meeting = meeting  # this process's class (spawned: nothing else shares it)
    settings = load_settings(database_url=database_url)
    engine = make_engine(database_url, writer=True)
    if start is not None:
        start.wait(120)
    rng = random.Random(seed)
    writes = Counter[str]()
    crash_after = {n for n in range(1, 10_000) if rng.random() < 1 / crash_every}
    try:
        processor = BatchProcessor(settings, sink(engine, crash_after, writes))
        mine = {(record.topic, record.partition) for record in arrivals}
        position = dict.fromkeys(mine, 0)
        while True:
            records = [record for record in arrivals if record.offset >= position[(record.topic, record.partition)]]
            restart, start = False, 0
            while start < len(records) and not restart:
                size = rng.randint(1, 60)
                batch, start = records[start : start + size], start + size
                try:
                    processor.process(batch)
                except Crash:
                    restart = True  # killed inside the transaction
                else:
                    restart = rng.random() < 1 / crash_every  # killed between transactions
            if not restart:
                break
            processor = BatchProcessor(settings, sink(engine, crash_after, writes))
            processor.reload()
            position = {
                tp: rng.randint(max(0, processor.applied.get(tp, -1) - 30), processor.applied.get(tp, -1) + 1)
                for tp in mine
            }
    finally:
        if meeting is not None:
            meeting.leave()
    engine.dispose()
    if parked is not None:
        with parked.get_lock():
            parked.value += writes["parked"]


def run_concurrently(
    database_url: str, workers: int, seed: int, sink: type[CrashingSink] = CrashingSink, meeting: Meeting | None = None
) -> tuple[dict, int]:
    """``workers`` apply processes sharing the partitions, at once; then the clock is followed to the end (the
    events parked last applied). Returns the results and how many events the processes' batches parked."""
    settings = load_settings(database_url=database_url)
    engine = make_engine(database_url, writer=True)
    upgrade(engine)
    owned = sorted(LOGS)
    random.Random(seed).shuffle(owned)
    arrivals = list(redelivery(dict.fromkeys(LOGS, 0)))
    # Spawned processes start one by one (each imports the project first): without a common start, one could be
    # done before the next began, and nothing they share would be written concurrently.
    start = SPAWN.Barrier(workers)
    parked = SPAWN.Value("i", 0)
    processes = [
        SPAWN.Process(
            target=apply_partitions,
            args=(
                database_url,
                [record for record in arrivals if (record.topic, record.partition) in owned[n::workers]],
                seed * 10 + n,
                6,
                sink,
                start,
                parked,
                meeting,
            ),
        )
        for n in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(240)
        assert process.exitcode == 0, f"an apply process failed (exit {process.exitcode})"
    processor = BatchProcessor(settings, SqlSink(engine))
    later = time.time() + settings.partition_idle_s + 1
    processor.clock = lambda: later
    processor.tick()
    return snapshot(engine), parked.value


def order_free(snap: dict, other: dict) -> dict:
    """``comparable`` for runs whose arrival order differs (workers interleave): without alerts, and with the merges
    of the customer ids that exist in both runs only (whether a person's keys met as one customer, or as two then
    merged, depends on which arrived first; where a merged id ends up does not). See the README's guarantees."""
    out = comparable(snap)
    out.pop("alerts")
    both = {row["merged"] for row in comparable(other)["identity_merges"]}
    out["identity_merges"] = [row for row in out["identity_merges"] if row["merged"] in both]
    return out


def differences(expected: dict, got: dict) -> str:
    """What differs between two runs of the same input in different arrival orders."""
    return snapshot_diff(order_free(expected, got), order_free(got, expected))


@pytest.mark.postgres
@pytest.mark.parametrize("workers", [2, 3])
def test_apply_processes_committing_concurrently_leave_the_results_of_one(
    uninterrupted: dict, postgres_url: str, workers: int
) -> None:
    result, parked = run_concurrently(postgres_url, workers, seed=workers)
    assert result["identity_merges"], "workers merged customers"
    assert parked, "no batch found a customer held by another worker's: nothing was parked"
    difference = differences(uninterrupted, result)
    assert not difference, difference


@pytest.mark.postgres
@pytest.mark.parametrize(
    "broken",
    [WithoutCustomerLocks, WithoutClockLock, LosingParkedEvents],
    ids=["customer-locks", "clock-lock", "parked-events"],
)
def test_the_harness_catches_workers_that_skip_a_lock_or_lose_parked_events(
    uninterrupted: dict, postgres_url: str, broken: type[CrashingSink]
) -> None:
    with SPAWN.Manager() as manager:
        meeting = Meeting(manager, processes=3)
        try:
            result, _ = run_concurrently(postgres_url, 3, seed=7, sink=broken, meeting=meeting)
        except AssertionError as exc:  # a process failed on what it read: caught too
            caught = str(exc)
        else:
            caught = differences(uninterrupted, result)
        met = meeting.met()  # only WithoutCustomerLocks's transactions meet
    assert caught, f"{broken.__doc__} went unnoticed (two transactions met on a customer: {met})"
