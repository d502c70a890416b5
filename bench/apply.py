"""``python -m bench.apply``: the apply path alone, in this process: CPU per event without Kafka or Faust.

The benchmark's workload (``bench.workload``) is cut into the batches a worker would hand its apply process
(records of four partitions per channel topic, in arrival order, ``--batch`` events each) and applied with
``streams.apply_process.process`` (the same cycle-collector handling) to a fresh database. Printed: CPU
per event of this process (all threads: SQLite's checkpoint thread included), of its main thread, and, with
``--postgres-url`` and a server on this machine, of the server's processes. ``--profile FILE`` writes a
cProfile of the batches (``python -m pstats FILE``); ``--skip N`` leaves the first N batches out of the
figures (a warm cache, as in a long run).

This is the tool to profile the apply path before and after a change; ``make bench`` measures the whole job.
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import psutil
from sqlalchemy import Engine

from bench.procs import PostgresServer, throwaway_postgres
from bench.workload import prepare, simulate_records
from config.settings import Settings, load_settings
from sinks.database import make_engine, upgrade
from sinks.sql import SqlSink
from streams import apply_process
from streams.decoding import InRecord
from streams.kafka import partition_for
from streams.pipeline import BatchProcessor

PARTITIONS = 4


def stream_records(customers: int, days: int) -> Iterator[InRecord]:
    """The workload as the worker receives it, converted as it is read: one record per event (rejected records
    left out), on its channel topic's partition, with that partition's next offset."""
    offsets: dict[tuple[str, int], itertools.count[int]] = {}
    for n, rec in enumerate(simulate_records(customers, days), 1):
        event = prepare(rec, n)
        if isinstance(event, str):
            continue
        # Interned: a million records held at once share one string per topic.
        tp = (sys.intern(f"cx.touchpoints.{event.channel}"), partition_for(event.key, PARTITIONS))
        offset = next(offsets.setdefault(tp, itertools.count()))
        yield InRecord(tp[0], tp[1], offset, event.value)


def records_of(customers: int, days: int) -> list[InRecord]:
    """The whole workload as the worker receives it (see stream_records)."""
    return list(stream_records(customers, days))


def batches_of(records: Iterable[InRecord], size: int) -> Iterator[list[InRecord]]:
    """``records`` cut into the batches a worker hands its apply process, ``size`` events each (the last fewer)."""
    it = iter(records)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def new_processor(database_url: str) -> tuple[Engine, BatchProcessor]:
    """The apply process's engine and batch processor on ``database_url``, schema upgraded, collector tuned as in
    the apply process (this process's collector: see apply_process.tune_collector)."""
    engine = make_engine(database_url, writer=True)
    upgrade(engine)
    settings = load_settings(database_url=database_url)
    # A wall clock that stands still: no partition goes idle by it, so what a batch does depends on the records
    # alone, not on how fast this machine applied the batches before it.
    processor = BatchProcessor(settings, SqlSink(engine), clock=lambda: 0.0)
    apply_process.tune_collector()
    return engine, processor


def _server_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    server = psutil.Process(pid)
    total = 0.0
    for proc in [server, *server.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def run(
    database_url: str, records: list[InRecord], batch: int, skip: int, profile: Path | None, server: int | None
) -> None:
    """Apply ``records`` in batches of ``batch``; print the figures."""
    engine, processor = new_processor(database_url)
    batches = list(batches_of(records, batch))
    profiler = cProfile.Profile() if profile else None
    measured = 0
    started = None
    for n, chunk in enumerate(batches):
        if n == skip:
            started = (time.process_time(), time.thread_time(), _server_cpu(server), time.perf_counter())
            if profiler:
                profiler.enable()
        apply_process.process(processor, chunk)
        if n >= skip:
            measured += len(chunk)
    if profiler and profile:
        profiler.disable()
        profiler.dump_stats(profile)
    assert started is not None, "--skip leaves no batch to measure"
    process_s = time.process_time() - started[0]
    main_s = time.thread_time() - started[1]
    server_s = _server_cpu(server) - started[2]
    wall_s = time.perf_counter() - started[3]
    per = 1e6 / measured
    print(
        f"{measured:,} events in {len(batches) - skip} batches of {batch}: "
        f"process {process_s * per:.1f} µs/event (main thread {main_s * per:.1f}, other threads "
        f"{(process_s - main_s) * per:.1f})"
        + (f", database server {server_s * per:.1f}" if server else "")
        + f"; wall {wall_s:.1f} s ({measured / wall_s:,.0f} events/s); threads {threading.active_count()}"
    )
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.apply", description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument(
        "--batch",
        type=int,
        default=Settings.model_fields["batch_max_events"].default,
        help="events per batch (default: CXSTREAM_BATCH_MAX_EVENTS's)",
    )
    parser.add_argument("--skip", type=int, default=2, help="batches left out of the figures (warm-up)")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--postgres-url", default=os.environ.get("CXSTREAM_BENCH_POSTGRES_URL"))
    parser.add_argument("--profile", type=Path, help="write a cProfile of the measured batches here")
    args = parser.parse_args()
    records = records_of(args.customers, args.days)
    print(f"{len(records):,} records ({args.customers:,} customers, {args.days} days)")
    if args.database == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            run(f"sqlite:///{tmp}/apply.db", records, args.batch, args.skip, args.profile, None)
        return
    throwaway = None
    url = args.postgres_url
    if url is None:
        throwaway, url = throwaway_postgres()
    try:
        postgres = PostgresServer(url)
        with postgres.database() as database_url:
            run(database_url, records, args.batch, args.skip, args.profile, postgres.local_pid())
    finally:
        if throwaway is not None:
            throwaway.cleanup()


if __name__ == "__main__":
    main()
