"""The benchmark's CPU figure for a local PostgreSQL server counts the backends of connections that ended."""

from __future__ import annotations

import psutil
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from sinks.database import normalise_url
from streams.bench.procs import PostgresServer, tree_cpu_seconds


def test_server_cpu_includes_backends_that_exited(postgres_url: str, postgres_server_url: str) -> None:
    server = PostgresServer(normalise_url(postgres_server_url))
    try:
        pid = server.local_pid()
    finally:
        server.dispose()
    assert pid is not None, "the test server runs on this machine"
    assert psutil.Process(pid).name().startswith("postgres")

    before = tree_cpu_seconds(pid)
    # NullPool: the connection, and with it its backend process, ends before the second reading.
    engine = create_engine(postgres_url, poolclass=NullPool)
    with engine.connect() as conn:
        backend = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        conn.execute(text("SELECT count(*) FROM generate_series(1, 3000000)")).scalar_one()
    engine.dispose()
    if psutil.pid_exists(backend):
        psutil.wait_procs([psutil.Process(backend)], timeout=10)  # reaped: its time moved to the server's
    assert tree_cpu_seconds(pid) - before >= 0.1


def test_a_remote_server_has_no_local_process() -> None:
    assert PostgresServer("postgresql+psycopg://cx@db.example.invalid/cx").local_pid() is None
