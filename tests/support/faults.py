"""Helpers of the fault and lifecycle tests: progress, a held SQLite lock, a database behind a cuttable proxy."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import Engine, select

from sinks import tables as t
from tests.support.processes import wait_until
from tests.support.proxy import CuttableProxy, backend_of
from tests.support.results import prometheus_value, run_cli
from tests.support.workers import WorkerProcess


def applied_count(engine: Engine, group_id: str) -> int:
    """Records applied so far (sum over partitions of applied offset + 1)."""
    with engine.connect() as conn:
        offsets = conn.execute(
            select(t.stream_offsets.c.applied_offset).where(t.stream_offsets.c.group_id == group_id)
        ).scalars()
        return sum(off + 1 for off in offsets)


@contextlib.contextmanager
def batch_waiting_for_the_write_lock(
    path: Path, worker: WorkerProcess, publish: Callable[[], object]
) -> Iterator[None]:
    """Hold SQLite's write lock, ``publish``, and yield once the worker's apply process waits on it inside a batch."""
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        publish()
        lag = lambda: prometheus_value(worker.metrics_text(), "cxstream_consumer_lag_records") > 0  # noqa: E731
        wait_until(lag, 30, "the worker to fetch records it cannot commit")
        time.sleep(1)  # the batch reaches the apply process and waits for the lock
        yield
    finally:
        blocker.rollback()
        blocker.close()


def publish_halves(env: dict[str, str], files: list[Path], half: int) -> None:
    """Publish the first (0) or second (1) half of each channel file of one simulation."""
    for path in files:
        lines = path.read_bytes().splitlines(keepends=True)
        part = path.with_suffix(f".{half}.jsonl")
        part.write_bytes(b"".join(lines[: len(lines) // 2] if half == 0 else lines[len(lines) // 2 :]))
        run_cli(env, "publish", "--channel", path.stem, str(part))


def through_proxy(postgres_url: str) -> tuple[CuttableProxy, str]:
    """A proxy in front of a PostgreSQL database that a test can cut off, and the URL to reach the database through it."""
    proxy = CuttableProxy(*backend_of(postgres_url))
    return proxy, f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}{urlsplit(postgres_url).path}"
