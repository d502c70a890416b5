"""The whole job with real parts: adapters → a broker (embedded and Apache Kafka) → worker → SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from config.settings import load_settings
from config.topics import Topics
from sinks import tables as t
from sinks.database import make_engine
from streams.domain.oracle import replay
from streams.policies import Policies
from tests.support.processes import wait_until
from tests.support.results import caught_up, consumed_events, end_offsets, prometheus_value, run_cli

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


@pytest.mark.conformance
def test_sample_files_flow_from_kafka_into_sql(
    kafka_url: str, topic_prefix: str, database_url: str, workers, request: pytest.FixtureRequest
) -> None:
    """The wiring: a Faust agent of the project's app consumes the broker and writes rows on both databases."""
    # The sample files are published one after another, so their events arrive far out of event-time order.
    env = workers.env(database_url, topic_prefix)
    for sample in sorted(SAMPLES.iterdir()):
        run_cli(env, "publish", "--channel", sample.name.split(".")[0], str(sample))
    worker = workers.start(env)

    engine = make_engine(database_url)
    ends = end_offsets(kafka_url, Topics(topic_prefix).channels)
    wait_until(lambda: caught_up(engine, f"{topic_prefix}app", ends), 90, "the worker to apply every record")

    events = consumed_events(kafka_url, topic_prefix)
    oracle = replay(events, Policies.from_settings(load_settings(database_url=database_url)))
    with engine.connect() as conn:
        touchpoints = dict(conn.execute(select(t.touchpoints.c.event_id, t.touchpoints.c.customer_id)).all())
        customers = set(conn.execute(select(t.customers.c.customer_id)).scalars())
        identities = dict(conn.execute(select(t.identities.c.identifier, t.identities.c.customer_id)).all())
        metrics = conn.scalar(select(func.count()).select_from(t.metrics))
    assert touchpoints == {eid: entry.customer_id for eid, entry in oracle.entries.items()}
    assert customers == set(oracle.profiles)
    assert identities == oracle.identities
    assert metrics and metrics > 0
    assert "cxstream_events_in_total" in worker.metrics_text()
    # Output transactions by default exactly where the broker grants them.
    transactional = prometheus_value(worker.metrics_text(), "cxstream_outputs_transactional")
    assert transactional == (1 if "apache-kafka" in request.node.name else 0)
