"""``cxstream erase`` against a running worker and the broker: tombstones on the compacted output topics, the
suppression entries on their topic, and a worker replaying the input topics into a fresh database that leaves the
erased person out (it reads the entries at start)."""

from __future__ import annotations

from pathlib import Path

import orjson
import requests
from sqlalchemy import func, select

from config.topics import Topics
from sinks import tables as t
from sinks.database import make_engine
from tests.support.kafka import read_topic
from tests.support.population import SALT, fill
from tests.support.processes import wait_until
from tests.support.read_api import READ_KEY, read_api
from tests.support.results import prometheus_value, run_cli, wait_applied

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


def test_erase_publishes_tombstones_and_a_fresh_database_replaying_the_topics_leaves_the_person_out(
    kafka_url: str, topic_prefix: str, sqlite_url: str, tmp_path: Path, workers
) -> None:
    env = workers.env(sqlite_url, topic_prefix)
    for sample in sorted(SAMPLES.glob("*.jsonl")):
        run_cli(env, "publish", "--channel", sample.name.split(".")[0], str(sample))
    worker = workers.start(env)
    engine = make_engine(sqlite_url)
    wait_applied(engine, kafka_url, topic_prefix, f"{topic_prefix}app")
    i = t.identities.c
    with engine.connect() as conn:
        customer_id, email = conn.execute(
            select(i.customer_id, i.id_value).where(i.id_type == "email").order_by(i.customer_id).limit(1)
        ).one()
        keys = conn.scalar(select(func.count()).where(i.customer_id == customer_id))
        events = set(
            conn.execute(select(t.touchpoints.c.event_id).where(t.touchpoints.c.customer_id == customer_id)).scalars()
        )
    assert events

    out = run_cli(env, "erase", f"email:{email.upper()}", "--reason", "Art. 17 request", "--json")
    report = orjson.loads(out.stdout)
    assert report["customer_id"] == customer_id and report["suppressed_identifiers"] == keys
    assert report["touchpoints"] == len(events) and report["unpublished_before"] == 0

    topics = Topics(topic_prefix)
    suppressions = read_topic(kafka_url, topics.suppressions, timeout=10)
    assert len({key for key, _ in suppressions}) == keys
    assert not any(email.encode() in (value or b"") for _, value in suppressions)
    profiles = read_topic(kafka_url, topics.profiles, timeout=10)
    latest = {key: value for key, value in profiles}
    assert customer_id.encode() in latest and latest[customer_id.encode()] is None, "the profile's tombstone is last"
    metrics = read_topic(kafka_url, topics.metrics, timeout=10)
    mine = {key: value for key, value in metrics if key and key.startswith(f"customer|{customer_id}|".encode())}
    assert mine and all(value is None for value in mine.values()), "every per-customer figure ends in a tombstone"
    assert f"customer|{customer_id}|all|1970-01-01T00:00:00+00:00".encode() in mine, "the cell's own key among them"
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).where(t.customers.c.customer_id == customer_id)) == 0
        erasures = select(t.audit_log.c.actor).where(t.audit_log.c.action == "erasure")
        assert conn.execute(erasures).scalar_one().startswith("cli")
    worker.stop()

    # Another database and consumer group: the input topics from offset 0, the erasure learned from its topic.
    fresh_url = f"sqlite:///{tmp_path / 'fresh.db'}"
    fresh_env = workers.env(fresh_url, topic_prefix, app_id=f"{topic_prefix}fresh")
    fresh_worker = workers.start(fresh_env, name="worker-fresh")
    fresh = make_engine(fresh_url)
    wait_applied(fresh, kafka_url, topic_prefix, f"{topic_prefix}fresh")
    with fresh.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(t.suppressions)) == keys
        assert conn.scalar(select(func.count()).where(t.touchpoints.c.event_id.in_(events))) == 0
        assert conn.scalar(select(func.count()).where(i.id_value == email)) == 0
        assert conn.scalar(select(func.count()).select_from(t.customers)) > 0
    wait_until(
        lambda: prometheus_value(fresh_worker.metrics_text(), "cxstream_suppressed_events_total") >= len(events),
        30,
        "the fresh worker to count the erased person's events as suppressed",
    )
    after = read_topic(kafka_url, topics.profiles, timeout=10)
    assert {key: value for key, value in after}[customer_id.encode()] is None, "the fresh worker did not republish"


def test_the_read_api_erases_with_an_admin_key_only(
    kafka_url: str, topic_prefix: str, sqlite_url: str, tmp_path: Path
) -> None:
    fill(sqlite_url, hashing=True)
    engine = make_engine(sqlite_url)
    i = t.identities.c
    with engine.begin() as conn:
        conn.execute(
            t.outbox.delete()
        )  # published, as a running worker would have: nothing for the erasure to wait for
        customer_id = conn.execute(select(i.customer_id).order_by(i.customer_id).limit(1)).scalar_one()
    settings = {
        "kafka_url": kafka_url,
        "topic_prefix": topic_prefix,
        "admin_keys": "admin-key",
        "identifier_salt": SALT,
    }
    with read_api(sqlite_url, tmp_path / "api.log", hashing=True, **settings) as base:
        url = f"{base}/v1/erasures"
        body = {"ref": customer_id, "reason": "ticket 42"}
        assert requests.post(url, json=body, auth=(READ_KEY, ""), timeout=10).status_code == 401, (
            "a read key does not erase"
        )
        assert requests.post(url, json=body, timeout=10).status_code == 401
        bad = requests.post(url, json={**body, "mode": "forget"}, auth=("admin-key", ""), timeout=10)
        assert bad.status_code == 400 and "mode" in bad.json()["error"]
        assert requests.post(url, json={"ref": "c-nobody"}, auth=("admin-key", ""), timeout=10).status_code == 404
        done = requests.post(url, json=body, auth=("admin-key", ""), timeout=60)
        assert done.status_code == 200, done.text
        assert done.json()["customer_id"] == customer_id and done.json()["touchpoints"] > 0
        assert requests.get(f"{base}/v1/customers/{customer_id}", auth=(READ_KEY, ""), timeout=10).status_code == 404
        assert "/v1/erasures" in requests.get(f"{base}/openapi.json", timeout=10).json()["paths"]
    with engine.connect() as conn:
        erasures = select(t.audit_log.c.actor, t.audit_log.c.reason).where(t.audit_log.c.action == "erasure")
        actor, reason = conn.execute(erasures).one()
    assert actor.startswith("api:") and "admin-key" not in actor and reason == "ticket 42"
