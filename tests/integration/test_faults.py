"""Fault harness: crashed workers, replayed input and database outages lose nothing and count nothing twice."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import psutil
import pytest
import requests
from sqlalchemy import Engine, func, select

from config.settings import load_settings
from config.topics import Topics
from sinks import tables as t
from sinks.database import make_engine
from streams.domain.oracle import replay
from tests.support.kafka import read_topic
from tests.support.processes import free_port, wait_until
from tests.support.results import (
    RESULT_TABLES,
    caught_up,
    consumed_events,
    end_offsets,
    final_survivors,
    overall_counters,
    prometheus_value,
    run_cli,
    settled,
    snapshot,
    snapshot_diff,
    without_versions,
)
from tests.support.workers import WorkerProcess

# Simulated traffic is published in arrival order, but the worker reads four topics of four partitions each,
# whose interleaving differs from run to run: a generous lateness keeps too-late decisions out of the
# comparison (lateness itself has unit and property tests).
SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


def applied_count(engine: Engine, group_id: str) -> int:
    """Records applied so far (sum over partitions of applied offset + 1)."""
    with engine.connect() as conn:
        offsets = conn.execute(
            select(t.stream_offsets.c.applied_offset).where(t.stream_offsets.c.group_id == group_id)
        ).scalars()
        return sum(off + 1 for off in offsets)


def run_to_completion(workers, env: dict[str, str], kafka_url: str, prefix: str, kills: int, seed: int) -> Engine:
    """Run a worker over everything published; SIGKILL it ``kills`` times mid-run, restarting each time."""
    engine = make_engine(env["CXSTREAM_DATABASE_URL"])
    group = env["CXSTREAM_APP_ID"]
    ends = end_offsets(kafka_url, Topics(prefix).channels)
    total = sum(ends.values())
    rng = random.Random(seed)
    worker = workers.start(env)
    for _ in range(kills):
        before = applied_count(engine, group)
        wait_until(lambda: applied_count(engine, group) > before, 60, "the worker to make progress")  # noqa: B023
        time.sleep(rng.uniform(0, 0.3))  # land the kill anywhere in a batch: before, inside or after a commit
        assert applied_count(engine, group) < total, "the run finished before the kill: make it longer"
        worker.kill()
        worker = workers.start(env)
    # Settled: every partition idle since, so the last windows were finalised (their status is part of the rows).
    wait_until(lambda: settled(engine, group, ends), 180, "the worker to apply every record and go idle")
    return engine


def test_kill_9_mid_run_ends_exactly_like_an_uninterrupted_run(kafka_url, topic_prefix, tmp_path, workers) -> None:
    base = dict(batch_max_events="50", batch_max_wait="0.05")
    env_a = workers.env(f"sqlite:///{tmp_path / 'a.db'}", topic_prefix, app_id=f"{topic_prefix}a", **base)
    env_b = workers.env(f"sqlite:///{tmp_path / 'b.db'}", topic_prefix, app_id=f"{topic_prefix}b", **base)
    run_cli(env_a, "simulate", "--customers", "800", "--days", "10", "--seed", "11", "--malformed", "0.01")

    clean = run_to_completion(workers, env_a, kafka_url, topic_prefix, kills=0, seed=1)
    crashed = run_to_completion(workers, env_b, kafka_url, topic_prefix, kills=3, seed=2)

    expected, got = snapshot(clean), snapshot(crashed)
    # The merge log records the order in which links were discovered, which follows arrival order: both runs
    # must agree on where every merged id ended up, not on the path. Likewise an overdue-issue alert depends on
    # whether the resolving contact arrived before the watermark passed the due time (see the README).
    ends_a, ends_b = final_survivors(expected), final_survivors(got)
    both = ends_a.keys() & ends_b.keys()
    assert len(both) > 0.9 * len(ends_a)
    assert {m: ends_a[m] for m in both} == {m: ends_b[m] for m in both}
    for table in ("identity_merges", "alerts"):
        expected.pop(table), got.pop(table)
    difference = snapshot_diff(without_versions(expected), without_versions(got))
    assert not difference, f"a crashed and restarted run must leave exactly the same rows:\n{difference}"

    events = consumed_events(kafka_url, topic_prefix)
    oracle = replay(events, load_settings())
    touchpoints = {row["event_id"]: row["customer_id"] for row in expected["touchpoints"]}
    assert touchpoints == {eid: e.customer_id for eid, e in oracle.entries.items()}, "nothing lost, nothing extra"
    with crashed.connect() as conn:
        counted = conn.scalar(
            select(func.count()).select_from(t.metric_cells).where(t.metric_cells.c.scope == "overall")
        )
        overall = overall_counters(conn)
    assert counted and overall["touchpoints"] == len(oracle.entries), "every event counted exactly once"

    timeline = read_topic(kafka_url, Topics(topic_prefix).timeline, timeout=30)
    published = {orjson.loads(value)["event_id"] for _, value in timeline}
    assert published == set(oracle.entries), "every timeline entry reached the downstream topic"


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


def _publish_halves(env: dict[str, str], files: list[Path], half: int) -> None:
    """Publish the first (0) or second (1) half of each channel file of one simulation."""
    for path in files:
        lines = path.read_bytes().splitlines(keepends=True)
        part = path.with_suffix(f".{half}.jsonl")
        part.write_bytes(b"".join(lines[: len(lines) // 2] if half == 0 else lines[len(lines) // 2 :]))
        run_cli(env, "publish", "--channel", path.stem, str(part))


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
    _publish_halves(env, files, 0)
    worker = workers.start(env)
    parent = psutil.Process(worker.proc.pid)
    wait_until(lambda: caught_up(engine, group, end_offsets(kafka_url, channels)), 60, "the worker to catch up")
    with (
        batch_waiting_for_the_write_lock(path, worker, lambda: _publish_halves(env, files, 1))
        if when == "mid-batch"
        else contextlib.nullcontext()
    ):
        for child in parent.children(recursive=True):
            child.kill()
        wait_until(lambda: worker.proc.poll() is not None, 30, "the worker to stop")

    if when == "idle":
        _publish_halves(env, files, 1)  # what arrives while the worker is down
    ends = end_offsets(kafka_url, channels)
    workers.start(env)
    wait_until(lambda: caught_up(engine, group, ends), 120, "a restarted worker to apply every record")
    oracle = replay(consumed_events(kafka_url, topic_prefix), load_settings())
    with engine.connect() as conn:
        overall = overall_counters(conn)
        touchpoints = conn.scalar(select(func.count()).select_from(t.touchpoints))
    assert overall["touchpoints"] == len(oracle.entries) == touchpoints, "every event applied, and once"


def test_replaying_the_same_input_changes_no_row(kafka_url, topic_prefix, database_url, workers) -> None:
    env = workers.env(database_url, topic_prefix)
    run_cli(env, "simulate", "--customers", "300", "--days", "7", "--seed", "3")
    engine = run_to_completion(workers, env, kafka_url, topic_prefix, kills=0, seed=0)
    first = snapshot(engine)
    assert all(first[name] for name in RESULT_TABLES), {name: len(rows) for name, rows in first.items()}

    run_cli(env, "simulate", "--customers", "300", "--days", "7", "--seed", "3")  # the same records, re-sent
    ends = end_offsets(kafka_url, Topics(topic_prefix).channels)
    wait_until(lambda: settled(engine, env["CXSTREAM_APP_ID"], ends), 120, "the replay to be applied")
    difference = snapshot_diff(first, snapshot(engine))
    assert not difference, f"replayed input changed rows:\n{difference}"


def test_database_outage_mid_run_pauses_and_loses_nothing(kafka_url, topic_prefix, postgres_url, workers) -> None:
    from urllib.parse import urlsplit

    from tests.support.proxy import CuttableProxy, backend_of

    proxy = CuttableProxy(*backend_of(postgres_url))
    database = urlsplit(postgres_url).path
    via_proxy = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}{database}"
    env = workers.env(via_proxy, topic_prefix, batch_max_events="50")
    run_cli(env, "simulate", "--customers", "500", "--days", "10", "--seed", "21")
    engine = make_engine(postgres_url)  # the test's own view, not through the proxy
    group = env["CXSTREAM_APP_ID"]
    ends = end_offsets(kafka_url, Topics(topic_prefix).channels)
    try:
        worker = workers.start(env)
        wait_until(lambda: applied_count(engine, group) > 0, 60, "the worker to make progress")
        proxy.cut()
        stalled = applied_count(engine, group)
        time.sleep(6)
        assert applied_count(engine, group) == stalled, "nothing is written while the database is away"
        assert worker.proc.poll() is None, "the worker waits for the database instead of dying"
        proxy.restore()
        wait_until(lambda: caught_up(engine, group, ends), 180, "the worker to catch up after the outage")
        metrics = worker.metrics_text()
    finally:
        proxy.close()

    events = consumed_events(kafka_url, topic_prefix)
    oracle = replay(events, load_settings())
    rows = snapshot(engine)
    assert {r["event_id"]: r["customer_id"] for r in rows["touchpoints"]} == {
        eid: e.customer_id for eid, e in oracle.entries.items()
    }
    overall = next(r for r in rows["metric_cells"] if r["scope"] == "overall" and r["window"] == "all")
    assert overall["counters"]["touchpoints"] == len(oracle.entries), "every event counted exactly once"
    retries = [line for line in metrics.splitlines() if line.startswith("cxstream_sink_retries_total{")]
    assert retries and float(retries[0].rsplit(" ", 1)[1]) > 0, "the outage shows in the retry counter"


def test_a_row_the_database_refuses_is_dead_lettered_and_the_rest_lands(
    kafka_url, topic_prefix, postgres_url, workers
) -> None:
    """PostgreSQL enforces column lengths: an event id longer than `touchpoints.event_id` allows is refused for good."""
    from kafka import KafkaProducer

    from schemas.deadletter import DeadLetter

    env = workers.env(postgres_url, topic_prefix)
    run_cli(env, "publish", "--channel", "web", str(SAMPLES / "web.jsonl"))
    good = consumed_events(kafka_url, topic_prefix)
    bad = good[0].model_copy(update={"event_id": "x" * 100})
    producer = KafkaProducer(bootstrap_servers=[kafka_url.split("://", 1)[1]])
    producer.send(Topics(topic_prefix).channel("web"), key=b"k", value=bad.model_dump_json().encode())
    producer.flush()
    producer.close()

    worker = workers.start(env)
    engine = make_engine(postgres_url)
    ends = end_offsets(kafka_url, Topics(topic_prefix).channels)
    wait_until(lambda: caught_up(engine, env["CXSTREAM_APP_ID"], ends), 90, "the worker to apply every record")

    with engine.connect() as conn:
        landed = set(conn.execute(select(t.touchpoints.c.event_id)).scalars())
    expected = set(replay(good, load_settings()).entries)
    assert expected <= landed and bad.event_id not in landed, "the good records of the batch still land"
    dead = [DeadLetter.model_validate_json(v) for _, v in read_topic(kafka_url, Topics(topic_prefix).deadletter)]
    refused = [d for d in dead if d.reason == "sink_rejected"]
    assert len(refused) == 1 and refused[0].original() == bad.model_dump_json().encode()
    permanent = [
        line
        for line in worker.metrics_text().splitlines()
        if line.startswith("cxstream_sink_failures_total{") and 'kind="permanent"' in line
    ]
    assert permanent and float(permanent[0].rsplit(" ", 1)[1]) >= 1


def _through_proxy(postgres_url: str):
    from urllib.parse import urlsplit

    from tests.support.proxy import CuttableProxy, backend_of

    proxy = CuttableProxy(*backend_of(postgres_url))
    return proxy, f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}{urlsplit(postgres_url).path}"


def test_a_worker_started_without_its_database_waits_for_it(kafka_url, topic_prefix, postgres_url, workers) -> None:
    """Unreachable at start (its schema not even created yet): the worker waits, says so, and then applies all."""
    proxy, via_proxy = _through_proxy(postgres_url)
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
    expected = set(replay(consumed_events(kafka_url, topic_prefix), load_settings()).entries)
    with engine.connect() as conn:
        assert set(conn.execute(select(t.touchpoints.c.event_id)).scalars()) == expected


def test_a_worker_given_partitions_while_its_database_is_away_waits_then_applies_all(
    kafka_url, topic_prefix, postgres_url, workers
) -> None:
    """A rebalance (another worker leaves) while the database is cut off: the new owner's first calls fail, it
    waits with backoff instead of stopping, and everything lands once the database answers."""
    proxy, via_proxy = _through_proxy(postgres_url)
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
        assert prometheus_value(first.metrics_text(), "cxstream_database_up") == 1
    finally:
        proxy.close()
    oracle = replay(consumed_events(kafka_url, topic_prefix), load_settings())
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
    _publish_halves(env, files, 0)
    worker = workers.start(env)
    wait_until(lambda: caught_up(engine, group, end_offsets(kafka_url, channels)), 60, "the worker to catch up")
    with batch_waiting_for_the_write_lock(path, worker, lambda: _publish_halves(env, files, 1)):
        family = [worker.proc.pid, *(p.pid for p in psutil.Process(worker.proc.pid).children(recursive=True))]
        started = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        worker.proc.wait(timeout=60)
        assert time.monotonic() - started < 5 + 5, "SIGTERM ends the worker within the bound"
        wait_until(lambda: not any(psutil.pid_exists(pid) for pid in family), 10, "no process of the worker left")
    ends = end_offsets(kafka_url, channels)
    workers.start(env)
    wait_until(lambda: caught_up(engine, group, ends), 120, "a restarted worker to apply every record")
    oracle = replay(consumed_events(kafka_url, topic_prefix), load_settings())
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
