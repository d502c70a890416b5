"""A worker starting while another worker's outbox transaction is open (that worker was killed while publishing, and
the broker keeps the transaction open until its timeout) applies its records at once, on Apache Kafka."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from kafka import KafkaProducer

from config.settings import load_settings
from config.topics import Topics
from sinks.database import make_engine
from streams.downstream import transactional_id
from streams.kafka import ensure_topics
from tests.support.results import end_offsets, run_cli, wait_applied

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


@pytest.mark.apache_kafka
@pytest.mark.parametrize("kafka_url", ["apache-kafka"], indirect=True)
def test_a_worker_starting_beside_a_dead_workers_open_transaction_applies_at_once(
    kafka_url: str, topic_prefix: str, sqlite_url: str, workers
) -> None:
    """Found as a flake of the rebalance test: a new worker read the outbox commit markers up to the end of their
    topic before it applied anything, so it waited for the killed worker's transaction to time out (a minute and
    more) although it had no outbox rows of its own to check."""
    env = workers.env(sqlite_url, topic_prefix, output_transactions="on")
    group = env["CXSTREAM_APP_ID"]
    ensure_topics(load_settings(kafka_url=kafka_url, topic_prefix=topic_prefix))
    run_cli(env, "publish", "--channel", "web", str(SAMPLES / "web.jsonl"))
    # worker-9 was killed in the middle of publishing an outbox row: its transaction stays open.
    dead = KafkaProducer(
        bootstrap_servers=[kafka_url.split("://", 1)[1]],
        transactional_id=transactional_id(group, "worker-9"),
        transaction_timeout_ms=120_000,
    )
    try:
        dead.init_transactions()
        dead.begin_transaction()
        marker = (orjson.dumps([group, "worker-9"]), orjson.dumps(["some-database", 7]))
        dead.send(Topics(topic_prefix).outbox_commits, key=marker[0], value=marker[1]).get(timeout=30)

        started = time.monotonic()
        workers.start(env)
        wait_applied(make_engine(sqlite_url), kafka_url, topic_prefix, group, timeout=30)
        assert time.monotonic() - started < 30
        assert end_offsets(kafka_url, Topics(topic_prefix).channels), "the records were there to apply"
    finally:
        dead.abort_transaction()
        dead.close()
