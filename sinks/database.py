"""Database engines and schema management for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event, inspect, make_url
from sqlalchemy.dialects import postgresql, sqlite

from sinks.tables import Table
from sinks.wal import WalCheckpointer


def normalise_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs (SQLAlchemy would otherwise pick psycopg2)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


#: SQLite page cache of the worker's connection (KiB).
WRITER_CACHE_KIB = 256 * 1024

#: Page size of a new SQLite database (bytes; SQLite's default is 4,096). A batch's rows land all over the
#: tables' indexes (their keys are hashes and event ids), so a commit writes most index pages it touches whole,
#: and the WAL checkpoint copies them again: 16 KiB pages were 5 to 8 µs an event less than 4 KiB ones
#: (``bench.apply``, 50,000 customers, batches of 5,000 and 20,000; 64 KiB was no better at 5,000).
SQLITE_PAGE_SIZE = 16 * 1024


def make_engine(url: str, *, writer: bool = False) -> Engine:
    """Create an engine tuned for batched writes: WAL for SQLite, pre-ping for PostgreSQL.

    A ``writer`` engine (the worker's) starts every SQLite transaction with BEGIN IMMEDIATE: a batch reads
    state and writes it back, and two workers must not both read before either writes: SQLite is the single-writer
    embedded default. On PostgreSQL batches of several workers commit concurrently, each locking the rows it
    touches (``SqlSink.lock_customers``, ``SqlSink.lock_clock``).
    """
    url = normalise_url(url)
    # orjson for the JSON columns (customer state, metric counters): several times faster than json.
    codec = {"json_serializer": _dumps, "json_deserializer": orjson.loads}
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, **codec)
        wal_checkpointer: WalCheckpointer | None = None

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets readers (the timeline command, tests) query while the worker writes;
            # synchronous=NORMAL is durable across process crashes, which is the fault we guard against.
            cur = dbapi_conn.cursor()
            # Only takes effect on a database not created yet: an existing one keeps its page size (README,
            # "Upgrade notes").
            cur.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            if wal_checkpointer is not None:
                cur.execute("PRAGMA wal_autocheckpoint=0")  # the WAL checkpointer's thread does it
            if writer:
                # The worker reads back the pages it wrote (identities, customers, cells): 256 MiB of page cache
                # instead of the 2 MiB default was 3.6 µs an event less (in-process, 50,000 customers).
                cur.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
            cur.close()
            if writer:
                dbapi_conn.isolation_level = None  # let SQLAlchemy's begin below start transactions

        if writer:
            database = engine.url.database
            wal_checkpointer = None if not database or database == ":memory:" else WalCheckpointer(database)

            @event.listens_for(engine, "begin")
            def _begin_immediate(conn: Any) -> None:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

            if wal_checkpointer is not None:

                @event.listens_for(engine, "checkin")
                def _request_wal_checkpoint(_dbapi_conn: Any, _record: Any) -> None:
                    wal_checkpointer.request()  # a connection comes back after its transaction ended

                event.listen(engine, "engine_disposed", lambda _engine: wal_checkpointer.stop())

        return engine
    # psycopg prepares a statement after 5 executions, and PostgreSQL then keeps a generic plan made when the
    # tables were small (a sequential scan of identities for every batch once they are large; without
    # autovacuum nothing replans it). Custom plans are made with the batch's values and the tables' sizes.
    options: dict[str, Any] = {"options": "-c plan_cache_mode=force_custom_plan", **PG_CONNECTION_TIMEOUTS}
    return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2, connect_args=options, **codec)


#: libpq settings that turn a network cut into an error within about a minute (the worker then retries, README:
#: database outages): a cut that sends nothing (a dropped route, a vanished host) otherwise leaves a connection
#: waiting for an answer for the kernel's two hours of keepalive idle time. Keepalive probes are answered by the
#: server's kernel, so a query that waits for a lock (a patient event) is not cut short.
PG_CONNECTION_TIMEOUTS = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,  # ms: data sent but not acknowledged
}


def missing_sqlite_file(url: str) -> str | None:
    """The path of a SQLite database file that does not exist (connecting would create it empty), else None."""
    parsed = make_url(normalise_url(url))
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return None if Path(parsed.database).exists() else parsed.database


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def upsert(engine: Engine, table: Table) -> postgresql.Insert | sqlite.Insert:
    """A dialect-specific INSERT for ``INSERT ... ON CONFLICT`` on either database."""
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def upgrade(engine: Engine) -> None:
    """Bring the schema to the current version (migrations live in sinks/migrations), views included."""
    from sinks.metrics_view import refresh
    from sinks.migrations import run_migrations

    run_migrations(engine)
    refresh(engine)


def table_names(engine: Engine) -> list[str]:
    """Names of the tables and views present in the database."""
    inspector = inspect(engine)
    return sorted([*inspector.get_table_names(), *inspector.get_view_names()])
