"""Identity stitching end to end: adapters → embedded broker → worker → SQL identities, timelines and merges."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import orjson
from sqlalchemy import func, select

from config.topics import Topics
from schemas.deadletter import DeadLetter
from schemas.touchpoint import IdentifierType
from sinks import tables as t
from sinks.database import make_engine
from sinks.queries import customer_timeline, resolve_customer
from streams.domain.identity import customer_id_for
from streams.sandbox.journeys import PLACEHOLDER_EMAILS, ground_truth
from tests.support.kafka import read_topic
from tests.support.processes import wait_until
from tests.support.results import consumed_events, prometheus_value, run_cli, wait_applied

# 400 persons over a week; this seed has repeat till receipts with placeholder e-mails (checked below).
CUSTOMERS, DAYS, SEED = 400, 7, 59


def test_simulated_population_has_one_customer_per_person(kafka_url, topic_prefix, sqlite_url, workers) -> None:
    env = workers.env(sqlite_url, topic_prefix)
    run_cli(env, "simulate", "--customers", str(CUSTOMERS), "--days", str(DAYS), "--seed", str(SEED))
    worker = workers.start(env)
    engine = make_engine(sqlite_url)
    wait_applied(engine, kafka_url, topic_prefix, env["CXSTREAM_APP_ID"], timeout=90)

    with engine.connect() as conn:
        identities = dict(conn.execute(select(t.identities.c.identifier, t.identities.c.customer_id)).all())
        customers = set(conn.execute(select(t.customers.c.customer_id)).scalars())

    truth = ground_truth(CUSTOMERS, SEED, days=DAYS)
    assert len(truth) == CUSTOMERS and all(truth.values())
    owner: dict[str, str] = {}  # customer id -> the person it belongs to
    for person, keys in sorted(truth.items()):
        missing = sorted(keys - identities.keys())
        assert not missing, f"{person}: identifiers never stored: {missing}"
        ids = {identities[key] for key in keys}
        assert len(ids) == 1, f"{person} is split over customers {sorted(ids)}"
        (customer_id,) = ids
        assert owner.setdefault(customer_id, person) == person, f"{owner[customer_id]} and {person} share {customer_id}"
    assert set(identities) == set().union(*truth.values()), "identities holds exactly the persons' identifiers"
    assert customers == set(owner), "one customer row per person, none left over from merges"

    # Placeholder e-mails typed at the till are never identities, and every one is counted as blocked.
    placeholders = {f"email:{email}" for email in PLACEHOLDER_EMAILS}
    assert not placeholders & identities.keys()
    carrying = [
        e
        for e in consumed_events(kafka_url, topic_prefix)
        if e.identifiers.get(IdentifierType.EMAIL) in PLACEHOLDER_EMAILS
    ]
    assert carrying, f"seed {SEED} no longer produces placeholder e-mails: pick another"
    blocked = prometheus_value(worker.metrics_text(), "cxstream_identifiers_rejected_total", reason="blocked")
    assert blocked == len(carrying)


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def test_merge_combines_both_histories_in_event_time_order(kafka_url, topic_prefix, sqlite_url, workers, tmp_path):
    email, loyalty, anonymous, user = "Ann.Lee@example.org", "LOY-777001", "anon-5e1f", "u-777001"
    store = [
        {"receipt_id": "R-1", "store_id": "LON-OXF", "occurred_at": "2024-05-01T09:00:00+00:00", "kind": "sale",
         "loyalty_id": loyalty, "email": email, "total": "20.00", "currency": "GBP",
         "items": [{"sku": "MUG-1", "qty": 2, "unit_price": "10.00"}]},
        {"visit_id": "V-1", "store_id": "LON-OXF", "occurred_at": "2024-05-01T10:00:00+00:00", "kind": "visit",
         "loyalty_id": loyalty},
        {"receipt_id": "R-2", "store_id": "LON-OXF", "occurred_at": "2024-05-01T11:30:00+00:00", "kind": "sale",
         "loyalty_id": loyalty, "total": "5.00", "currency": "GBP"},
    ]  # fmt: skip
    web = [
        {"type": "page", "messageId": "m-1", "anonymousId": anonymous, "userId": user,
         "timestamp": "2024-05-01T09:30:00Z", "properties": {"path": "/", "title": "Home"}},
        {"type": "track", "messageId": "m-2", "anonymousId": anonymous, "userId": user,
         "timestamp": "2024-05-01T10:30:00Z", "event": "Product Viewed", "properties": {"sku": "MUG-1"}},
        {"type": "page", "messageId": "m-3", "anonymousId": anonymous, "userId": user,
         "timestamp": "2024-05-01T11:00:00Z", "properties": {"path": "/sale", "title": "Sale"}},
    ]  # fmt: skip
    identify = {
        "type": "identify", "messageId": "m-4", "anonymousId": anonymous, "userId": user,
        "timestamp": "2024-05-01T12:00:00Z", "traits": {"email": email},
    }  # fmt: skip

    env = workers.env(sqlite_url, topic_prefix)
    group = env["CXSTREAM_APP_ID"]
    run_cli(env, "publish", "--channel", "store", str(_jsonl(tmp_path / "store.jsonl", store)))
    run_cli(env, "publish", "--channel", "web", str(_jsonl(tmp_path / "web.jsonl", web)))
    workers.start(env)
    engine = make_engine(sqlite_url)
    wait_applied(engine, kafka_url, topic_prefix, group)

    survivor = customer_id_for(f"loyalty_id:{loyalty}")  # the strongest key of the combined customer
    merged = customer_id_for(f"web_user_id:{user}")
    with engine.connect() as conn:
        before = dict(conn.execute(select(t.touchpoints.c.event_id, t.touchpoints.c.customer_id)).all())
        customers = set(conn.execute(select(t.customers.c.customer_id)).scalars())
    assert customers == {survivor, merged}, "two customers before anything links them"
    assert sorted(before.values()) == sorted([survivor] * 3 + [merged] * 3)

    run_cli(env, "publish", "--channel", "web", str(_jsonl(tmp_path / "identify.jsonl", [identify])))
    wait_applied(engine, kafka_url, topic_prefix, group)

    with engine.connect() as conn:
        customers = set(conn.execute(select(t.customers.c.customer_id)).scalars())
        rows = conn.execute(
            select(
                t.touchpoints.c.event_id, t.touchpoints.c.customer_id, t.touchpoints.c.channel, t.touchpoints.c.type
            ).order_by(t.touchpoints.c.occurred_at, t.touchpoints.c.event_id)
        ).all()
        identities = dict(conn.execute(select(t.identities.c.identifier, t.identities.c.customer_id)).all())
        merges = conn.execute(select(t.identity_merges)).mappings().all()
        stale = {
            table.name: conn.scalar(select(func.count()).select_from(table).where(column == merged))
            for table, column in (
                (t.touchpoints, t.touchpoints.c.customer_id),
                (t.identities, t.identities.c.customer_id),
                (t.alerts, t.alerts.c.customer_id),
                (t.metric_cells, t.metric_cells.c.key),
                (t.metrics, t.metrics.c.key),
            )
        }
        lifetime = conn.execute(
            select(t.metric_cells.c.counters).where(
                t.metric_cells.c.scope == "customer", t.metric_cells.c.key == survivor, t.metric_cells.c.window == "all"
            )
        ).scalar_one()

    assert customers == {survivor}
    assert {cid for _, cid, _, _ in rows} == {survivor}, "every touchpoint is on the surviving customer"
    assert set(before) < {eid for eid, _, _, _ in rows}, "both histories kept, the linking event added"
    assert [(channel, kind) for _, _, channel, kind in rows] == [
        ("store", "purchase"),
        ("web", "page_view"),
        ("store", "store_visit"),
        ("web", "product_view"),
        ("web", "page_view"),
        ("store", "purchase"),
        ("web", "identify"),
    ], "one timeline, interleaved in event-time order"
    assert identities == {
        f"loyalty_id:{loyalty}": survivor,
        f"email:{email.lower()}": survivor,
        f"web_anonymous_id:{anonymous}": survivor,
        f"web_user_id:{user}": survivor,
    }
    assert stale == dict.fromkeys(stale, 0), "no row still carries the merged customer id"
    assert lifetime["touchpoints"] == 7, "the merged customer's metric cells moved into the survivor's"

    identify_id = rows[-1][0]
    assert len(merges) == 1
    assert merges[0]["merged_id"] == merged and merges[0]["survivor_id"] == survivor
    assert merges[0]["event_id"] == identify_id

    # The read side finds the combined customer by the e-mail and lists both histories in order.
    found = resolve_customer(engine, email)
    assert found == survivor
    timeline = customer_timeline(engine, survivor)
    assert [row["event_id"] for row in timeline["touchpoints"]] == [eid for eid, _, _, _ in rows]
    assert sorted(timeline["identifiers"]) == sorted(identities)

    # The merge is an event downstream, with its evidence.
    records = read_topic(kafka_url, Topics(topic_prefix).identity, timeout=30)
    assert len(records) == 1
    key, value = records[0]
    change = orjson.loads(value)
    assert key == merged.encode()
    assert (change["kind"], change["merged_id"], change["survivor_id"]) == ("merge", merged, survivor)
    assert change["event_id"] == identify_id
    assert change["identifiers"]["email"] == email.lower()
    assert change["identifiers"]["web_user_id"] == user

    # So does the `timeline` command, by e-mail as typed.
    printed = orjson.loads(run_cli(env, "timeline", email, "--json").stdout)
    assert printed["customer_id"] == survivor
    assert [row["event_id"] for row in printed["touchpoints"]] == [eid for eid, _, _, _ in rows]
    times = [datetime.fromisoformat(row["occurred_at"]) for row in printed["touchpoints"]]
    assert times == sorted(times) and len(times) == 7


def test_a_record_reusing_an_applied_event_id_for_someone_else_is_dead_lettered(
    kafka_url, topic_prefix, sqlite_url, workers, tmp_path
) -> None:
    # A phone call's event id is derived from its call id: a source that reuses call ids (or a third-party
    # producer with colliding ids) sends another person's call under an id already applied. Applying it too
    # would count it in the metrics while its touchpoint row overwrote the first one's.
    def call(phone: str, at: str) -> dict:
        return {"call_id": "C-1", "occurred_at": f"2024-05-01T{at}:00Z", "phone": phone, "direction": "inbound",
                "queue": "billing", "duration_seconds": 60, "reason": "billing_query", "resolved": True}  # fmt: skip

    env = workers.env(sqlite_url, topic_prefix)
    group = env["CXSTREAM_APP_ID"]
    # Whichever record is applied first holds the id; records published together may be read in either order
    # (they are keyed by phone number), so the impostors come once the first is committed.
    first, impostors = "+447700900101", ["+447700900102", "+447700900103"]
    run_cli(env, "publish", "--channel", "phone", str(_jsonl(tmp_path / "first.jsonl", [call(first, "09:00")])))
    worker = workers.start(env)
    engine = make_engine(sqlite_url)
    wait_applied(engine, kafka_url, topic_prefix, group)
    calls = [call(phone, f"09:0{n}") for n, phone in enumerate(impostors, 5)]
    run_cli(env, "publish", "--channel", "phone", str(_jsonl(tmp_path / "impostors.jsonl", calls)))
    wait_applied(engine, kafka_url, topic_prefix, group)

    owner = customer_id_for(f"phone:{first}")
    with engine.connect() as conn:
        touchpoints = conn.execute(select(t.touchpoints.c.event_id, t.touchpoints.c.customer_id)).all()
        customers = set(conn.execute(select(t.customers.c.customer_id)).scalars())
        contacts = conn.scalar(select(func.sum(t.customers.c.contacts)))
    assert [cid for _, cid in touchpoints] == [owner]
    assert customers == {owner}
    assert contacts == 1

    letters = read_topic(kafka_url, Topics(topic_prefix).deadletter, until=lambda records: len(records) >= 2)
    dead = [DeadLetter.model_validate_json(v) for _, v in letters]
    assert [(d.reason, d.stage, d.channel) for d in dead] == [("event_id_conflict", "worker", "phone")] * 2
    assert sorted(orjson.loads(d.original())["identifiers"]["phone"] for d in dead) == impostors
    assert all(owner in d.detail for d in dead)
    wait_until(
        lambda: prometheus_value(worker.metrics_text(), "cxstream_dead_letters_total", reason="event_id_conflict") == 2,
        30,
        "the dead letters to be counted",
    )
