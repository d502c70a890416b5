"""The README's consumer examples (examples/consumers.py) fold each output topic into what the database holds.

The outputs are a simulated population's, made by the batch processor as a worker makes them (with one batch's
records sent twice, as a worker does after a crash between publishing and deleting its outbox row), published to
the real broker; each example reads its topic back and must agree with the results tables.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from types import ModuleType

from kafka import KafkaProducer
from sqlalchemy import select

from config.settings import load_settings
from config.topics import Topics
from sinks import tables as t
from sinks.database import make_engine, upgrade
from sinks.sql import SqlSink
from streams.downstream import OutboxPayload
from streams.kafka import ensure_topics
from streams.pipeline import BatchProcessor, InRecord
from tests.support.population import raw_events

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "consumers.py"


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("consumers_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_topics_example_agrees_with_the_results_tables(kafka_url: str, topic_prefix: str, tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path}/results.db"
    # Experience drops on every few answers (the population is small): what is tested is the topic's rule.
    settings = load_settings(
        kafka_url=kafka_url,
        topic_prefix=topic_prefix,
        database_url=database_url,
        experience_drop_min_answers=1,
        experience_drop_min_z=0,
    )
    ensure_topics(settings)
    engine = make_engine(database_url, writer=True)
    upgrade(engine)
    processor = BatchProcessor(settings, SqlSink(engine))
    topics = Topics(topic_prefix)
    values = [(topics.channel(e.channel), e.model_dump_json().encode()) for e in raw_events()]
    values.append((topics.channel("web"), b"{not json"))
    offsets: Counter[str] = Counter()
    records = []
    for topic, value in values:
        records.append(InRecord(topic, 0, offsets[topic], value))
        offsets[topic] += 1
    producer = KafkaProducer(bootstrap_servers=kafka_url.split("://")[-1], acks="all")
    outboxes = [processor.process(records[i : i + 200]).outbox for i in range(0, len(records), 200)]
    assert all(outboxes)
    # The second batch's records twice in a row: a worker that crashed after publishing them, before deleting its
    # outbox row, publishes them again at start, before any later batch.
    for outbox in [outboxes[0], outboxes[1], *outboxes[1:]]:
        assert outbox is not None
        for topic, key, value, _route in OutboxPayload(outbox).records():
            producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()

    example = _example()
    read = {name: example.FOLDS[name](example.read_topic(kafka_url, f"{topic_prefix}{name}")) for name in example.FOLDS}
    with engine.connect() as conn:
        customers = {row.customer_id: row for row in conn.execute(select(t.customers))}
        touchpoints = set(conn.scalars(select(t.touchpoints.c.event_id)))
        alerts = set(conn.scalars(select(t.alerts.c.alert_id)))
        drops = dict(conn.execute(select(t.experience_alerts.c.alert_id, t.experience_alerts.c.status)).all())
        merges = dict(conn.execute(select(t.identity_merges.c.merged_id, t.identity_merges.c.survivor_id)).all())
        figures = {
            (row.scope, row.key, row.metric, row.window, row.window_start.replace(tzinfo=None)): row.value
            for row in conn.execute(select(t.metrics))
        }
    profiles = read["profiles"]
    assert profiles.keys() == customers.keys()
    assert all(profiles[c]["events"] == customers[c].events for c in customers)
    assert read["timeline"].keys() >= touchpoints
    assert read["alerts"].keys() == alerts
    assert drops and {a: v["status"] for a, v in read["experience-alerts"].items()} == drops
    assert set(read["identity"].values()) <= customers.keys() and read["identity"].keys() == merges.keys()
    current = {
        (v["scope"], v["key"], metric, v["window"], _naive(v["window_start"])): figure["value"]
        for v in read["metrics"].values()
        for metric, figure in v["figures"].items()
    }
    # No more than the view either: a merged customer's cells, folded into its survivor's, were tombstoned.
    assert merges and not any(key[1] in merges for key in current)
    assert current == figures, "highest revisions equal the metrics view"
    assert read["deadletter"] == {"invalid_json": 1}

    env = {**os.environ, "CXSTREAM_KAFKA_URL": kafka_url, "CXSTREAM_TOPIC_PREFIX": topic_prefix}
    shown = subprocess.run([sys.executable, str(EXAMPLE), "alerts"], env=env, capture_output=True, timeout=60)
    assert shown.returncode == 0, shown.stderr.decode()
    assert json.loads(shown.stdout).keys() == alerts


def _naive(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=None)


def test_the_metrics_example_skips_the_per_figure_records_of_earlier_versions() -> None:
    cell = {"scope": "overall", "key": "all", "revision": 3, "figures": {"touchpoints": {"value": 3.0, "revision": 3}}}
    legacy = {"scope": "overall", "key": "all", "metric": "touchpoints", "value": 2.0, "revision": 2}
    folded = _example().fold_metrics([(b"overall|all|touchpoints|all|1970", legacy), (b"overall|all|all|1970", cell)])
    assert folded == {b"overall|all|all|1970": cell}


def test_the_examples_forget_what_an_erasure_tombstoned() -> None:
    # A snapshot read before compaction sees the erased person's records, then their tombstones.
    example = _example()
    profile = {"customer_id": "c-1", "events": 3}
    assert example.fold_profiles([(b"c-1", profile), (b"c-2", {**profile, "customer_id": "c-2"}), (b"c-1", None)]) == {
        "c-2": {**profile, "customer_id": "c-2"}
    }
    cell = {"scope": "customer", "key": "c-1", "revision": 1, "figures": {"touchpoints": {"value": 1.0}}}
    assert example.fold_metrics([(b"customer|c-1|all|1970", cell), (b"customer|c-1|all|1970", None)]) == {}
