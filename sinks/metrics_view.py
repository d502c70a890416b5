"""The ``metrics`` view: every metric figure computed in SQL from the additive counters in ``metric_cells``.

A figure is a formula over its cell's counters (``streams.domain.metrics``), so storing it as well would mean
writing a second row for every figure of every touched cell, in every batch: the largest SQL write of the
pipeline. The view is generated from the metric registry with the same arithmetic as ``value_of`` and
``revision_of``, in the same order (exact for the integer-valued counters), and re-created whenever the schema
is upgraded, so it always matches the code that writes the cells.
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, text

from schemas.outputs import MetricScope
from streams.domain.metrics import METRICS_BY_SCOPE, RETRACTED, Metric

VIEW = "metrics"


def _counter(dialect: str, name: str) -> str:
    if dialect == "postgresql":
        return f"COALESCE((c.counters ->> '{name}')::double precision, 0)"
    return f"COALESCE(json_extract(c.counters, '$.\"{name}\"'), 0)"


def _select(dialect: str, scope: MetricScope, metric: Metric) -> str:
    real = "double precision" if dialect == "postgresql" else "REAL"
    # value_of's arithmetic step by step: 0.0 + coef * counter ..., / units, then factor * numerator / denominator.
    terms = "".join(f" + {coef} * {_counter(dialect, name)}" for name, coef in metric.numerator)
    numerator = f"(CAST(0.0 AS {real}){terms})"
    if metric.units != 1:
        numerator = f"({numerator} / {float(metric.units)!r})"
    denominator = (
        f"CAST(1.0 AS {real})"
        if metric.denominator is None
        else f"CAST({_counter(dialect, metric.denominator)} AS {real})"
    )
    basis, retracted = _counter(dialect, metric.basis), _counter(dialect, RETRACTED[metric.basis])
    revision = f"CAST({basis} + 2 * {retracted} AS BIGINT)"
    return (
        f'SELECT c.scope AS scope, c.key AS key, \'{metric.name}\' AS metric, c."window" AS "window", '
        f"c.window_start AS window_start, c.window_end AS window_end, "
        f"{numerator} AS numerator, {denominator} AS denominator, "
        f"CASE WHEN {denominator} = 0 THEN NULL ELSE ({float(metric.factor)!r} * {numerator}) / {denominator} END AS value, "
        f"CASE WHEN c.final THEN 'final' ELSE 'provisional' END AS status, "
        f"{revision} + CASE WHEN c.final THEN 1 ELSE 0 END AS revision "
        f"FROM metric_cells AS c WHERE c.scope = '{scope.value}' AND {revision} > 0"
    )


def view_sql(dialect: str) -> str:
    """``SELECT`` of the view for a dialect (``sqlite`` or ``postgresql``): one branch per scope and metric."""
    branches = [_select(dialect, scope, metric) for scope in MetricScope for metric in METRICS_BY_SCOPE[scope]]
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
