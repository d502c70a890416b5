"""The SQL ``metrics`` view computes exactly the figures the worker publishes, on SQLite and PostgreSQL."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, select

from schemas.outputs import MetricScope
from sinks import tables as t
from sinks.database import make_engine, upgrade
from streams.domain.aggregate import CellKey, figures, rolling_figures
from streams.domain.metrics import COUNTERS, RETRACTED, ROLLING_METRICS, ROLLING_WINDOWS

KEYS = {MetricScope.CUSTOMER: ["c-1", "c-2"], MetricScope.CHANNEL: ["web", "phone"], MetricScope.OVERALL: ["all"]}
BIG = {"resolution_ms": 10**9, "purchase_gap_ms": 10**9, "revenue_4dp": 10**10}


def random_counters(rng: random.Random) -> dict[str, int]:
    """Counters as a cell holds them: integers (large sums, negative revenue after returns), no zeros."""
    names = [*COUNTERS, *RETRACTED.values()]
    counters = {}
    for name in rng.sample(names, rng.randint(0, len(names))):
        counters[name] = rng.randint(-BIG[name], BIG[name]) if name in BIG else rng.randint(0, 40)
    return {name: value for name, value in counters.items() if value}


def test_the_view_equals_the_published_figures(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    rng = random.Random(7)
    cells = {}
    for day in range(150):
        scope = rng.choice(list(MetricScope))
        window = rng.choice(["1d", "all"])
        cell = CellKey(scope, rng.choice(KEYS[scope]), window, 0 if window == "all" else 86400 * day)
        cells[cell] = (random_counters(rng), rng.random() < 0.3)
    with engine.begin() as conn:
        conn.execute(
            insert(t.metric_cells),
            [
                {
                    "scope": cell.scope.value,
                    "key": cell.key,
                    "window": cell.window,
                    "window_start": cell.window_start,
                    "window_end": cell.window_end,
                    "counters": counters,
                    "final": final,
                }
                for cell, (counters, final) in cells.items()
            ],
        )
        rows = conn.execute(select(t.metrics)).mappings().all()

    expected = {
        (cell.scope.value, cell.key, row.metric, cell.window, row.window_start): (
            row.window_end,
            row.numerator,
            row.denominator,
            row.value,
            row.status,
            row.revision,
        )
        for cell, (counters, final) in cells.items()
        for row in figures(cell, counters, final=final)
    }
    got = {
        (r["scope"], r["key"], r["metric"], r["window"], r["window_start"].replace(tzinfo=UTC)): (
            r["window_end"].replace(tzinfo=UTC),
            r["numerator"],
            r["denominator"],
            r["value"],
            r["status"],
            r["revision"],
        )
        for r in rows
    }
    assert len(expected) > 500, "the cells must hold enough figures to mean something"
    assert {status for *_, status, _ in expected.values()} == {"provisional", "final"}
    assert got == expected


def test_the_rolling_figures_sum_the_last_days_daily_cells_as_the_domain_does(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    rng = random.Random(11)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    cells = {}
    for days_ago in range(-1, 40):  # tomorrow's cell (an event dated ahead) and those before the 30 days: left out
        for scope in (MetricScope.CHANNEL, MetricScope.OVERALL):
            start = int((today - timedelta(days=days_ago)).timestamp())
            cells[CellKey(scope, rng.choice(KEYS[scope]), "1d", start)] = random_counters(rng)
    cells[CellKey(MetricScope.OVERALL, "all", "all", 0)] = random_counters(rng)
    with engine.begin() as conn:
        conn.execute(
            insert(t.metric_cells),
            [
                {
                    "scope": c.scope.value,
                    "key": c.key,
                    "window": c.window,
                    "window_start": c.window_start,
                    "window_end": c.window_end,
                    "counters": counters,
                    "final": False,
                }
                for c, counters in cells.items()
            ],
        )
        rows = conn.execute(select(t.metrics).where(t.metrics.c["window"].in_(list(ROLLING_WINDOWS)))).mappings().all()
    expected = {
        (row.scope.value, row.key, row.metric, row.window): (
            row.window_start,
            row.window_end,
            row.numerator,
            row.denominator,
            row.value,
            row.revision,
        )
        for row in rolling_figures(cells, today)
    }
    got = {
        (r["scope"], r["key"], r["metric"], r["window"]): (
            r["window_start"].replace(tzinfo=UTC),
            r["window_end"].replace(tzinfo=UTC),
            r["numerator"],
            r["denominator"],
            r["value"],
            r["revision"],
        )
        for r in rows
    }
    assert {window for *_, window in expected} == set(ROLLING_WINDOWS) and len(expected) > 100
    assert got == expected
    assert all(r["status"] == "provisional" for r in rows)
    assert not {metric for _, _, metric, _ in got} - ROLLING_METRICS, "purchase frequency does not add up over days"
