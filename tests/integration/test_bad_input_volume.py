"""Bad input at volume: 10% garbage in a 50,000-record run, every bad record accounted for, every good one applied."""

from __future__ import annotations

from collections import Counter

from config.topics import Topics
from schemas.deadletter import DeadLetter
from sinks.database import make_engine
from streams.sandbox.journeys import simulate
from tests.support.kafka import read_topic
from tests.support.processes import wait_until
from tests.support.results import prometheus_value, run_cli, wait_applied

SIMULATION = {"customers": 7500, "days": 10, "seed": 13, "malformed": 0.113}


def test_ten_percent_garbage_in_fifty_thousand_records(kafka_url, topic_prefix, sqlite_url, workers) -> None:
    records = list(
        simulate(
            customers=SIMULATION["customers"],
            days=SIMULATION["days"],
            seed=SIMULATION["seed"],
            malformed_rate=SIMULATION["malformed"],
        )
    )
    garbage = Counter(r.raw for r in records if r.kind == "malformed")
    good = len(records) - garbage.total()
    assert len(records) >= 50_000 and 0.095 <= garbage.total() / len(records) <= 0.105

    env = workers.env(sqlite_url, topic_prefix)
    worker = workers.start(env)
    args = [f"--{name}={value}" for name, value in SIMULATION.items()]
    summary = run_cli(env, "simulate", *args).stderr.decode()
    assert f"read {len(records)}, published {good}, dead-lettered {garbage.total()}" in summary

    # The dead-letter topic holds each bad record once, with its original bytes and a reason.
    dead = [
        DeadLetter.model_validate_json(value)
        for _, value in read_topic(
            kafka_url, Topics(topic_prefix).deadletter, until=lambda r: len(r) >= garbage.total(), timeout=60
        )
    ]
    assert Counter(d.original() for d in dead) == garbage
    assert all(d.reason and d.detail and d.channel for d in dead)

    # Prometheus accounts for them too, and for every good record the worker read.
    wait_applied(make_engine(sqlite_url), kafka_url, topic_prefix, env["CXSTREAM_APP_ID"], timeout=180)
    wait_until(
        lambda: prometheus_value(worker.metrics_text(), "cxstream_dead_letters_total") == garbage.total(),
        30,
        "every dead letter to be counted",
    )
    text = worker.metrics_text()
    by_reason = Counter(d.reason for d in dead)
    for reason, count in by_reason.items():
        assert prometheus_value(text, "cxstream_dead_letters_total", reason=reason) == count
    assert prometheus_value(text, "cxstream_events_in_total") == good
