"""SQLite write-ahead-log housekeeping: WAL checkpoints on their own thread, so the worker's batches do not wait.

A WAL checkpoint is SQLite's copy of the log into the database file: nothing to do with input offsets, which
are stored with the results they produced (``sinks.store``).

With SQLite's automatic checkpoints the commit that crosses the WAL threshold copies the log into the
database file and syncs both, on the committing thread: measured as 17 of 172 µs per event of a batch, most
of it in fsync. Here the writer's own connections never checkpoint (``wal_autocheckpoint=0``); after a
commit a thread with its own connection runs a PASSIVE checkpoint, which copies what is committed without
blocking the writer, and sqlite3 releases the GIL while it runs. Commits less than ``min_interval_s`` after
the previous checkpoint share the next one: every checkpoint copies and syncs the pages each batch rewrites
(indexes, offsets, clock, outbox), so one per commit cost the most where batches are small, i.e. at moderate
load, when the machine's CPU is also what latency waits for. Durability across a process crash (the fault we
guard against) is unchanged: the same commits, in WAL mode, synchronous=NORMAL. An operating-system crash or
power loss may take back the commits of the last ``min_interval_s`` at most (synchronous=NORMAL syncs the
log only at checkpoints; SQLite's own automatic checkpoints would wait for 1,000 pages); their input is
read again from its applied offsets.

A passive checkpoint cannot rewind the log while the writer keeps appending to it: the log only grows. So once
it holds more than ``restart_wal_bytes``, right after a passive checkpoint the thread runs a RESTART checkpoint,
which takes the writer's lock, copies what the passive one left (the commits since it began) and makes the next
commit write the log from its start again, in the same file. Measured on the latency run (``python -m bench
--only latency``, 3,300 events/s in batches of about 500): with only a TRUNCATE checkpoint of a 290-380 MB log
every 3-4 s, each blocked the writer 0.27-0.43 s, the run's p99; a RESTART after a passive checkpoint took
0-0.11 s. Past ``max_wal_bytes`` of file (a burst the restarts could not keep up with) the thread runs a TRUNCATE
checkpoint instead, which also empties the file.

Both block the writer while they run, so each waits at most ``block_wait_s`` for the writer's transaction or a
reader's snapshot, and gives up (to try again at the next checkpoint) rather than hold the writer back: with the
connection's 30 s, a reader keeping its snapshot (a long query on the database file) held every commit back for
as long. The log then grows while the reader reads, and is restarted once it is gone. Back-to-back batches still
leave gaps: ``python -m bench.apply --database sqlite`` had 15 restarts and 1 truncation in 41 batches of 5,000.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time

log = logging.getLogger(__name__)

#: WAL size past which the checkpoint thread empties the log (blocking the writer for one checkpoint).
MAX_WAL_BYTES = 256 * 1024 * 1024

#: Least seconds between two checkpoints: commits requested meanwhile are checkpointed together.
MIN_INTERVAL_S = 1.0

#: Log content past which a passive checkpoint is followed by a RESTART one (the log then starts over).
RESTART_WAL_BYTES = 64 * 1024 * 1024

#: Most seconds a RESTART or TRUNCATE checkpoint waits for the writer's transaction and readers' snapshots (it
#: blocks the writer meanwhile).
BLOCK_WAIT_S = 0.1

#: Bytes a WAL frame adds to its page.
_FRAME_HEADER = 24


class WalCheckpointer:
    """Checkpoints one SQLite database's WAL after commits (``request``), on a daemon thread, at most once every
    ``min_interval_s``."""

    def __init__(
        self,
        path: str,
        *,
        max_wal_bytes: int = MAX_WAL_BYTES,
        restart_wal_bytes: int = RESTART_WAL_BYTES,
        block_wait_s: float = BLOCK_WAIT_S,
        min_interval_s: float = MIN_INTERVAL_S,
        busy_timeout_s: float = 30.0,
    ) -> None:
        self.path = path
        self.max_wal_bytes = max_wal_bytes
        self.restart_wal_bytes = restart_wal_bytes
        self.block_wait_s = block_wait_s
        self.min_interval_s = min_interval_s
        self.busy_timeout_s = busy_timeout_s
        self.truncations = 0
        self.restarts = 0
        self._wake = threading.Event()
        self._halt = threading.Event()
        self._stopped = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        """Ask for a checkpoint of what is committed (cheap: the thread runs it when it is free)."""
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._halt.clear()
                    self._thread = threading.Thread(target=self._run, name="cxstream-wal-checkpoint", daemon=True)
                    self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        """End the thread (when its engine is disposed); a later ``request`` starts a new one."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stopped = thread is not None
        if thread is not None:
            self._halt.set()
            self._wake.set()
            thread.join()
            self._stopped = False

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        last = 0.0
        try:
            while True:
                self._wake.wait()
                # Commits close together share one checkpoint: one per commit of 500-event batches cost this
                # thread 25-27 µs an event, one a second 10-14 (bench.apply, 2 shared cores).
                if self._halt.wait(max(0.0, last + self.min_interval_s - time.monotonic())):
                    return
                self._wake.clear()  # after the pause: what was committed meanwhile is in this checkpoint
                if self._stopped:
                    return
                last = time.monotonic()
                try:
                    self._checkpoint_wal(conn)
                except sqlite3.Error as exc:
                    # The next commit asks again; the writer's transactions do not depend on this one.
                    log.warning("WAL checkpoint of %s failed: %s", self.path, exc)
        finally:
            conn.close()

    def _checkpoint_wal(self, conn: sqlite3.Connection) -> None:
        try:
            size = os.path.getsize(self.path + "-wal")
        except FileNotFoundError:
            return
        # First what can be copied without blocking anyone: a blocking checkpoint then copies only what came since.
        (busy, frames, _) = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if busy:
            return  # another checkpoint was running; the next commit asks again
        if size > self.max_wal_bytes:
            self.truncations += self._blocking(conn, "TRUNCATE")
        elif frames * (self._page_size(conn) + _FRAME_HEADER) > self.restart_wal_bytes:
            self.restarts += self._blocking(conn, "RESTART")

    def _blocking(self, conn: sqlite3.Connection, mode: str) -> bool:
        """Run a checkpoint that blocks the writer, waiting at most ``block_wait_s`` to start; whether it ran."""
        conn.execute(f"PRAGMA busy_timeout = {round(self.block_wait_s * 1000)}")
        try:
            (busy, _, _) = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        finally:
            conn.execute(f"PRAGMA busy_timeout = {round(self.busy_timeout_s * 1000)}")
        return not busy

    @staticmethod
    def _page_size(conn: sqlite3.Connection) -> int:
        (size,) = conn.execute("PRAGMA page_size").fetchone()
        return int(size)
