"""Alerts on the whole, through the worker's batches on SQL: a simulated channel that degrades halfway through
fires experience-drop alerts and the same run without the degradation fires none; what is stored and published
is what the stored cells decide (``streams.domain.experience_drops.firing``); late answers resolve an alert."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import select
from sqlalchemy.engine import Engine

from config.settings import Settings, load_settings
from schemas.outputs import ExperienceDropAlert
from schemas.touchpoint import Channel, EventType, IdentifierType, SourceRef, SurveyAnswers, TouchpointEvent
from sinks import tables as t
from sinks.contract import cell_key
from sinks.database import make_engine, upgrade
from sinks.sql import as_utc, current_experience_drops
from streams.adapters.reader import convert_one
from streams.domain import experience_drops
from streams.pipeline import InRecord
from streams.policies import Policies
from streams.sandbox.journeys import simulate
from tests.support.population import worker_processor
from tests.support.read_api import READ_KEY, read_api

#: A business already running when tracking begins (``warmup_days``: no cold start of everyone's journey, which
#: is a trend in its own right), about 2,000 events a day over 16 days. Defaults for every alert setting.
CUSTOMERS, DAYS, WARMUP, SEED = 4000, 16, 14, 3
TOPIC = "cx.experience-alerts"
DAY = 86400


def simulated(degrade: str | None) -> list[InRecord]:
    out = []
    for n, rec in enumerate(
        simulate(customers=CUSTOMERS, days=DAYS, seed=SEED, degrade=degrade, warmup_days=WARMUP), 1
    ):
        event = getattr(convert_one(Channel(rec.channel), rec.raw, source_file="simulate", line=n), "event", None)
        if event is not None:
            out.append(InRecord("cx.touchpoints.all", 0, n, event.model_dump_json().encode()))
    return out


def run(settings: Settings, batches: Iterable[list[InRecord]]) -> tuple[Engine, list[ExperienceDropAlert]]:
    """Apply the batches as a worker does; return the database and the experience alerts published."""
    engine, processor = worker_processor(settings)
    published = []
    for batch in batches:
        report = processor.process(batch)
        published += [
            ExperienceDropAlert.model_validate_json(value)
            for topic, _, value, _ in report.outputs.records
            if topic == TOPIC
        ]
    return engine, published


def in_batches(items: list[InRecord], size: int) -> list[list[InRecord]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def stored(engine: Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        return {row.alert_id: row._asdict() for row in conn.execute(select(t.experience_alerts))}


def decided_from_cells(settings: Settings, engine: Engine) -> set[str]:
    """The alerts the stored cells decide, all at once (the batch oracle of the worker's decisions)."""
    policy = Policies.from_settings(settings).drops
    assert policy is not None
    c = t.metric_cells.c
    with engine.connect() as conn:
        rows = conn.execute(select(c.scope, c.key, c.window, c.window_start, c.counters).where(c.scope != "customer"))
        cells = {cell_key(scope, key, window, as_utc(start)): counters for scope, key, window, start, counters in rows}
    return set(experience_drops.firing(cells, policy))


def latest(published: list[ExperienceDropAlert]) -> dict[str, ExperienceDropAlert]:
    """What a consumer of the compacted topic holds: the last record of each alert."""
    return {alert.alert_id: alert for alert in published}


def test_a_channel_that_degrades_halfway_through_fires_and_the_same_run_without_it_does_not(tmp_path: Any) -> None:
    settings = load_settings(database_url=f"sqlite:///{tmp_path / 'degraded.db'}")
    engine, published = run(settings, in_batches(simulated("phone"), 500))
    rows = stored(engine)
    firing = {alert_id: row for alert_id, row in rows.items() if row["status"] == "firing"}
    assert set(firing) == decided_from_cells(settings, engine)
    assert {alert_id: a.status for alert_id, a in latest(published).items()} == {
        alert_id: row["status"] for alert_id, row in rows.items()
    }
    halfway = datetime(2024, 3, 4, tzinfo=UTC) + timedelta(days=DAYS / 2)
    # The phone channel's first-contact resolution, and nothing on the channels that did not degrade.
    assert any(row["key"] == "phone" and row["metric"] == "fcr" for row in firing.values())
    assert {row["key"] for row in firing.values()} <= {"phone", "all"}
    assert all(as_utc(row["window_start"]) >= halfway for row in firing.values())
    assert all(row["answers"] >= 30 and row["z"] >= 3 for row in firing.values())

    calm = load_settings(database_url=f"sqlite:///{tmp_path / 'calm.db'}")
    engine, published = run(calm, in_batches(simulated(None), 500))
    assert stored(engine) == {} and published == []
    assert decided_from_cells(calm, engine) == set()


T0 = datetime(2026, 11, 2, tzinfo=UTC)


def answer(n: int, day: int, csat: int) -> TouchpointEvent:
    at = T0 + timedelta(days=day, minutes=n)
    return TouchpointEvent(
        event_id=f"survey-{day}-{n}",
        channel=Channel.WEB,
        type=EventType.SURVEY,
        occurred_at=at,
        received_at=at,
        identifiers={IdentifierType.WEB_ANONYMOUS_ID: f"visitor-{day}-{n}"},
        source=SourceRef(system="test", id=f"{day}-{n}"),
        survey=SurveyAnswers(csat=csat),
    )


def test_an_alert_fires_on_a_bad_day_and_late_good_answers_resolve_it(database_url: str, tmp_path: Path) -> None:
    settings = load_settings(
        database_url=database_url,
        experience_drop_baseline_windows=1,
        experience_drop_min_answers=6,
        experience_drop_margins={"csat": 15.0},
    )
    good_day = [answer(n, 0, 5 if n % 5 else 3) for n in range(10)]  # 80% satisfied
    bad_day = [answer(n, 1, 1) for n in range(6)]
    late_good = [answer(n, 1, 5) for n in range(6, 60)]
    events = good_day + bad_day
    items = [InRecord("cx.touchpoints.web", 0, n, e.model_dump_json().encode()) for n, e in enumerate(events)]
    later = [
        InRecord("cx.touchpoints.web", 0, len(items) + n, e.model_dump_json().encode()) for n, e in enumerate(late_good)
    ]
    engine, published = run(settings, in_batches(items, 4))
    # What the Prometheus gauge exports while it fires (the bad day is the latest: current).
    assert sorted(current_experience_drops(engine, settings.app_id, "1d", DAY, DAY)) == [
        ("channel", "web", "csat"),
        ("overall", "all", "csat"),
    ]
    engine, published_later = run(settings, [later])  # a worker started again: the late answers
    published += published_later
    assert current_experience_drops(engine, settings.app_id, "1d", DAY, DAY) == []
    rows = stored(engine)
    # The web channel's cell, and the overall one (all the answers are on the web).
    assert {(row["scope"], row["key"]) for row in rows.values()} == {("channel", "web"), ("overall", "all")}
    for row in rows.values():
        assert (row["metric"], as_utc(row["window_start"]), row["status"]) == (
            "csat",
            T0 + timedelta(days=1),
            "resolved",
        )
        assert row["answers"] == 60 and row["baseline"] == 80.0
        # Fired once (on the sixth bad answer), resolved once: one record per change of status, same id, the later
        # of a higher revision.
        records = [a for a in published if a.alert_id == row["alert_id"]]
        assert [(a.status, a.answers, a.value) for a in records] == [("firing", 6, 0.0), ("resolved", 60, 90.0)]
        assert records[0].revision < records[1].revision == row["revision"]
    assert decided_from_cells(settings, engine) == set()

    # The read API pages them by window start, filtered by any of scope, key, metric and status.
    with read_api(database_url, tmp_path / "api.log") as base:
        pages, cursor = [], None
        while True:
            page = get(base, "/v1/experience-alerts", limit=1, **({"after": cursor} if cursor else {}))
            pages.append([alert["alert_id"] for alert in page["experience_alerts"]])
            if (cursor := page["next"]) is None:
                break
        assert sorted(alert_id for page_ids in pages for alert_id in page_ids) == sorted(rows) and len(pages) >= 2
        (web,) = get(base, "/v1/experience-alerts", scope="channel", status="resolved")["experience_alerts"]
        assert web["key"] == "web" and web["value"] == 90.0 and web["decided_at"]
        assert get(base, "/v1/experience-alerts", status="firing")["experience_alerts"] == []


def get(base: str, path: str, **params: Any) -> dict[str, Any]:
    reply = requests.get(f"{base}{path}", params=params, auth=(READ_KEY, ""), timeout=10)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def test_the_gauge_exports_what_fires_now_by_the_groups_watermark(database_url: str) -> None:
    """Current or previous window by the watermark (not by the newest cell, which one future-dated record would
    move), and older windows within the span while batches still revise them (a late-maturing experience gap)."""
    engine = make_engine(database_url, writer=True)
    upgrade(engine)
    watermark = T0 + timedelta(days=20, hours=6)
    now = datetime.now(UTC)

    def row(n: int, day: int, status: str, decided: datetime) -> dict[str, Any]:
        start = T0 + timedelta(days=day)
        return {
            "alert_id": f"a{n}", "status": status, "scope": "channel", "key": f"k{n}", "metric": "csat",
            "window": "1d", "window_start": start, "window_end": start + timedelta(days=1),
            "baseline_start": start - timedelta(days=7), "value": 1.0, "baseline": 2.0, "answers": 40,
            "baseline_answers": 300, "margin": 15.0, "z": 4.0, "revision": n, "decided_at": decided, "message": "",
        }  # fmt: skip

    with engine.begin() as conn:
        conn.execute(
            t.experience_alerts.insert(),
            [
                row(1, 20, "firing", now - timedelta(days=3)),  # the current window
                row(2, 19, "firing", now - timedelta(days=3)),  # the previous one
                row(3, 15, "firing", now - timedelta(minutes=5)),  # older, fired late: revised just now
                row(4, 15, "firing", now - timedelta(days=2)),  # older, not revised lately
                row(5, 20, "resolved", now),
                row(6, 5, "firing", now),  # before the span
                # A record dated far ahead made a cell there: no window of it fires, and nothing else moves.
            ],
        )
        conn.execute(t.metric_cells.insert().values(scope="overall", key="all", window="1d", window_start=datetime(2099, 1, 1, tzinfo=UTC), window_end=datetime(2099, 1, 2, tzinfo=UTC), counters={"touchpoints": 1}, final=False))  # fmt: skip
    assert current_experience_drops(engine, "g", "1d", DAY, 7 * DAY) == []  # the group has no watermark yet
    with engine.begin() as conn:
        conn.execute(t.stream_clock.insert().values(group_id="g", watermark=watermark, sequence=6))
    assert sorted(current_experience_drops(engine, "g", "1d", DAY, 7 * DAY)) == [
        ("channel", "k1", "csat"),
        ("channel", "k2", "csat"),
        ("channel", "k3", "csat"),
    ]
    engine.dispose()
