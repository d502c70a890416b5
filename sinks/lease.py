"""One running process per worker id: a lease on ``(group, worker id)`` held for the life of the worker's process.

Two processes with one ``CXSTREAM_WORKER_ID`` share an outputs transactional id: on Apache Kafka the second fences
the first, which stops, and a supervisor restarting it fences the second in turn; without transactions both publish
each other's outbox rows. A worker therefore takes a lease before it joins the group, and one that finds the lease
held waits for it (saying so) instead of starting beside the holder.

The lease is held by something the operating system releases when the process ends however it ends, so a worker
restarted after ``kill -9`` gets it at once:

- PostgreSQL: a session-level advisory lock on a connection of its own (a direct or session-pooled connection: a
  transaction pooler hands the session to others). The server drops it when the connection ends; the session's
  server-side keepalives and TCP user timeout end it within about a minute of a client that vanished without
  closing it (a host gone from the network).
- SQLite (workers on one machine, sharing the file): ``flock`` of a file beside the database, one per worker id.

Only the worker's main process takes it: its apply process dies with it (``streams.lifetime``).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import re
from datetime import datetime
from pathlib import Path
from typing import IO, NamedTuple

from sqlalchemy import Connection, create_engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from sinks.database import PG_CONNECTION_TIMEOUTS, normalise_url

#: Server-side settings of the lease's PostgreSQL session: keepalives (seconds) notice a client that vanished
#: after about idle + interval * count, and the user timeout (ms) one that stopped acknowledging data sent to it
#: (while data is unacknowledged, keepalives are not sent). ``tcp_user_timeout`` needs PostgreSQL 12.
_SERVER_TIMEOUTS = {
    "tcp_keepalives_idle": 20,
    "tcp_keepalives_interval": 10,
    "tcp_keepalives_count": 3,
    "tcp_user_timeout": 60_000,
}

#: The lease's lock, as ``pg_locks`` shows an advisory lock taken with two int4 keys (``objsubid`` 2: apart from
#: the single bigint keys of ``sinks.sql``'s transaction locks, ``objsubid`` 1).
_HOLDER = (
    "SELECT l.pid, a.backend_start FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
    "(SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND l.classid = %(high)s AND l.objid = %(low)s AND l.objsubid = 2"
)


#: Ends a session known by its pid and start (not the pid alone: it may be another's by now), waiting up to 5 s for
#: it to go (the two-argument form needs PostgreSQL 14).
_END_SESSION = "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE pid = %s AND backend_start = %s"


class LeaseUncertain(Exception):
    """The lease's own earlier session still holds it, and could not be ended yet: ask again later."""


class _Session(NamedTuple):
    pid: int
    started: datetime


def lease_name(group_id: str, worker_id: str) -> str:
    """What a lease is on: one worker id of one group (the Faust application id)."""
    return f"worker-lease\0{group_id}\0{worker_id}"


class WorkerLease:
    """The lease of one worker id, taken with ``take`` and kept until the process ends (or ``release``)."""

    def __init__(self, database_url: str, group_id: str, worker_id: str) -> None:
        """A lease on ``worker_id`` of ``group_id`` in the database at ``database_url`` (not taken yet)."""
        self.url = make_url(normalise_url(database_url))
        self.group_id, self.worker_id = group_id, worker_id
        digest = hashlib.sha256(lease_name(group_id, worker_id).encode()).digest()
        #: The advisory lock's two int4 keys (PostgreSQL).
        self.keys = int.from_bytes(digest[:4], "big", signed=True), int.from_bytes(digest[4:8], "big", signed=True)
        #: Tells apart lock files of ids that differ only in characters a file name should not hold (SQLite).
        self._suffix = digest.hex()[:8]
        #: PostgreSQL: the lease's session, holding the lock (``_held``) or waiting to take it.
        self._connection: Connection | None = None
        self._held = False
        #: PostgreSQL: the session that took the lock last (None: not taken, or given up).
        self._session: _Session | None = None
        self._file: IO[bytes] | None = None  # SQLite: the lock file
        self._engine = (
            None
            if self.url.get_backend_name() == "sqlite"
            # Connections of its own, outside any pool, each living as long as the lease: the lock is the session's.
            else create_engine(
                self.url, poolclass=NullPool, isolation_level="AUTOCOMMIT", connect_args=dict(PG_CONNECTION_TIMEOUTS)
            )
        )

    @property
    def can_lapse(self) -> bool:
        """Whether the lease can end while the process lives (a PostgreSQL session ended by an outage), and so
        needs checking (``streams.worker.keep_lease``); a SQLite lease lasts as long as the process."""
        return self._engine is not None

    @property
    def where(self) -> str:
        """Where the lease lives, for messages: the lock file, or the database."""
        if self._engine is None:
            path = self.lock_path()
            return str(path) if path is not None else "nowhere (an in-memory database has one process)"
        return self.url.render_as_string(hide_password=True)

    def take(self) -> bool:
        """Take the lease if no other process holds it; True when this process holds it (again: taking a lease
        held already is a check that it still is), False when another does. Raises the database's errors (transient
        while it is down), ``LeaseUncertain`` while this process's own ended session still holds it, and OSError
        when the SQLite lock file cannot be opened."""
        if self._engine is None:
            return self._take_file()
        return self._take_advisory()

    def release(self) -> None:
        """Give the lease up (the end of the process does too)."""
        if self._file is not None:
            self._file.close()  # closing the file's only descriptor drops its lock
            self._file = None
        self._close()

    def lock_path(self) -> Path | None:
        """The SQLite lease's lock file, beside the database: ``<database>-<app id>-<worker id>-<digest>.lease``."""
        database = self.url.database
        if self.url.query.get("mode") == "memory":  # a URI filename's in-memory database (``?mode=memory&uri=true``)
            return None
        database = (database or "").removeprefix("file:")  # a URI filename: its parameters are in the query
        if not database or database == ":memory:":
            return None
        # Readable, and distinct for any two ids: characters a file name should not hold are replaced, and a short
        # digest of the exact names tells apart ids that differ only in those.
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self.group_id}-{self.worker_id}")[:80]
        return Path(f"{database}-{name}-{self._suffix}.lease")

    def _take_file(self) -> bool:
        if self._file is not None:
            return True  # a lock of this lease's lasts while its descriptor is open
        path = self.lock_path()
        if path is None:
            return True
        # Not inheritable (Python's default): the apply process, spawned, holds no descriptor of it. flock locks
        # belong to the open file: two leases conflict even in one process.
        file = open(path, "ab")  # noqa: SIM115  # held open for the life of the lease
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            file.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._file = file
        return True

    def _take_advisory(self) -> bool:
        if self._connection is not None and self._held:
            try:
                self._connection.exec_driver_sql("SELECT 1")
                return True
            except DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise  # the session is there (a statement cancelled, say): so is its lock
                self._close()  # the session ended, and the lock with it, unless the server has not noticed yet
        try:
            connection = self._connection or self._connect()  # a waiting process asks on one session
            held = self._try_lock(connection)
            if not held:
                holder = self._holder(connection)
                if holder is None or holder == self._session:
                    # Released meanwhile; or held by this lease's earlier session, which the client saw end before
                    # the server did (a reset from a middlebox, a server paused for a while): end it, and try again.
                    if holder is not None:
                        connection.exec_driver_sql(_END_SESSION, (holder.pid, holder.started))
                    held = self._try_lock(connection)
                    if not held and holder is not None and self._holder(connection) == holder:
                        raise LeaseUncertain("this worker's earlier database session still holds its lease")
            if held:
                pid, started = connection.exec_driver_sql(
                    "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
                ).one()
                self._session = _Session(pid, started)
        except DBAPIError as exc:
            if exc.connection_invalidated:
                self._close()
            raise
        self._held = held
        return held

    def _connect(self) -> Connection:
        assert self._engine is not None
        connection = self._connection = self._engine.connect()
        for name, value in _SERVER_TIMEOUTS.items():
            try:
                connection.exec_driver_sql(f"SET {name} = {value}")
            except DBAPIError as exc:
                if exc.connection_invalidated:
                    raise
                # A server without the setting (tcp_user_timeout before 12): the keepalives still hold.
        return connection

    def _close(self) -> None:
        connection, self._connection, self._held = self._connection, None, False
        if connection is not None:
            connection.close()

    def _try_lock(self, connection: Connection) -> bool:
        return bool(connection.exec_driver_sql("SELECT pg_try_advisory_lock(%s, %s)", self.keys).scalar_one())

    def _holder(self, connection: Connection) -> _Session | None:
        """The session holding the lease's lock, if any."""
        high, low = self.keys
        params = {"high": high & 0xFFFFFFFF, "low": low & 0xFFFFFFFF}  # pg_locks shows the keys as unsigned oids
        row = connection.exec_driver_sql(_HOLDER, params).first()
        return None if row is None else _Session(*row)
