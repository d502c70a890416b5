"""The SQL ``metrics`` view computes exactly the figures the worker publishes, on SQLite and PostgreSQL."""

from __future__ import annotations

import random
from datetime import UTC

from sqlalchemy import insert, select

from schemas.outputs import MetricScope
from sinks import tables as t
from sinks.database import make_engine, upgrade
from streams.domain.aggregate import CellKey, figures
from streams.domain.metrics import COUNTERS, RETRACTED

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
