"""Experience metrics end to end: survey answers → worker → SQL `metrics` rows and the metrics topic."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from sqlalchemy import select

from config.settings import load_settings
from config.topics import Topics
from schemas.deadletter import DeadLetter
from schemas.outputs import MetricScope
from schemas.touchpoint import Channel, derive_event_id
from sinks import tables as t
from sinks.database import make_engine
from streams.domain.aggregate import MetricAggregator
from streams.domain.oracle import replay
from streams.policies import Policies
from tests.support.kafka import read_topic
from tests.support.processes import wait_until
from tests.support.results import consumed_events, prometheus_value, run_cli, wait_applied, wait_settled

# Simulated traffic is read from 16 partitions in an order that differs from run to run: a generous lateness
# keeps too-late decisions out of the comparison with the oracle (part (b) tests lateness on purpose).
SURVEY_METRICS = ("nps", "csat")


def utc(ts: datetime) -> datetime:
    """SQLite gives naive datetimes back: they are UTC."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def test_daily_nps_and_csat_per_channel_equal_the_oracle(kafka_url, topic_prefix, sqlite_url, workers) -> None:
    env = workers.env(sqlite_url, topic_prefix)
    run_cli(env, "simulate", "--customers", "400", "--days", "7", "--seed", "23")
    workers.start(env)
    engine = make_engine(sqlite_url)
    wait_applied(engine, kafka_url, topic_prefix, env["CXSTREAM_APP_ID"], timeout=90)

    # Expected: the consumed events replayed in event-time order, their final entries aggregated in one go.
    settings = load_settings()
    policies = Policies.from_settings(settings)
    oracle = replay(consumed_events(kafka_url, topic_prefix), policies)
    aggregator = MetricAggregator(policies.metrics)
    for entry in oracle.entries.values():
        aggregator.add(entry)
    expected = {
        (row.scope.value, row.key, row.metric, row.window_start): (row.numerator, row.denominator, row.value)
        for record in aggregator.updates({}).updates
        for row in record.rows()
        if row.scope in (MetricScope.CHANNEL, MetricScope.OVERALL)
        and row.window == "1d"
        and row.metric in SURVEY_METRICS
    }

    m = t.metrics.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(m.scope, m.key, m.metric, m.window_start, m.numerator, m.denominator, m.value).where(
                m.scope.in_(["channel", "overall"]), m.window == "1d", m.metric.in_(SURVEY_METRICS)
            )
        ).all()
    got = {(scope, key, metric, utc(start)): (num, den, value) for scope, key, metric, start, num, den, value in rows}

    # The run must be rich enough to mean something: several days, channels and both metrics.
    assert len({start for _, _, _, start in expected}) >= 5
    assert {key for scope, key, _, _ in expected if scope == "channel"} >= {"store", "phone", "web"}
    assert {metric for _, _, metric, _ in expected} == set(SURVEY_METRICS)
    assert got == expected


# --- lateness: revisions within the allowed lateness, dead letters beyond it ------------------------------------

DAY = "2024-06-03"  # day D; the allowed lateness is the default 3 days
CELL_KEY = f"channel|phone|1d|{DAY}T00:00:00+00:00".encode()


def _call(call_id: str, at: str, phone: str, nps: int | None = None) -> dict:
    call = {
        "call_id": call_id,
        "occurred_at": at,
        "phone": phone,
        "direction": "inbound",
        "queue": "billing",
        "duration_seconds": 240,
        "reason": "billing_query",
        "issue_id": f"CASE-{call_id}",
        "resolved": True,
    }
    if nps is not None:
        call["survey"] = {"nps": nps}
    return call


def test_late_answers_revise_the_figure_even_once_final_and_an_age_bound_is_opt_in(
    kafka_url, topic_prefix, sqlite_url, workers, tmp_path: Path
) -> None:
    env = workers.env(sqlite_url, topic_prefix)  # defaults: no age bound, windows final 3 days after their end
    group = env["CXSTREAM_APP_ID"]
    engine = make_engine(sqlite_url)

    def publish(name: str, *calls: dict, settle: bool = True) -> None:
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(b"".join(orjson.dumps(c) + b"\n" for c in calls))
        run_cli(env, "publish", "--channel", "phone", str(path))
        if settle:  # every partition idle again: the watermark is the latest call's time
            wait_settled(engine, kafka_url, topic_prefix, group)

    def figure() -> dict:
        m = t.metrics.c
        with engine.connect() as conn:
            row = (
                conn.execute(
                    select(t.metrics).where(
                        m.scope == "channel",
                        m.key == "phone",
                        m.metric == "nps",
                        m.window == "1d",
                        m.window_start == datetime.fromisoformat(f"{DAY}T00:00:00+00:00"),
                    )
                )
                .mappings()
                .one()
            )
        return {k: row[k] for k in ("numerator", "denominator", "value", "status", "revision")}

    # Two promoters on day D.
    publish(
        "promoters",
        _call("C-1", f"{DAY}T10:00:00Z", "+447700900101", nps=9),
        _call("C-2", f"{DAY}T11:00:00Z", "+447700900102", nps=10),
        settle=False,
    )
    worker = workers.start(env)
    wait_settled(engine, kafka_url, topic_prefix, group)
    first = figure()
    assert first == {"numerator": 2, "denominator": 2, "value": 100.0, "status": "provisional", "revision": 2}

    # Day D+1 moves the watermark on; then a detractor of day D arrives, a day and a half late.
    publish("next_day", _call("C-3", "2024-06-04T12:00:00Z", "+447700900103"))
    publish("late", _call("C-4", f"{DAY}T15:00:00Z", "+447700900104", nps=3))
    revised = figure()
    assert revised["revision"] > first["revision"]
    assert (revised["numerator"], revised["denominator"], revised["status"]) == (1, 3, "provisional")
    assert revised["value"] == pytest.approx(100 / 3)
    assert prometheus_value(worker.metrics_text(), "cxstream_late_events_total", outcome="accepted") == 1

    # Day D+4 takes the watermark past day D's end + 3 days: the figure is final.
    publish("final", _call("C-5", "2024-06-07T12:00:00Z", "+447700900105"))
    final = figure()
    assert final == {**revised, "status": "final", "revision": revised["revision"] + 1}

    # A detractor of day D arriving now is not lost: it revises the final figure, which stays final.
    publish("later_still", _call("C-6", f"{DAY}T16:00:00Z", "+447700900106", nps=0))
    corrected = figure()
    assert (corrected["numerator"], corrected["denominator"], corrected["status"]) == (0, 4, "final")
    assert corrected["revision"] > final["revision"]

    # An age bound is the user's choice: with one, an answer older than the watermark minus the bound is
    # dead-lettered as too_late, counted, and the figure does not move.
    worker.stop()
    env["CXSTREAM_MAX_EVENT_AGE_S"] = str(3 * 86400)
    worker = workers.start(env)
    publish("too_late", _call("C-7", f"{DAY}T17:00:00Z", "+447700900107", nps=0))
    assert figure() == corrected
    too_late_id = derive_event_id(Channel.PHONE, "C-7")
    with engine.connect() as conn:
        assert conn.scalar(select(t.touchpoints.c.event_id).where(t.touchpoints.c.event_id == too_late_id)) is None
    assert prometheus_value(worker.metrics_text(), "cxstream_late_events_total", outcome="too_late") == 1
    dead = [DeadLetter.model_validate_json(v) for _, v in read_topic(kafka_url, Topics(topic_prefix).deadletter)]
    assert [(d.reason, d.stage, d.channel) for d in dead] == [("too_late", "worker", "phone")]
    assert orjson.loads(dead[0].original())["event_id"] == too_late_id
    wait_until(
        lambda: prometheus_value(worker.metrics_text(), "cxstream_dead_letters_total", reason="too_late") == 1,
        30,
        "the dead letter to be counted",
    )

    # Downstream, the cell's key carries each revision: 100 while provisional, then the corrected 33.3, then final.
    cells = [orjson.loads(v) for k, v in read_topic(kafka_url, Topics(topic_prefix).metrics) if k == CELL_KEY]
    assert [c["revision"] for c in cells] == sorted({c["revision"] for c in cells}), "a cell's revision only grows"
    assert all(c["revision"] == sum(f["revision"] for f in c["figures"].values()) for c in cells)
    published = [{**c["figures"]["nps"], "status": c["status"]} for c in cells if "nps" in c["figures"]]
    by_revision = {r["revision"]: (r["value"], r["denominator"], r["status"]) for r in published}
    assert by_revision[first["revision"]] == (100.0, 2, "provisional")
    assert by_revision[revised["revision"]] == (pytest.approx(100 / 3), 3, "provisional")
    assert by_revision[final["revision"]] == (pytest.approx(100 / 3), 3, "final")
    assert by_revision[corrected["revision"]] == (0.0, 4, "final")
    assert max(by_revision) == corrected["revision"]
    assert all(r["denominator"] <= 4 for r in published), "the too-late answer never reached the figure"
    assert [r["revision"] for r in published] == sorted(r["revision"] for r in published)
