"""Fault harness: crashed workers, replayed input and database outages lose nothing and count nothing twice."""

from __future__ import annotations

import random
import time
from pathlib import Path

import orjson
from sqlalchemy import Engine, func, select

from config.settings import load_settings
from config.topics import Topics
from schemas.deadletter import DeadLetter
from schemas.touchpoint import TouchpointEvent
from sinks import tables as t
from sinks.database import PG_CONNECTION_TIMEOUTS, make_engine, upgrade
from streams.domain.identity import customer_id_for
from streams.domain.oracle import replay
from streams.policies import Policies
from tests.support.faults import applied_count, through_proxy
from tests.support.kafka import read_topic
from tests.support.processes import wait_until
from tests.support.results import (
    RESULT_TABLES,
    caught_up,
    consumed_events,
    end_offsets,
    final_survivors,
    overall_counters,
    run_cli,
    settled,
    snapshot,
    snapshot_diff,
    without_versions,
)

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


def run_to_completion(
    workers, env: dict[str, str], kafka_url: str, prefix: str, kills: int, seed: int, started: bool = False
) -> Engine:
    """Run a worker over everything published; SIGKILL it ``kills`` times mid-run, restarting each time.
    ``started``: the worker runs already (only wait for it to settle)."""
    engine = make_engine(env["CXSTREAM_DATABASE_URL"])
    group = env["CXSTREAM_APP_ID"]
    ends = end_offsets(kafka_url, Topics(prefix).channels)
    total = sum(ends.values())
    rng = random.Random(seed)
    worker = None if started else workers.start(env)
    for _ in range(kills):
        assert worker is not None, "a worker started elsewhere is not killed here"
        before = applied_count(engine, group)
        wait_until(lambda: applied_count(engine, group) > before, 60, "the worker to make progress")  # noqa: B023
        time.sleep(rng.uniform(0, 0.3))  # land the kill anywhere in a batch: before, inside or after a commit
        assert applied_count(engine, group) < total, "the run finished before the kill: make it longer"
        worker.kill()
        worker = workers.start(env)
    # Settled: every partition idle since, so the last windows were finalised (their status is part of the rows).
    wait_until(lambda: settled(engine, group, ends), 180, "the worker to apply every record and go idle")
    return engine


def merged_ids_astray(snap: dict[str, list[dict]]) -> dict[str, tuple[str, str | None]]:
    """The merged ids of a snapshot that do not end up where its identity map puts them: ``{merged id: (where it
    ends up, the customer holding the identifier its id derives from)}``.

    A customer's id derives from its strongest identifier (``customer_id_for``), and a merge moves every
    identifier of the merged customer to the survivor: however the links were discovered, a merged id ends up
    with the customer that holds that identifier at the end.
    """
    holder = {customer_id_for(row["identifier"]): row["customer_id"] for row in snap["identities"]}
    return {m: (s, holder.get(m)) for m, s in final_survivors(snap).items() if holder.get(m) != s}


def test_kill_9_mid_run_ends_exactly_like_an_uninterrupted_run(kafka_url, topic_prefix, tmp_path, workers) -> None:
    base = dict(batch_max_events="50", batch_max_wait="0.05")
    env_a = workers.env(f"sqlite:///{tmp_path / 'a.db'}", topic_prefix, app_id=f"{topic_prefix}a", **base)
    env_b = workers.env(f"sqlite:///{tmp_path / 'b.db'}", topic_prefix, app_id=f"{topic_prefix}b", **base)
    run_cli(env_a, "simulate", "--customers", "800", "--days", "10", "--seed", "11", "--malformed", "0.01")

    # The two runs side by side (their own consumer groups and databases): most of each is waiting.
    workers.start(env_a, name="clean")
    crashed = run_to_completion(workers, env_b, kafka_url, topic_prefix, kills=3, seed=2)
    clean = run_to_completion(workers, env_a, kafka_url, topic_prefix, kills=0, seed=1, started=True)

    expected, got = snapshot(clean), snapshot(crashed)
    # The merge log records the order in which links were discovered, which follows arrival order: which of a
    # person's identifiers first made a customer of their own (the merged ids), and by which path it joined, depend
    # on how the worker's fetches interleaved the partitions and where batches were cut, which a crash changes.
    # What the README promises is where every merged id ends up, and the identity map (compared row for row
    # below): each run's merged ids must end up where its identity map puts them, so the two runs agree on every
    # merged id either of them has. Likewise an overdue-issue alert depends on whether the resolving contact
    # arrived before the watermark passed the due time (see the README).
    ends_a, ends_b = final_survivors(expected), final_survivors(got)
    assert ends_a and ends_b, "both runs merged customers"
    for run, snap in (("clean", expected), ("crashed", got)):
        astray = merged_ids_astray(snap)
        assert not astray, f"{run} run: merged ids not with the customer holding their identifier: {astray}"
    both = ends_a.keys() & ends_b.keys()
    assert {m: ends_a[m] for m in both} == {m: ends_b[m] for m in both}
    for table in ("identity_merges", "alerts"):
        expected.pop(table), got.pop(table)
    difference = snapshot_diff(without_versions(expected), without_versions(got))
    assert not difference, f"a crashed and restarted run must leave exactly the same rows:\n{difference}"

    events = consumed_events(kafka_url, topic_prefix)
    oracle = replay(events, Policies.from_settings(load_settings()))
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
    proxy, via_proxy = through_proxy(postgres_url)
    env = workers.env(via_proxy, topic_prefix, batch_max_events="50")
    run_cli(env, "simulate", "--customers", "500", "--days", "10", "--seed", "21")
    engine = make_engine(postgres_url)  # the test's own view, not through the proxy
    group = env["CXSTREAM_APP_ID"]
    ends = end_offsets(kafka_url, Topics(topic_prefix).channels)
    try:
        worker = workers.start(env)
        wait_until(lambda: applied_count(engine, group) > 0, 60, "the worker to make progress")
        proxy.cut()
        # A COMMIT the proxy forwarded just before the cut is still in the server's socket buffer: PostgreSQL
        # runs it before it reads the end of the stream, so the count may move once right after the cut.
        time.sleep(1.5)
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
    oracle = replay(events, Policies.from_settings(load_settings()))
    rows = snapshot(engine)
    assert {r["event_id"]: r["customer_id"] for r in rows["touchpoints"]} == {
        eid: e.customer_id for eid, e in oracle.entries.items()
    }
    overall = next(r for r in rows["metric_cells"] if r["scope"] == "overall" and r["window"] == "all")
    assert overall["counters"]["touchpoints"] == len(oracle.entries), "every event counted exactly once"
    retries = [line for line in metrics.splitlines() if line.startswith("cxstream_sink_retries_total{")]
    assert retries and float(retries[0].rsplit(" ", 1)[1]) > 0, "the outage shows in the retry counter"


def applied_and_dead(
    engine: Engine, kafka_url: str, prefix: str, group: str, good: list[TouchpointEvent]
) -> tuple[set[str], set[str], list[DeadLetter]]:
    """Once the worker has applied every record: the event ids of the touchpoints stored, those the oracle makes of
    ``good``, and the dead letters on the topic."""
    ends = end_offsets(kafka_url, Topics(prefix).channels)
    wait_until(lambda: caught_up(engine, group, ends), 90, "the worker to apply every record")
    with engine.connect() as conn:
        landed = set(conn.execute(select(t.touchpoints.c.event_id)).scalars())
    expected = set(replay(good, Policies.from_settings(load_settings())).entries)
    return (
        landed,
        expected,
        [DeadLetter.model_validate_json(v) for _, v in read_topic(kafka_url, Topics(prefix).deadletter)],
    )


def test_a_row_the_database_refuses_is_dead_lettered_and_the_rest_lands(
    kafka_url, topic_prefix, postgres_url, workers
) -> None:
    """PostgreSQL enforces column lengths: an event id longer than `touchpoints.event_id` allows is refused for good."""
    from kafka import KafkaProducer

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
    landed, expected, dead = applied_and_dead(engine, kafka_url, topic_prefix, env["CXSTREAM_APP_ID"], good)
    assert expected <= landed and bad.event_id not in landed, "the good records of the batch still land"
    refused = [d for d in dead if d.reason == "sink_rejected"]
    assert len(refused) == 1 and refused[0].original() == bad.model_dump_json().encode()
    permanent = [
        line
        for line in worker.metrics_text().splitlines()
        if line.startswith("cxstream_sink_failures_total{") and 'kind="permanent"' in line
    ]
    assert permanent and float(permanent[0].rsplit(" ", 1)[1]) >= 1


def test_a_parked_event_the_database_refuses_is_dead_lettered_and_stops_nothing(
    kafka_url, topic_prefix, postgres_url, workers
) -> None:
    """A parked event (PostgreSQL) is taken by every batch until one applies it: one the database refuses for good
    is applied alone, dead-lettered and dropped, and the records of the batches that took it still land."""

    env = workers.env(postgres_url, topic_prefix)
    run_cli(env, "publish", "--channel", "web", str(SAMPLES / "web.jsonl"))
    good = consumed_events(kafka_url, topic_prefix)
    bad = good[0].model_copy(update={"event_id": "x" * 100})  # longer than touchpoints.event_id allows
    engine = make_engine(postgres_url, writer=True)
    upgrade(engine)
    with engine.begin() as conn:  # as a batch that found its customer held would have parked it
        conn.execute(
            t.parked_events.insert().values(
                group_id=env["CXSTREAM_APP_ID"],
                occurred_at=bad.occurred_at,
                event_id=bad.event_id,
                topic=Topics(topic_prefix).channel("web"),
                partition=0,
                record_offset=0,
                attempts=1,
                event=bad.model_dump_json().encode(),
            )
        )

    worker = workers.start(env)
    landed, expected, dead = applied_and_dead(engine, kafka_url, topic_prefix, env["CXSTREAM_APP_ID"], good)
    assert expected <= landed and bad.event_id not in landed, "the records of the batch that took it still land"
    assert [(d.reason, d.original()) for d in dead] == [("sink_rejected", bad.model_dump_json().encode())]
    assert worker.is_serving(), "the worker goes on"


def test_database_connections_give_up_on_a_silent_network_within_a_minute(postgres_url: str) -> None:
    """A cut that sends nothing (a dropped route) must fail the worker's call, which it then retries, rather than
    leave it waiting hours for an answer: the libpq keepalive and timeout settings reach every connection. (The cut
    itself needs a network a test cannot drop here: the proxy's kernel answers probes.)"""
    engine = make_engine(postgres_url, writer=True)
    with engine.connect() as conn:
        parameters = conn.connection.dbapi_connection.info.get_parameters()  # type: ignore[union-attr]
    engine.dispose()
    assert {name: parameters.get(name) for name in PG_CONNECTION_TIMEOUTS} == {
        name: str(value) for name, value in PG_CONNECTION_TIMEOUTS.items()
    }
