"""One running process per worker id: a lease on ``(group, worker id)`` held for the life of the worker's process.

Two processes with one ``CXSTREAM_WORKER_ID`` share an outputs transactional id: on Apache Kafka the second fences
the first, which stops, and a supervisor restarting it fences the second in turn; without transactions both publish
each other's outbox rows. A worker therefore takes a lease before it joins the group, and one that finds the lease
held waits for it (saying so) instead of starting beside the holder.

The lease is held by something the operating system releases when the process ends however it ends, so a worker
restarted after ``kill -9`` gets it at once:

- PostgreSQL: a session-level advisory lock on a connection of its own. The server drops it when the connection
  ends; the session's server-side TCP keepalives end it within about a minute of a client that vanished without
  closing it (a host gone from the network).
- SQLite (workers on one machine, sharing the file): a byte-range lock of ``<database>-workers.lock``, one byte
  per worker id.

Only the worker's main process takes it: its apply process dies with it (``streams.lifetime``).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
from pathlib import Path
from typing import IO

from sqlalchemy import Connection, create_engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from sinks.database import PG_CONNECTION_TIMEOUTS, normalise_url

#: Byte offsets of the SQLite lock file are taken below this: far from each other for any two ids.
_OFFSETS = 1 << 62

#: ``struct flock`` on Linux: type, whence, start, length, pid (0 for open file description locks).
_FLOCK = "hhqqi4x"

#: Server-side keepalives of the lease's PostgreSQL session, seconds: the server notices a client that vanished
#: (and drops its lock) after about idle + interval * count.
_SERVER_KEEPALIVES = {"tcp_keepalives_idle": 20, "tcp_keepalives_interval": 10, "tcp_keepalives_count": 3}


def lease_name(group_id: str, worker_id: str) -> str:
    """What a lease is on: one worker id of one group (the Faust application id)."""
    return f"worker-lease\0{group_id}\0{worker_id}"


def _key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class WorkerLease:
    """The lease of one worker id, taken with ``take`` and kept until the process ends (or ``release``)."""

    def __init__(self, database_url: str, group_id: str, worker_id: str) -> None:
        """A lease on ``worker_id`` of ``group_id`` in the database at ``database_url`` (not taken yet)."""
        self.url = make_url(normalise_url(database_url))
        self.name = lease_name(group_id, worker_id)
        self._connection: Connection | None = None  # PostgreSQL: the session holding the lock
        self._file: IO[bytes] | None = None  # SQLite: the lock file

    @property
    def where(self) -> str:
        """Where the lease lives, for messages: the lock file, or the database."""
        if self.url.get_backend_name() == "sqlite":
            path = self._lock_path()
            return str(path) if path is not None else "nowhere (an in-memory database has one process)"
        return self.url.render_as_string(hide_password=True)

    def take(self) -> bool:
        """Take the lease if no other process holds it; True when this process holds it (again: taking a lease
        held already is a check that it still is). Raises the database's errors (transient while it is down)."""
        if self.url.get_backend_name() == "sqlite":
            return self._take_file()
        return self._take_advisory()

    def release(self) -> None:
        """Give the lease up (the end of the process does too)."""
        if self._file is not None:
            self._file.close()  # closing the only descriptor of the file drops the process's locks on it
            self._file = None
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None

    def _lock_path(self) -> Path | None:
        database = self.url.database
        if not database or database == ":memory:":
            return None
        return Path(f"{database}-workers.lock")

    def _take_file(self) -> bool:
        if self._file is not None:
            return True  # a lock of this process's lasts while the descriptor is open
        path = self._lock_path()
        if path is None:
            return True
        # Not inheritable (Python's default): the apply process, spawned, holds no descriptor of it.
        file = open(path, "ab")  # noqa: SIM115  # held open for the life of the lease
        # An open file description's lock (not a process's, as lockf's): two leases conflict even in one process,
        # and closing another descriptor of the file does not drop it.
        request = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, _key(self.name) % _OFFSETS, 1, 0)
        try:
            fcntl.fcntl(file, fcntl.F_OFD_SETLK, request)
        except OSError:
            file.close()
            return False
        self._file = file
        return True

    def _take_advisory(self) -> bool:
        if self._connection is not None:
            try:
                self._connection.exec_driver_sql("SELECT 1")
                return True
            except DBAPIError:
                self.release()  # the session ended, and the lock with it: take it again
        # A connection of its own, outside any pool, that lives as long as the lease: the lock is the session's.
        engine = create_engine(
            self.url, poolclass=NullPool, isolation_level="AUTOCOMMIT", connect_args=dict(PG_CONNECTION_TIMEOUTS)
        )
        connection = engine.connect()
        try:
            for name, seconds in _SERVER_KEEPALIVES.items():
                connection.exec_driver_sql(f"SET {name} = {seconds}")
            held = connection.exec_driver_sql("SELECT pg_try_advisory_lock(%s)", (_key(self.name),)).scalar_one()
        except BaseException:
            connection.close()
            raise
        if not held:
            connection.close()
            return False
        self._connection = connection
        return True
