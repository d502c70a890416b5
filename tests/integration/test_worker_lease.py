"""One running process per worker id: a second worker started with an id in use waits instead of fencing the first.

On Apache Kafka two processes with one ``CXSTREAM_WORKER_ID`` share an outputs transactional id, and the second's
producer fences the first, which stops; without transactions both publish each other's outbox rows. The lease
(``sinks.lease``) keeps the second waiting, saying why, until the first ends, however it ends.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine

from config.settings import load_settings
from config.topics import Topics
from sinks.database import make_engine
from sinks.lease import WorkerLease
from streams.worker import keep_lease
from tests.support.faults import through_proxy
from tests.support.processes import wait_until
from tests.support.results import caught_up, end_offsets, run_cli
from tests.support.workers import WorkerFactory

IN_USE = "CXSTREAM_WORKER_ID=worker-1 is in use"


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_second_worker_with_an_id_in_use_waits_and_takes_over_when_the_first_dies(
    request: pytest.FixtureRequest,
    kafka_url: str,
    topic_prefix: str,
    tmp_path: Path,
    workers: WorkerFactory,
    database: str,
) -> None:
    url = f"sqlite:///{tmp_path / 'cx.db'}" if database == "sqlite" else request.getfixturevalue("postgres_url")
    env = workers.env(url, topic_prefix)
    first = workers.start(env)
    second = workers.start(env, wait=False)  # the same, default, worker id
    wait_until(lambda: IN_USE in second.log(), 60, "the second worker to say its id is in use")

    # The first goes on applying meanwhile: it was neither fenced nor stopped.
    run_cli(env, "simulate", "--customers", "40", "--days", "2", "--seed", "3")
    engine = make_engine(url)
    channels = Topics(topic_prefix).channels
    ends = end_offsets(kafka_url, channels)
    wait_until(lambda: caught_up(engine, env["CXSTREAM_APP_ID"], ends), 120, "the first worker to apply every record")
    assert first.is_serving() and not second.is_serving()

    # Killed, the first leaves the lease with its process: the second starts and applies what comes next.
    first.kill()
    wait_until(second.is_serving, 90, "the second worker to take the lease and start")
    run_cli(env, "simulate", "--customers", "40", "--days", "2", "--seed", "4")
    ends = end_offsets(kafka_url, channels)
    wait_until(lambda: caught_up(engine, env["CXSTREAM_APP_ID"], ends), 120, "the second worker to apply every record")
    assert second.log().count(IN_USE) >= 1


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_lease_has_one_holder_per_id_and_group(request: pytest.FixtureRequest, tmp_path: Path, database: str) -> None:
    url = f"sqlite:///{tmp_path / 'cx.db'}" if database == "sqlite" else request.getfixturevalue("postgres_url")
    first, again, other_id, other_group = (
        WorkerLease(url, "g", "worker-1"),
        WorkerLease(url, "g", "worker-1"),
        WorkerLease(url, "g", "worker-2"),
        WorkerLease(url, "h", "worker-1"),
    )
    try:
        assert first.take()
        assert not again.take(), "one holder per id, also within one process"
        assert other_id.take() and other_group.take()
        assert first.take(), "taking a lease held already says it still is"
        first.release()
        assert again.take()
    finally:
        for lease in (first, again, other_id, other_group):
            lease.release()


@pytest.mark.postgres
def test_a_lease_whose_session_ended_is_taken_again_unless_another_took_it(postgres_url: str) -> None:
    # A database outage ends the lease's session and the lock with it: the holder takes it again when the database
    # answers (``keep_lease``), or learns that a waiting process with the same id took it first.
    holder, waiting = WorkerLease(postgres_url, "g", "worker-1"), WorkerLease(postgres_url, "g", "worker-1")
    engine = make_engine(postgres_url)
    try:
        assert holder.take()
        assert end_lease_sessions(engine) == 1
        assert holder.take(), "taken again on a new session"
        assert not waiting.take()
        end_lease_sessions(engine)
        assert waiting.take()
        assert not holder.take(), "the other process holds it now"
    finally:
        holder.release()
        waiting.release()
        engine.dispose()


@pytest.mark.postgres
def test_a_lease_whose_old_session_the_server_still_holds_is_taken_back(postgres_url: str) -> None:
    # Found by review: the client can see its session end before the server does (a middlebox's reset, a server
    # paused for a while). Taking the lease again, the worker found the lock held, by that session of its own, and
    # stopped as if another process had taken its id; its restart then waited for its own dead session.
    proxy, url = through_proxy(postgres_url)
    lease, other = WorkerLease(url, "g", "worker-1"), WorkerLease(postgres_url, "g", "worker-1")
    try:
        assert lease.take()
        proxy.drop_clients()
        assert not other.take(), "the server still holds the lock on the session the client lost"
        assert lease.take(), "the lease ends its own earlier session and takes the lock again"
        assert not other.take()
    finally:
        lease.release()
        other.release()
        proxy.close()


@pytest.mark.postgres
def test_keep_lease_takes_the_lease_back_after_an_outage_and_stops_the_worker_when_another_took_it(
    postgres_url: str,
) -> None:
    settings = load_settings(database_url=postgres_url)
    holder, other = WorkerLease(postgres_url, "g", "worker-1"), WorkerLease(postgres_url, "g", "worker-1")
    engine = make_engine(postgres_url)
    # The thread's sleeps are the test's steps: each check runs when the test lets it, and is over when the thread
    # sleeps again.
    step, checked, stopped = threading.Semaphore(0), threading.Semaphore(0), threading.Event()

    def sleep(_seconds: float) -> None:
        checked.release()
        step.acquire()

    try:
        assert holder.take()
        thread = threading.Thread(
            target=keep_lease, args=(settings, holder), kwargs={"sleep": sleep, "stop": stopped.set}, daemon=True
        )
        thread.start()
        assert checked.acquire(timeout=10)
        assert end_lease_sessions(engine) == 1, "an outage ends the lease's session"
        step.release()
        assert checked.acquire(timeout=30), "one check"
        assert not stopped.is_set() and not other.take(), "the worker took its lease back"
        assert end_lease_sessions(engine) == 1
        assert other.take(), "a waiting process with the same id takes the lease first"
        step.release()
        thread.join(30)
        assert stopped.is_set() and not thread.is_alive(), "the worker stops, and the other runs"
    finally:
        step.release()
        holder.release()
        other.release()
        engine.dispose()


def end_lease_sessions(engine: Engine) -> int:
    """End the sessions holding advisory locks in the test's database (waiting for them to go); how many."""
    with engine.connect() as conn:
        return len(
            conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_locks WHERE locktype = 'advisory' AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"
            ).all()
        )
