"""The benchmark's CPU figure for a local PostgreSQL server counts the backends of connections that ended."""

from __future__ import annotations

import psutil
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from bench.procs import PostgresServer, tree_cpu_seconds
from sinks.database import normalise_url


def test_server_cpu_includes_backends_that_exited(postgres_url: str, postgres_server_url: str) -> None:
    server = PostgresServer(normalise_url(postgres_server_url))
    try:
        pid = server.local_pid()
    finally:
        server.dispose()
    assert pid is not None, "the test server runs on this machine"
    assert psutil.Process(pid).name().startswith("postgres")

    before = tree_cpu_seconds(pid)
    assert before is not None
    # NullPool: the connection, and with it its backend process, ends before the second reading.
    engine = create_engine(postgres_url, poolclass=NullPool)
    with engine.connect() as conn:
        backend = psutil.Process(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
        conn.execute(text("SELECT count(*) FROM generate_series(1, 3000000)")).scalar_one()
        used = sum(backend.cpu_times()[:2])
    engine.dispose()
    psutil.wait_procs([backend], timeout=10)  # reaped: its time moved to the server's children times
    after = tree_cpu_seconds(pid)
    assert after is not None
    # Counted once: at least what the backend used, and not twice that (the rest of the server is nearly idle).
    assert used >= 0.1
    assert used * 0.9 <= after - before < used * 1.9


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://cx@db.example.invalid/cx",
        "postgresql+psycopg://cx@/cx?host=db.example.invalid",
    ],
)
def test_a_remote_server_has_no_local_process(url: str) -> None:
    server = PostgresServer(url)
    try:
        assert server.local_pid() is None
    finally:
        server.dispose()
