"""The SQLite writer's WAL is checkpointed off its thread, and emptied once it grows past the limit; new databases
get the page size that was measured cheaper, existing ones keep theirs."""

from __future__ import annotations

import os
import re
import shlex
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from sinks.database import SQLITE_PAGE_SIZE, make_engine, upgrade
from sinks.wal import WalCheckpointer
from tests.support.processes import wait_until


def test_writer_commits_are_checkpointed_by_the_thread(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'cx.db'}", writer=True)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)"))
    for batch in range(5):
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO t VALUES (:k, :v)"), [{"k": batch * 100 + i, "v": "x" * 500} for i in range(100)]
            )
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 500
    # Only a checkpoint writes pages into the database file, and the writer's connections never run one.
    path = tmp_path / "cx.db"
    wait_until(lambda: path.stat().st_size > 500 * 500, 10, "the rows in the database file", 0.02)
    engine.dispose()


def test_a_new_database_gets_the_larger_page_size_and_an_existing_one_keeps_its_own(tmp_path: Path) -> None:
    fresh = make_engine(f"sqlite:///{tmp_path / 'fresh.db'}", writer=True)
    upgrade(fresh)
    with fresh.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA page_size").scalar() == SQLITE_PAGE_SIZE == 16384
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    fresh.dispose()

    # A database made by an earlier version (4 KiB pages, already in WAL mode) opens, migrates and takes writes.
    old_path = tmp_path / "old.db"
    with closing(sqlite3.connect(old_path)) as raw:
        raw.execute("PRAGMA page_size=4096")
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("CREATE TABLE before_upgrade (k INTEGER PRIMARY KEY)")
    old = make_engine(f"sqlite:///{old_path}", writer=True)
    upgrade(old)
    with old.begin() as conn:
        conn.execute(text("INSERT INTO before_upgrade VALUES (1)"))
    with old.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA page_size").scalar() == 4096
        assert conn.execute(text("SELECT count(*) FROM before_upgrade")).scalar() == 1
    old.dispose()


def test_the_readme_command_converts_an_existing_database_to_the_larger_pages(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    note = readme[readme.index("**16 KiB SQLite pages.**") :]
    command = re.search(r"```sh\n(python -c .*?) cxstream.db\n```", note, re.S)
    assert command is not None, "the README's conversion command"
    path = tmp_path / "cxstream.db"
    with closing(sqlite3.connect(path)) as raw:  # as an earlier version made it
        raw.execute("PRAGMA page_size=4096")
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("CREATE TABLE kept (k INTEGER PRIMARY KEY)")
        raw.executemany("INSERT INTO kept VALUES (?)", [(i,) for i in range(1000)])
        raw.commit()
    args = shlex.split(command.group(1))
    assert args[0] == "python"
    subprocess.run([sys.executable, *args[1:], str(path)], check=True, timeout=60)
    with closing(sqlite3.connect(path)) as raw:
        assert raw.execute("PRAGMA page_size").fetchone()[0] == 16384
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT count(*) FROM kept").fetchone()[0] == 1000


def _grown_log(tmp_path: Path) -> tuple[str, Engine]:
    """A database whose WAL holds about 500 KB of rows, and its engine (not a writer: no checkpointer of its own to
    race with the test's)."""
    path = str(tmp_path / "cx.db")
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)"))
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (:k, :v)"), [{"k": i, "v": "y" * 1000} for i in range(500)])
    return path, engine


def test_checkpointer_truncates_a_log_past_its_limit(tmp_path: Path) -> None:
    path, engine = _grown_log(tmp_path)
    checkpointer = WalCheckpointer(path, max_wal_bytes=64 * 1024)
    assert os.path.getsize(path + "-wal") > 64 * 1024
    checkpointer.request()
    wait_until(lambda: checkpointer.truncations == 1, 10, "a TRUNCATE checkpoint", 0.02)
    assert os.path.getsize(path + "-wal") == 0
    checkpointer.stop()
    engine.dispose()


def _log_frames(path: str) -> int:
    """Frames in the WAL now (a PASSIVE checkpoint's second column)."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        frames: int = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
    return frames


def test_checkpointer_restarts_a_log_past_its_restart_size_and_the_next_commit_writes_it_from_the_start(
    tmp_path: Path,
) -> None:
    path, engine = _grown_log(tmp_path)
    checkpointer = WalCheckpointer(path, restart_wal_bytes=64 * 1024)
    grown = _log_frames(path)
    checkpointer.request()
    wait_until(lambda: checkpointer.restarts == 1, 10, "a RESTART checkpoint", 0.02)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (1000, 'z')"))
    assert _log_frames(path) < grown / 10  # written from the start of the log again
    assert checkpointer.truncations == 0 and os.path.getsize(path + "-wal") > 0  # the file is kept
    checkpointer.stop()
    engine.dispose()


@pytest.mark.parametrize("mode", ["RESTART", "TRUNCATE"])
def test_a_checkpoint_held_up_by_a_reader_gives_up_instead_of_holding_the_writer_back(
    tmp_path: Path, mode: str
) -> None:
    path, engine = _grown_log(tmp_path)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM t").fetchone()  # a snapshot in the log: a restart must wait for it
    with engine.begin() as conn:  # the log now holds frames past the reader's snapshot
        conn.execute(text("INSERT INTO t VALUES (:k, :v)"), [{"k": 1000 + i, "v": "w" * 1000} for i in range(100)])
    limit = {"restart_wal_bytes": 64 * 1024} if mode == "RESTART" else {"max_wal_bytes": 64 * 1024}
    checkpointer = WalCheckpointer(path, **limit, block_wait_s=0.1, min_interval_s=0.05)

    def blocking_checkpoints() -> int:
        return checkpointer.restarts + checkpointer.truncations

    try:
        checkpointer.request()
        started = time.monotonic()
        for k in range(20):  # the writer goes on committing while the checkpointer tries, and fails, to restart
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO t VALUES (:k, 'x')"), {"k": 5000 + k})
            checkpointer.request()
            time.sleep(0.05)
        assert time.monotonic() - started < 5  # with the connection's 30 s wait, a commit waited for the reader
        assert blocking_checkpoints() == 0
    finally:
        reader.execute("COMMIT")
        reader.close()
    checkpointer.request()
    wait_until(lambda: blocking_checkpoints() >= 1, 10, f"a {mode} once the reader is gone", 0.02)
    assert (checkpointer.truncations >= 1) == (mode == "TRUNCATE")
    checkpointer.stop()
    engine.dispose()
