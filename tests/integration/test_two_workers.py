"""Two workers in one consumer group share the partitions and end exactly where one worker does."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from config.settings import load_settings
from config.topics import Topics
from sinks import tables as t
from sinks.database import make_engine
from streams.domain.oracle import replay
from streams.policies import Policies
from tests.support.processes import wait_until
from tests.support.results import caught_up, consumed_events, end_offsets, overall_counters, run_cli


@pytest.mark.conformance
def test_two_workers_on_postgresql_give_the_results_of_one(kafka_url, topic_prefix, postgres_url, workers) -> None:
    env = workers.env(postgres_url, topic_prefix, batch_max_events="200")
    first = workers.start(env, name="worker-1")
    second = workers.start(env, name="worker-2")
    # The second worker's join rebalances the group; both hold partitions before anything is published, or the
    # first could apply everything before the second joins (Apache Kafka joins at once, the input takes seconds).
    assigned = lambda: all("cxstream_consumer_lag_records{" in w.metrics_text() for w in (first, second))  # noqa: E731
    wait_until(assigned, 60, "both workers to be assigned partitions")
    run_cli(env, "simulate", "--customers", "600", "--days", "7", "--seed", "31")
    engine = make_engine(postgres_url)
    ends = end_offsets(kafka_url, Topics(topic_prefix).channels)
    wait_until(lambda: caught_up(engine, env["CXSTREAM_APP_ID"], ends), 180, "both workers to apply every record")

    applied_by = [w.metrics_text() for w in (first, second)]
    assert all("cxstream_events_in_total{" in text for text in applied_by), "both workers took partitions"

    oracle = replay(consumed_events(kafka_url, topic_prefix), Policies.from_settings(load_settings()))
    with engine.connect() as conn:
        touchpoints = dict(conn.execute(select(t.touchpoints.c.event_id, t.touchpoints.c.customer_id)).all())
        customers = set(conn.execute(select(t.customers.c.customer_id)).scalars())
        identities = dict(conn.execute(select(t.identities.c.identifier, t.identities.c.customer_id)).all())
        overall = overall_counters(conn)
    assert touchpoints == {eid: e.customer_id for eid, e in oracle.entries.items()}
    assert customers == set(oracle.profiles)
    assert identities == oracle.identities
    assert overall["touchpoints"] == len(oracle.entries)
