"""Real sources at default settings: channels published one after another, late history, nothing lost.

Every test here runs with the default settings: out-of-order, channel-by-channel input is what real sources
send, and a setting raised to let it through would hide exactly the defect these tests are about.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import orjson
from sqlalchemy import func, select

from config.settings import load_settings
from config.topics import Topics
from sinks import tables as t
from sinks.database import make_engine
from streams.sandbox.embedded_broker import start_broker, stop_process
from tests.support.expected import ORDER_FREE_TABLES, expected_results
from tests.support.kafka import read_topic
from tests.support.processes import free_port, wait_until
from tests.support.results import (
    caught_up,
    consumed_events,
    end_offsets,
    prometheus_value,
    run_cli,
    snapshot,
    snapshot_diff,
    without_versions,
)
from tests.support.workers import WorkerFactory

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
#: Valid events in the sample files (the rest of their lines are a CSV header each).
SAMPLE_EVENTS = 73

#: The worker's info line for a batch (``streams.worker.describe_batch``).
BATCH_LINE = re.compile(
    r"applied (?P<applied>[\d,]+) events? \((?P<dead>[\d,]+) dead letters?[^)]*\) from [\d,]+ partitions? "
    r"in \d+\.\d\d s; watermark (?:\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ|none yet); lag [\d,]+ records?\b"
)


def order_free(engine) -> dict:
    """The result tables that must not depend on arrival order, as ``expected_results`` gives them."""
    snap = without_versions(snapshot(engine))
    return {name: snap[name] for name in ORDER_FREE_TABLES}


def wait_for_results(engine, expected: dict, timeout: float = 90) -> None:
    """Wait until the tables hold what the oracle says (windows turn final once every partition went idle)."""
    last: list[dict] = []

    def equal() -> bool:
        last[:] = [order_free(engine)]
        return last[0] == expected

    try:
        wait_until(equal, timeout, "the results to equal the oracle's", interval=1.0)
    except AssertionError:
        raise AssertionError(snapshot_diff(expected, last[0])) from None


def test_sample_files_published_one_channel_after_another_all_land(
    kafka_url: str, topic_prefix: str, database_url: str, workers: WorkerFactory
) -> None:
    """The README's way to load files, with a worker running: two weeks of history arrive channel by channel,
    each channel's file in its own order. Every valid event lands, equal to the oracle's replay."""
    env = workers.env(database_url, topic_prefix)
    worker = workers.start(env, loglevel="info")
    for sample in sorted(SAMPLES.iterdir()):
        run_cli(env, "publish", "--channel", sample.name.split(".")[0], str(sample))
    events = consumed_events(kafka_url, topic_prefix)
    assert len(events) == SAMPLE_EVENTS
    engine = make_engine(database_url)
    wait_for_results(engine, expected_results(events, load_settings()))
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(t.touchpoints)) == SAMPLE_EVENTS
    metrics = worker.metrics_text()
    assert prometheus_value(metrics, "cxstream_late_events_total", outcome="too_late") == 0
    # One info line per batch, idle ticks none: between them, the lines account for every event applied.
    lines: list[re.Match[str]] = []

    def logged() -> int:
        lines[:] = BATCH_LINE.finditer(worker.log())
        return sum(int(line["applied"].replace(",", "")) for line in lines)

    wait_until(lambda: logged() == SAMPLE_EVENTS, 20, f"batch lines accounting for {SAMPLE_EVENTS} events")
    assert all(line["applied"] != "0" and line["dead"] == "0" for line in lines), [line[0] for line in lines]


def test_unattributed_events_are_kept_and_counted(
    kafka_url: str, topic_prefix: str, sqlite_url: str, workers: WorkerFactory, tmp_path: Path
) -> None:
    """A visit or a survey answer with no identifier is still a touchpoint: stored, counted for its channel and
    overall, and in Prometheus; it belongs to no customer."""
    lines = [
        {"visit_id": "V-1", "store_id": "S1", "occurred_at": "2024-05-01T09:00:00Z", "kind": "visit"},
        {
            "visit_id": "V-2",
            "store_id": "S1",
            "occurred_at": "2024-05-01T10:00:00Z",
            "kind": "visit",
            "feedback": {"csat": 2},
        },
        {
            "visit_id": "V-3",
            "store_id": "S1",
            "occurred_at": "2024-05-01T11:00:00Z",
            "kind": "visit",
            "loyalty_id": "LOY-1",
        },
    ]
    path = tmp_path / "store.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(line) for line in lines))
    env = workers.env(sqlite_url, topic_prefix)
    worker = workers.start(env)
    run_cli(env, "publish", "--channel", "store", "--strict", str(path))
    engine = make_engine(sqlite_url)
    ends = end_offsets(kafka_url, Topics(topic_prefix).channels)
    wait_until(lambda: caught_up(engine, f"{topic_prefix}app", ends), 60, "the worker to apply every record")
    with engine.connect() as conn:
        rows = dict(conn.execute(select(t.touchpoints.c.source_id, t.touchpoints.c.customer_id)).all())
        c = t.metric_cells.c
        overall = conn.execute(select(c.counters).where(c.scope == "overall", c.window == "all")).scalar_one()
        store = conn.execute(
            select(c.counters).where(c.scope == "channel", c.key == "store", c.window == "all")
        ).scalar_one()
        customers = conn.scalar(select(func.count()).select_from(t.customers))
    assert rows["S1:visit:V-1"] is None and rows["S1:visit:V-2"] is None and rows["S1:visit:V-3"] is not None
    assert overall["touchpoints"] == store["touchpoints"] == 3
    assert (store["csat_answers"], store.get("csat_satisfied", 0)) == (1, 0)  # the anonymous answer counts
    assert customers == 1
    wait_until(
        lambda: prometheus_value(worker.metrics_text(), "cxstream_unattributed_events_total") == 2,
        20,
        "the unattributed events to be counted",
    )


def test_a_database_that_followed_another_log_is_refused_at_start(
    kafka_url: str, topic_prefix: str, tmp_path: Path, workers: WorkerFactory
) -> None:
    """A fresh broker (an embedded one starts empty) against an old database: the worker would skip every record
    up to the stored offsets. It refuses to start instead, naming both and the way out."""
    database = f"sqlite:///{tmp_path / 'old.db'}"
    env = workers.env(database, topic_prefix)
    worker = workers.start(env)
    for sample in sorted(SAMPLES.iterdir()):
        run_cli(env, "publish", "--channel", sample.name.split(".")[0], str(sample))
    engine = make_engine(database)
    ends = end_offsets(kafka_url, Topics(topic_prefix).channels)
    wait_until(lambda: caught_up(engine, f"{topic_prefix}app", ends), 60, "the worker to apply every record")
    worker.stop()

    port = free_port()
    broker = start_broker(port, log_path=tmp_path / "fresh-broker.log")
    try:
        fresh = {**env, "CXSTREAM_KAFKA_URL": f"kafka://127.0.0.1:{port}", "CXSTREAM_WEB_PORT": str(free_port())}
        refused = subprocess.run(
            [sys.executable, "-m", "streams.cli", "worker"], env=fresh, capture_output=True, timeout=120
        )
        message = refused.stderr.decode()
        assert refused.returncode == 1, message
        assert "does not hold" in message and database in message and f"127.0.0.1:{port}" in message
        assert "cxstream db reset-offsets" in message and "fresh database" in message

        # The same number of records, but not the same ones: refused by what the records are, not their count.
        for sample in sorted(SAMPLES.iterdir(), reverse=True):
            reversed_lines = tmp_path / f"reversed-{sample.name}"
            lines = sample.read_bytes().splitlines()
            body = lines[:1] + lines[:0:-1] if sample.suffix == ".csv" else lines[::-1]
            reversed_lines.write_bytes(b"\n".join(body) + b"\n")
            run_cli(fresh, "publish", "--channel", sample.name.split(".")[0], str(reversed_lines))
            run_cli(fresh, "publish", "--channel", sample.name.split(".")[0], str(reversed_lines))
        again = subprocess.run(
            [sys.executable, "-m", "streams.cli", "worker"], env=fresh, capture_output=True, timeout=120
        )
        assert again.returncode == 1 and "is not the one the database applied" in again.stderr.decode()

        reset = run_cli(fresh, "db", "reset-offsets")
        assert "forgot the applied offsets" in reset.stdout.decode()
        workers.start(fresh)  # starts now, and reads the fresh broker's topics from their start
    finally:
        stop_process(broker)


def test_an_event_later_than_another_in_its_batch_does_not_stop_publishing(
    kafka_url: str, topic_prefix: str, sqlite_url: str, workers: WorkerFactory, tmp_path: Path
) -> None:
    """Found on the way: a batch whose late count came out negative (an event earlier than another of the same
    batch) crashed the task that finishes batches, leaving its outputs unpublished until a restart."""

    def track(message_id: str, day: str) -> bytes:
        return orjson.dumps(
            {
                "type": "track",
                "messageId": message_id,
                "anonymousId": "anon-negative",
                "timestamp": f"2024-{day}T12:00:00Z",
                "event": "Product Viewed",
            }
        )

    env = workers.env(sqlite_url, topic_prefix)
    worker = workers.start(env)
    first, batch = tmp_path / "first.jsonl", tmp_path / "batch.jsonl"
    first.write_bytes(track("m-0", "09-30"))
    batch.write_bytes(track("m-1", "10-05") + b"\n" + track("m-2", "10-01"))
    engine = make_engine(sqlite_url)
    group = f"{topic_prefix}app"
    run_cli(env, "publish", "--channel", "web", str(first))
    wait_until(lambda: caught_up(engine, group, end_offsets(kafka_url, Topics(topic_prefix).channels)), 60, "m-0")
    run_cli(env, "publish", "--channel", "web", str(batch))
    # caught_up also waits for the outbox to be empty: the batch's outputs were published.
    wait_until(lambda: caught_up(engine, group, end_offsets(kafka_url, Topics(topic_prefix).channels)), 60, "m-1, m-2")
    timeline = read_topic(kafka_url, f"{topic_prefix}timeline", until=lambda records: len(records) >= 3)
    assert len({orjson.loads(value)["event_id"] for _, value in timeline}) == 3
    assert worker.proc.poll() is None, worker.log()[-3000:]
