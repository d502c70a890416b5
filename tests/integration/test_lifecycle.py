"""Workers start, stop and die: with the database away, on SIGTERM, with their apply process, under make run.

A worker's life must never lose or double-count anything: started while its database is unreachable it waits;
stopped it ends within a bound; killed, its apply process dies with it; its apply process killed, it stops; and
`make run` stops everything it started however it is stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import requests
from sqlalchemy import func, select

from config.settings import load_settings
from config.topics import Topics
from sinks import tables as t
from sinks.database import make_engine
from streams.domain.oracle import replay
from streams.policies import Policies
from tests.support.faults import applied_count, batch_waiting_for_the_write_lock, publish_halves, through_proxy
from tests.support.processes import free_port, wait_until
from tests.support.results import caught_up, consumed_events, end_offsets, overall_counters, prometheus_value, run_cli

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


def test_a_killed_worker_leaves_no_writer_behind(kafka_url, topic_prefix, tmp_path, workers) -> None:
    # The apply process holds the database transaction: were it to outlive a killed worker, it could commit a
    # batch (and an outbox row) after the restarted worker had read its offsets and pending outbox. The test
    # holds SQLite's write lock so that the apply process is caught waiting inside a batch when its worker dies
    # (it would wait out its 30 s busy timeout, then commit).
    path = tmp_path / "cx.db"
    env = workers.env(f"sqlite:///{path}", topic_prefix)
    worker = workers.start(env)
    # Taken once the apply process runs (the worker starts it when its partitions are assigned): before that,
    # the only child is multiprocessing's resource tracker, and watching it alone would prove nothing.
    wait_until(lambda: worker.apply_pid() is not None, 60, "the worker to start its apply process")
    children = psutil.Process(worker.proc.pid).children(recursive=True)
    assert worker.apply_pid() in [child.pid for child in children]
    with batch_waiting_for_the_write_lock(
        path, worker, lambda: run_cli(env, "simulate", "--customers", "50", "--days", "2", "--seed", "5")
    ):
        worker.kill()
        gone = lambda: all(not c.is_running() or c.status() == psutil.STATUS_ZOMBIE for c in children)  # noqa: E731
        wait_until(gone, 5, "the apply process to die with its worker")


@pytest.mark.parametrize("when", ["idle", "mid-batch"])
def test_a_dead_apply_process_stops_its_worker_and_a_restart_loses_nothing(
    kafka_url, topic_prefix, tmp_path, workers, when
) -> None:
    # A worker whose apply process died (OOM killer, a crash in a driver) must stop for its supervisor to
    # restart it, not linger without applying anything: idle (caught up, nothing to submit) as well as in the
    # middle of a batch, which must not be acknowledged. Mid-batch, the test holds SQLite's write lock so the
    # apply process is caught waiting inside a batch when it is killed. One simulation, published in two
    # halves: separate simulations reuse receipt and call ids, which are event ids.
    path = tmp_path / "cx.db"
    env = workers.env(f"sqlite:///{path}", topic_prefix)
    engine = make_engine(f"sqlite:///{path}")
    group, channels = env["CXSTREAM_APP_ID"], Topics(topic_prefix).channels
    run_cli(env, "simulate", "--customers", "200", "--days", "5", "--seed", "8", "--out", str(tmp_path / "sim"))
    files = sorted((tmp_path / "sim").glob("*.jsonl"))
    publish_halves(env, files, 0)
    worker = workers.start(env)
    parent = psutil.Process(worker.proc.pid)
    wait_until(lambda: caught_up(engine, group, end_offsets(kafka_url, channels)), 60, "the worker to catch up")
    with (
        batch_waiting_for_the_write_lock(path, worker, lambda: publish_halves(env, files, 1))
        if when == "mid-batch"
        else contextlib.nullcontext()
    ):
        for child in parent.children(recursive=True):
            child.kill()
        wait_until(lambda: worker.proc.poll() is not None, 30, "the worker to stop")

    if when == "idle":
        publish_halves(env, files, 1)  # what arrives while the worker is down
    ends = end_offsets(kafka_url, channels)
    workers.start(env)
    wait_until(lambda: caught_up(engine, group, ends), 120, "a restarted worker to apply every record")
    oracle = replay(consumed_events(kafka_url, topic_prefix), Policies.from_settings(load_settings()))
    with engine.connect() as conn:
        overall = overall_counters(conn)
        touchpoints = conn.scalar(select(func.count()).select_from(t.touchpoints))
    assert overall["touchpoints"] == len(oracle.entries) == touchpoints, "every event applied, and once"


def test_a_worker_started_without_its_database_waits_for_it(kafka_url, topic_prefix, postgres_url, workers) -> None:
    """Unreachable at start (its schema not even created yet): the worker waits, says so, and then applies all."""
    proxy, via_proxy = through_proxy(postgres_url)
    env = workers.env(via_proxy, topic_prefix)
    run_cli(env, "publish", "--channel", "web", str(SAMPLES / "web.jsonl"))
    try:
        proxy.cut()
        worker = workers.start(env, wait=False)
        wait_until(lambda: "not ready, retrying" in worker.log(), 30, "the worker to say it waits for the database")
        time.sleep(3)
        assert worker.proc.poll() is None, f"the worker gave up:\n{worker.log()[-3000:]}"
        proxy.restore()
        wait_until(worker.is_serving, 60, "the worker to start once the database answers")
        engine = make_engine(postgres_url)
        ends = end_offsets(kafka_url, Topics(topic_prefix).channels)
        wait_until(lambda: caught_up(engine, env["CXSTREAM_APP_ID"], ends), 90, "the worker to apply every record")
    finally:
        proxy.close()
    expected = set(replay(consumed_events(kafka_url, topic_prefix), Policies.from_settings(load_settings())).entries)
    with engine.connect() as conn:
        assert set(conn.execute(select(t.touchpoints.c.event_id)).scalars()) == expected


def test_an_idle_workers_database_gauge_follows_an_outage_and_its_end(
    kafka_url, topic_prefix, postgres_url, workers
) -> None:
    """Ops alert on ``cxstream_database_up``: a worker with no input asks the database only through its clock's
    batch, once a second, and the gauge must say whether it answers (it stayed 1 through an outage)."""
    proxy, via_proxy = through_proxy(postgres_url)
    env = workers.env(via_proxy, topic_prefix)
    try:
        worker = workers.start(env)

        def up() -> float | None:
            return prometheus_value(worker.metrics_text(), "cxstream_database_up")

        wait_until(lambda: up() == 1, 30, "the gauge to say the database answers")
        proxy.cut()
        wait_until(lambda: up() == 0, 30, "the gauge to say the database is away")
        assert worker.proc.poll() is None, f"the worker stopped:\n{worker.log()[-3000:]}"
        proxy.restore()
        wait_until(lambda: up() == 1, 60, "the gauge to say the database answers again")
    finally:
        proxy.close()


def test_a_worker_given_partitions_while_its_database_is_away_waits_then_applies_all(
    kafka_url, topic_prefix, postgres_url, workers
) -> None:
    """A rebalance (another worker leaves) while the database is cut off: the new owner's first calls fail, it
    waits with backoff instead of stopping, and everything lands once the database answers."""
    proxy, via_proxy = through_proxy(postgres_url)
    env = workers.env(via_proxy, topic_prefix)
    engine = make_engine(postgres_url)
    group = env["CXSTREAM_APP_ID"]
    try:
        first = workers.start(env, name="worker-1")
        second = workers.start(env, name="worker-2")
        run_cli(env, "simulate", "--customers", "100", "--days", "5", "--seed", "4")
        ends = end_offsets(kafka_url, Topics(topic_prefix).channels)
        wait_until(lambda: applied_count(engine, group) > 0, 60, "the workers to make progress")
        proxy.cut()
        second.stop()  # its partitions move to the first worker while the database is away
        time.sleep(8)
        assert first.proc.poll() is None, f"the worker stopped:\n{first.log()[-3000:]}"
        proxy.restore()
        wait_until(lambda: caught_up(engine, group, ends), 120, "the worker to apply every record")
        assert first.proc.poll() is None
        # The gauge follows the outcome of the worker's calls to the database as the Faust process learns it, which
        # the records being in the database does not wait for (CI, loaded, read 0 right then): read until it is 1.
        wait_until(
            lambda: prometheus_value(first.metrics_text(), "cxstream_database_up") == 1,
            30,
            "the worker to report the database up",
        )
    finally:
        proxy.close()
    oracle = replay(consumed_events(kafka_url, topic_prefix), Policies.from_settings(load_settings()))
    with engine.connect() as conn:
        assert overall_counters(conn)["touchpoints"] == len(oracle.entries), "every event applied, and once"


def test_sigterm_mid_batch_ends_within_the_bound_and_a_restart_loses_nothing(
    kafka_url, topic_prefix, tmp_path, workers
) -> None:
    """A batch stuck on a database lock kept a stopping worker alive for ever (Faust waited for it). SIGTERM now ends
    the worker within CXSTREAM_SHUTDOWN_TIMEOUT_S, apply process included, and nothing unacknowledged is lost."""
    path = tmp_path / "cx.db"
    env = workers.env(f"sqlite:///{path}", topic_prefix, shutdown_timeout_s="5")
    engine = make_engine(f"sqlite:///{path}")
    group, channels = env["CXSTREAM_APP_ID"], Topics(topic_prefix).channels
    run_cli(env, "simulate", "--customers", "150", "--days", "5", "--seed", "9", "--out", str(tmp_path / "sim"))
    files = sorted((tmp_path / "sim").glob("*.jsonl"))
    publish_halves(env, files, 0)
    worker = workers.start(env)
    wait_until(lambda: caught_up(engine, group, end_offsets(kafka_url, channels)), 60, "the worker to catch up")
    with batch_waiting_for_the_write_lock(path, worker, lambda: publish_halves(env, files, 1)):
        family = [worker.proc.pid, *(p.pid for p in psutil.Process(worker.proc.pid).children(recursive=True))]
        started = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        worker.proc.wait(timeout=60)
        assert time.monotonic() - started < 5 + 5, "SIGTERM ends the worker within the bound"
        # The bound is the worker's; its children follow it (the apply process dies with its parent), though on a
        # loaded machine not always within the same seconds.
        wait_until(lambda: not any(psutil.pid_exists(pid) for pid in family), 30, "no process of the worker left")
    ends = end_offsets(kafka_url, channels)
    workers.start(env)
    wait_until(lambda: caught_up(engine, group, ends), 120, "a restarted worker to apply every record")
    oracle = replay(consumed_events(kafka_url, topic_prefix), Policies.from_settings(load_settings()))
    with engine.connect() as conn:
        assert overall_counters(conn)["touchpoints"] == len(oracle.entries), "every event applied, and once"


def test_make_run_stopped_by_sigterm_leaves_no_process_behind(tmp_path) -> None:
    """`make run` killed (not Ctrl-C): the demo, and the broker, worker and simulator it started, all stop."""
    repo = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXSTREAM_")}
    env.update(
        CXSTREAM_KAFKA_URL=f"kafka://127.0.0.1:{free_port()}",
        CXSTREAM_WEB_PORT=str(free_port()),
        CXSTREAM_DATABASE_URL=f"sqlite:///{tmp_path / 'demo.db'}",
        CXSTREAM_DATA_DIR=str(tmp_path / "var"),
    )
    family: list[int] = []
    make = subprocess.Popen(
        ["make", "--no-print-directory", "run"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        metrics = f"http://127.0.0.1:{env['CXSTREAM_WEB_PORT']}/metrics"

        def serving() -> bool:
            try:
                return requests.get(metrics, timeout=2).ok
            except requests.RequestException:
                return False

        wait_until(serving, 90, "the demo's worker to serve /metrics")
        wait_until(lambda: len(psutil.Process(make.pid).children(recursive=True)) >= 5, 30, "the simulator to start")
        family = [p.pid for p in psutil.Process(make.pid).children(recursive=True)]
        make.send_signal(signal.SIGTERM)  # make alone, as `kill PID` does: not its process group
        make.wait(timeout=30)
        wait_until(lambda: not any(psutil.pid_exists(pid) for pid in family), 60, "every process of the demo to stop")
    finally:  # whatever failed, leave nothing of this test running
        for pid in [make.pid, *family]:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
