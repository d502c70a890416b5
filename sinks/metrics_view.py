"""The ``metrics`` view: every metric figure computed in SQL from the additive counters in ``metric_cells``.

A figure is a formula over its cell's counters (``streams.domain.metrics``), so storing it as well would mean
writing a second row for every figure of every touched cell, in every batch: the largest SQL write of the
pipeline. The view is generated from the metric registry with the same arithmetic as ``value_of`` and
``revision_of``, in the same order (exact for the integer-valued counters), and re-created whenever the schema
is upgraded, so it always matches the code that writes the cells.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, Engine, text

from schemas.outputs import MetricScope
from streams.domain.metrics import (
    METRICS_BY_SCOPE,
    RETRACTED,
    ROLLING_METRICS,
    ROLLING_SCOPES,
    ROLLING_SOURCE_WINDOW,
    ROLLING_WINDOWS,
    Metric,
)

VIEW = "metrics"


def _counter(dialect: str, name: str) -> str:
    if dialect == "postgresql":
        return f"COALESCE((c.counters ->> '{name}')::double precision, 0)"
    return f"COALESCE(json_extract(c.counters, '$.\"{name}\"'), 0)"


def _figure(dialect: str, metric: Metric, counter: Callable[[str], str]) -> dict[str, str]:
    """``value_of``'s and ``revision_of``'s arithmetic, step by step, over the counters ``counter`` names."""
    real = "double precision" if dialect == "postgresql" else "REAL"
    # 0.0 + coef * counter ..., / units, then factor * numerator / denominator.
    terms = "".join(f" + {coef} * {counter(name)}" for name, coef in metric.numerator)
    numerator = f"(CAST(0.0 AS {real}){terms})"
    if metric.units != 1:
        numerator = f"({numerator} / {float(metric.units)!r})"
    denominator = (
        f"CAST(1.0 AS {real})" if metric.denominator is None else f"CAST({counter(metric.denominator)} AS {real})"
    )
    revision = f"CAST({counter(metric.basis)} + 2 * {counter(RETRACTED[metric.basis])} AS BIGINT)"
    value = f"CASE WHEN {denominator} = 0 THEN NULL ELSE ({float(metric.factor)!r} * {numerator}) / {denominator} END"
    return {"numerator": numerator, "denominator": denominator, "value": value, "revision": revision}


def _select(dialect: str, scope: MetricScope, metric: Metric) -> str:
    f = _figure(dialect, metric, lambda name: _counter(dialect, name))
    return (
        f'SELECT c.scope AS scope, c.key AS key, \'{metric.name}\' AS metric, c."window" AS "window", '
        f"c.window_start AS window_start, c.window_end AS window_end, "
        f"{f['numerator']} AS numerator, {f['denominator']} AS denominator, {f['value']} AS value, "
        f"CASE WHEN c.final THEN 'final' ELSE 'provisional' END AS status, "
        f"{f['revision']} + CASE WHEN c.final THEN 1 ELSE 0 END AS revision "
        f"FROM metric_cells AS c WHERE c.scope = '{scope.value}' AND {f['revision']} > 0"
    )


def _day(dialect: str, days: int) -> str:
    """The UTC midnight ``days`` after today's, as the cells' ``window_start`` column holds it."""
    if dialect == "postgresql":
        return f"((date_trunc('day', now() AT TIME ZONE 'UTC') + interval '{days} days') AT TIME ZONE 'UTC')"
    return f"strftime('%Y-%m-%d 00:00:00.000000', 'now', '{days:+d} days')"


def _rolling(dialect: str, scope: MetricScope, metric: Metric, window: str, days: int) -> str:
    """A metric's rolling figure as of now: the sums of its counters over the last ``days`` daily cells."""
    names = list(dict.fromkeys([*metric.counters, RETRACTED[metric.basis]]))
    sums = ", ".join(f'SUM({_counter(dialect, name)}) AS "{name}"' for name in names)
    f = _figure(dialect, metric, lambda name: f'c."{name}"')
    start, end = _day(dialect, 1 - days), _day(dialect, 1)
    return (
        f"SELECT c.scope AS scope, c.key AS key, '{metric.name}' AS metric, '{window}' AS \"window\", "
        f"{start} AS window_start, {end} AS window_end, "
        f"{f['numerator']} AS numerator, {f['denominator']} AS denominator, {f['value']} AS value, "
        f"'provisional' AS status, {f['revision']} AS revision "
        f"FROM (SELECT c.scope AS scope, c.key AS key, {sums} FROM metric_cells AS c "
        f"WHERE c.scope = '{scope.value}' AND c.\"window\" = '{ROLLING_SOURCE_WINDOW}' "
        f"AND c.window_start >= {start} AND c.window_start < {end} GROUP BY c.scope, c.key) AS c "
        f"WHERE {f['revision']} > 0"
    )


def view_sql(dialect: str) -> str:
    """``SELECT`` of the view for a dialect (``sqlite`` or ``postgresql``): one branch per scope and metric, and one
    per scope, metric and rolling window (``streams.domain.aggregate.rolling_figures`` in SQL)."""
    branches = [_select(dialect, scope, metric) for scope in MetricScope for metric in METRICS_BY_SCOPE[scope]]
    branches += [
        _rolling(dialect, scope, metric, window, days)
        for window, days in ROLLING_WINDOWS.items()
        for scope in sorted(ROLLING_SCOPES)
        for metric in METRICS_BY_SCOPE[scope]
        if metric.name in ROLLING_METRICS
    ]
    return "\nUNION ALL\n".join(branches)


def create_view(connection: Connection) -> None:
    """(Re)create the view inside the caller's transaction."""
    dialect = connection.dialect.name
    connection.execute(text(f"DROP VIEW IF EXISTS {VIEW}"))
    connection.execute(text(f"CREATE VIEW {VIEW} AS\n{view_sql(dialect)}"))


def refresh(engine: Engine) -> None:
    """Re-create the view from the running code's registry (part of every schema upgrade)."""
    with engine.begin() as connection:
        create_view(connection)
