"""The read API (`cxstream api`) over a real results database, SQLite and PostgreSQL, with and without hashing.

The database is filled by the batch processor from a simulated population, as a worker fills it; the API runs as
the real command in a process of its own and is called over HTTP.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import delete, func, insert, select

from schemas.outputs import MetricScope
from schemas.touchpoint import Channel, IdentifierType
from sinks import tables as t
from sinks.database import make_engine
from streams.domain.aggregate import CellKey, rolling_figures
from tests.support.population import fill, raw_events
from tests.support.read_api import READ_KEY, read_api


@pytest.fixture(params=[False, True], ids=["plain", "hashed"])
def api(request: pytest.FixtureRequest, database_url: str, tmp_path: Path) -> Iterator[tuple[str, str, bool]]:
    """The read API on a filled database: (base URL, database URL, hashing)."""
    hashing = bool(request.param)
    fill(database_url, hashing)
    with read_api(database_url, tmp_path / "api.log", hashing) as base:
        yield base, database_url, hashing


def get(base: str, path: str, **params: Any) -> requests.Response:
    return requests.get(f"{base}{path}", params=params, auth=(READ_KEY, ""), timeout=10)


def test_a_customer_is_found_by_its_id_and_by_each_of_its_identifiers(api: tuple[str, str, bool]) -> None:
    base, database_url, hashing = api
    engine = make_engine(database_url)
    with engine.connect() as conn:
        owner = dict(conn.execute(select(t.touchpoints.c.event_id, t.touchpoints.c.customer_id)).all())
    looked_up = set()
    for event in raw_events():
        for kind, value in event.identifiers.items():
            if kind in looked_up or owner.get(event.event_id) is None:
                continue
            # As a person types it: an e-mail in capitals finds the same customer.
            typed = value.upper() if kind is IdentifierType.EMAIL else value
            reply = get(base, f"/v1/customers/{kind.value}:{typed}")
            assert reply.status_code == 200, (kind, reply.text)
            profile = reply.json()
            assert profile["customer_id"] == owner[event.event_id], kind
            looked_up.add(kind)
    assert {IdentifierType.EMAIL, IdentifierType.PHONE, IdentifierType.WEB_ANONYMOUS_ID} <= looked_up
    by_id = get(base, f"/v1/customers/{profile['customer_id']}").json()
    assert by_id == profile
    assert profile["events"] >= 1 and profile["identifiers"]
    raw_emails = [key for key in profile["identifiers"] if key.startswith("email:") and "@" in key]
    assert not raw_emails if hashing else True, "hashing on: no raw e-mail is served"
    assert get(base, "/v1/customers/email:nobody@example.org").status_code == 404
    with engine.connect() as conn:
        scores = dict(conn.execute(select(t.customers.c.customer_id, t.customers.c.engagement)).all())
    assert profile["engagement"] == scores[profile["customer_id"]] and set(profile["channels"]) <= set(Channel)
    # The distribution over every customer: nearest-rank quantiles of the stored scores.
    ordered = sorted(scores.values())
    overall, *per_channel = get(base, "/v1/engagement").json()["channels"]
    assert overall == {
        "channel": "all",
        "customers": len(ordered),
        **{f"p{q}": ordered[math.ceil(q / 100 * len(ordered)) - 1] for q in (25, 50, 75, 90)},
    }
    assert 0 < overall["p50"] < 100 and {row["channel"] for row in per_channel} <= set(Channel)


def test_read_keys_are_required_and_separate_from_write_keys(api: tuple[str, str, bool]) -> None:
    base = api[0]
    for auth in (None, ("dev-write-key", ""), ("wrong", "")):
        reply = requests.get(f"{base}/v1/metrics", auth=auth, timeout=10)
        assert reply.status_code == 401 and reply.headers["WWW-Authenticate"].startswith("Basic")
    document = requests.get(f"{base}/openapi.json", timeout=10).json()
    assert document["openapi"].startswith("3.1") and "/v1/customers/{ref}/timeline" in document["paths"]
    assert "ApiProfile" in document["components"]["schemas"] and "/v1/engagement" in document["paths"]


def test_timelines_and_figures_are_paged_without_gaps_or_repeats(api: tuple[str, str, bool]) -> None:
    base, database_url, _ = api
    engine = make_engine(database_url)
    with engine.connect() as conn:
        # The customer with the most touchpoints: several pages of two.
        customer_id = conn.execute(
            select(t.touchpoints.c.customer_id)
            .where(t.touchpoints.c.customer_id.is_not(None))
            .group_by(t.touchpoints.c.customer_id)
            .order_by(func.count().desc(), t.touchpoints.c.customer_id)
        ).scalar()
        events = (
            conn.execute(
                select(t.touchpoints.c.event_id)
                .where(t.touchpoints.c.customer_id == customer_id)
                .order_by(t.touchpoints.c.occurred_at, t.touchpoints.c.event_id)
            )
            .scalars()
            .all()
        )
    seen, cursor = [], None
    while True:
        page = get(base, f"/v1/customers/{customer_id}/timeline", limit=2, **({"after": cursor} if cursor else {}))
        assert page.status_code == 200, page.text
        body = page.json()
        seen += [entry["event_id"] for entry in body["touchpoints"]]
        cursor = body["next"]
        if cursor is None:
            break
    assert len(events) > 4 and seen == list(events), "every touchpoint once, in event-time order"

    figures, cursor = [], None
    while True:
        page = get(base, "/v1/metrics", scope="overall", limit=7, **({"after": cursor} if cursor else {})).json()
        figures += page["figures"]
        cursor = page["next"]
        if cursor is None:
            break
    with engine.connect() as conn:
        stored = conn.execute(select(t.metrics).where(t.metrics.c.scope == "overall")).all()
    assert len(figures) == len(stored) > 7
    assert len({(f["metric"], f["window"], f["window_start"]) for f in figures}) == len(figures)
    metric, window = figures[-1]["metric"], figures[-1]["window"]
    picked = get(base, "/v1/metrics", metric=metric, window=window, scope="overall", limit=1000).json()["figures"]
    assert picked and {(f["metric"], f["window"]) for f in picked} == {(metric, window)}
    assert {f["status"] for f in picked} <= {"provisional", "final"}
    start = picked[-1]["window_start"]
    assert get(base, "/v1/metrics", metric=metric, window=window, scope="overall", **{"from": start}).json()[
        "figures"
    ] == [picked[-1]], "from: window start at or after"
    assert get(base, "/v1/metrics", limit=0).status_code == 400
    assert get(base, "/v1/metrics", after="not-a-cursor").status_code == 400
    assert get(base, "/v1/metrics", **{"from": "2024-05-01T00:00:00"}).status_code == 400, "a time zone is required"
    # The same instant in another zone selects the same figures (SQLite stores wall-clock UTC and drops offsets).
    elsewhere = datetime.fromisoformat(start).astimezone(timezone(timedelta(hours=2))).isoformat()
    assert get(base, "/v1/metrics", metric=metric, window=window, scope="overall", **{"from": elsewhere}).json()[
        "figures"
    ] == [picked[-1]], "from: +02:00 is compared in UTC"
    # Hostile parameters are refused with a 4xx, not a server error (PostgreSQL refuses NUL in any text).
    everything = get(base, "/v1/metrics", scope="overall", limit=1000, **{"from": "0001-01-01T00:00:00+01:00"})
    assert everything.json()["figures"][:7] == figures[:7], "before the first UTC time: every figure"
    assert get(base, "/v1/metrics", limit="²").status_code == 400, "a digit int() does not read"
    assert get(base, "/v1/metrics", key="a\x00b").status_code == 400
    assert get(base, "/v1/alerts", rule="a\x00b").status_code == 400
    assert get(base, "/v1/customers/a%00b").status_code == 404
    assert get(base, "/v1/customers/email:a%00b@example.org/timeline").status_code == 404


def test_alerts_merges_and_segment_profile_api_shapes(api: tuple[str, str, bool]) -> None:
    base, database_url, hashing = api
    engine = make_engine(database_url)
    with engine.connect() as conn:
        stored_alerts = conn.execute(select(t.alerts.c.alert_id)).scalars().all()
        survivor, merged = conn.execute(
            select(t.identity_merges.c.survivor_id, func.count())
            .group_by(t.identity_merges.c.survivor_id)
            .order_by(func.count().desc(), t.identity_merges.c.survivor_id)
        ).first() or (None, 0)
        with_traits = conn.execute(select(t.customers.c.customer_id, t.customers.c.traits)).all()
    assert stored_alerts and survivor, "the population raises alerts and merges customers"

    alerts, cursor = [], None
    while True:
        page = get(base, "/v1/alerts", limit=3, **({"after": cursor} if cursor else {})).json()
        alerts += [alert["alert_id"] for alert in page["alerts"]]
        if (cursor := page["next"]) is None:
            break
    assert sorted(alerts) == sorted(stored_alerts) and len(set(alerts)) == len(alerts)
    one = get(base, "/v1/alerts", limit=1).json()["alerts"][0]
    mine = get(base, f"/v1/customers/{one['customer_id']}/alerts").json()["alerts"]
    assert one in mine and {alert["customer_id"] for alert in mine} == {one["customer_id"]}
    # The profile carries the customer's latest alerts and its own figures.
    with_alerts = get(base, f"/v1/customers/{one['customer_id']}").json()
    newest_first = sorted(mine, key=lambda a: (a["occurred_at"], a["alert_id"]), reverse=True)
    assert with_alerts["latest_alerts"] == newest_first[:10]
    figures = get(base, "/v1/metrics", scope="customer", key=one["customer_id"], limit=1000).json()
    assert with_alerts["metrics"] == figures["figures"] and figures["figures"], "per-customer figures on the profile"
    whole = get(base, f"/v1/customers/{survivor}/merges").json()
    assert len(whole["merges"]) == merged and whole["next"] is None and merged <= 100
    assert {m["survivor_id"] for m in whole["merges"]} == {survivor}
    # A page at a time, in event-time order, each merge once.
    assert merged >= 2, "a customer merged from several, to page through"
    merges, cursor = [], None
    while True:
        page = get(base, f"/v1/customers/{survivor}/merges", limit=1, **({"after": cursor} if cursor else {})).json()
        assert len(page["merges"]) == 1
        merges += page["merges"]
        if (cursor := page["next"]) is None:
            break
    assert merges == whole["merges"] == sorted(merges, key=lambda m: (m["occurred_at"], m["merged_id"]))

    # Segment's Profile API, by Segment's own id names, for a customer with traits.
    customer_id, traits = next((cid, tr) for cid, tr in with_traits if tr)
    profile = get(base, f"/v1/customers/{customer_id}").json()
    key = next(k for k in profile["identifiers"] if k.startswith(("web_user_id:", "web_anonymous_id:")))
    kind, value = key.split(":", 1)
    segment_ref = {"web_user_id": "user_id", "web_anonymous_id": "anonymous_id"}[kind] + ":" + value
    profile_path = f"/v1/spaces/spa_1/collections/users/profiles/{segment_ref}"
    answer = get(base, f"{profile_path}/traits").json()
    assert answer["traits"] == traits and answer["cursor"]["has_more"] is False
    ids = get(base, f"{profile_path}/external_ids").json()["data"]
    assert sorted(f"{i['type']}:{i['id']}" for i in ids) == profile["identifiers"]
    assert {i["encoding"] for i in ids if i["type"] == "email"} <= ({"hashed"} if hashing else {"none"})
    events, following = [], ""
    while True:
        page = get(base, f"{profile_path}/events", limit=2, **({"next": following} if following else {})).json()
        events += [event["message_id"] for event in page["data"]]
        if not page["cursor"]["has_more"]:
            break
        following = page["cursor"]["next"]
    assert len(events) == profile["events"] and len(set(events)) == len(events)


def test_a_database_that_cannot_answer_is_a_503_in_the_apis_shape(tmp_path: Path) -> None:
    """A results database without cxstream's tables (not migrated yet, or the wrong file) is not a crash or a bare
    500: the API answers 503 with its JSON error and Retry-After, and keeps serving."""
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with read_api(f"sqlite:///{empty}", tmp_path / "api.log") as base:
        for _ in range(2):
            reply = get(base, "/v1/customers/email:ann@example.org")
            assert reply.status_code == 503 and reply.headers["Retry-After"] == "5"
            assert "results database cannot answer" in reply.json()["error"]


def test_rolling_figures_as_of_now_are_served_beside_the_tumbling_windows(api: tuple[str, str, bool]) -> None:
    base, database_url, _ = api
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    cells = {
        CellKey(MetricScope.CHANNEL, "kiosk", "1d", int((today - timedelta(days=ago)).timestamp())): {
            "touchpoints": 10 + ago,
            "csat_answers": 4,
            "csat_satisfied": ago % 5,
        }
        for ago in (0, 2, 12)
    }
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(
            insert(t.metric_cells),
            [
                {
                    "scope": "channel",
                    "key": "kiosk",
                    "window": "1d",
                    "window_start": c.window_start,
                    "window_end": c.window_end,
                    "counters": counters,
                    "final": False,
                }
                for c, counters in cells.items()
            ],
        )
    try:
        for window, days in (("last_7d", (0, 2)), ("last_30d", (0, 2, 12))):
            figures = get(base, "/v1/metrics", scope="channel", key="kiosk", window=window).json()["figures"]
            expected = {r.metric: r.value for r in rolling_figures(cells, today) if r.window == window}
            assert {f["metric"]: f["value"] for f in figures} == expected
            assert expected["touchpoints"] == sum(10 + ago for ago in days)
            start = datetime.fromisoformat(figures[0]["window_start"])
            assert start == today - timedelta(days=int(window[5:-1]) - 1)
    finally:
        with engine.begin() as conn:
            conn.execute(delete(t.metric_cells).where(t.metric_cells.c.key == "kiosk"))
