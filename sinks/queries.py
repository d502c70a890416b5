"""Read-side queries over the results tables (the `timeline` command, tests, analysts' examples)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Select, func, or_, select, tuple_

from schemas.outputs import MetricScope
from sinks import tables as t
from sinks.contract import cell_key
from sinks.sql import as_utc
from streams.domain.aggregate import figures, rolling_figures
from streams.domain.engagement import nearest_rank

#: The quantiles of the engagement distribution that the read API and /metrics give.
ENGAGEMENT_QUANTILES = (0.25, 0.5, 0.75, 0.9)
#: The distribution's name for every customer, whatever its channels.
ALL_CHANNELS = "all"


def resolve_customer(engine: Engine, ref: str) -> str | None:
    """Find a customer by customer_id, by ``type:value`` identifier, or by a bare identifier value."""
    with engine.connect() as conn:
        if conn.scalar(select(t.customers.c.customer_id).where(t.customers.c.customer_id == ref)):
            return ref
        c = t.identities.c
        found = conn.execute(
            select(c.customer_id).where(or_(c.identifier == ref, c.id_value == ref, c.id_value == ref.lower()))
        ).first()
        return str(found[0]) if found else None


def _plain(row: Any) -> dict[str, Any]:
    """A row as a dict with str keys and UTC-aware timestamps (SQLite hands them back naive)."""
    return {str(k): as_utc(v) if isinstance(v, datetime) else v for k, v in row.items()}


def customer_timeline(engine: Engine, customer_id: str) -> dict[str, Any]:
    """A customer's profile row, identifiers and event-time-ordered touchpoints."""
    with engine.connect() as conn:
        profile = conn.execute(select(t.customers).where(t.customers.c.customer_id == customer_id)).mappings().first()
        idents = conn.execute(
            select(t.identities.c.identifier).where(t.identities.c.customer_id == customer_id).order_by("identifier")
        ).scalars()
        rows = conn.execute(
            select(t.touchpoints)
            .where(t.touchpoints.c.customer_id == customer_id)
            .order_by(t.touchpoints.c.occurred_at, t.touchpoints.c.event_id)
        ).mappings()
        touchpoints = [_plain(r) for r in rows]
        identifiers = list(idents)
    summary = {k: v for k, v in _plain(profile).items() if k != "state"} if profile else None
    return {"customer_id": customer_id, "profile": summary, "identifiers": identifiers, "touchpoints": touchpoints}


# --- the read API (streams.api) ------------------------------------------------------------------------------------

#: Columns of a touchpoint as the read API shows it (the row minus bookkeeping).
TIMELINE_COLUMNS = (
    "event_id",
    "occurred_at",
    "channel",
    "type",
    "stage",
    "moments",
    "amount",
    "currency",
    "issue_id",
    "issue_key",
    "resolved",
    "repeat_contact",
    "nps",
    "csat",
    "ces",
)


def customer_exists(engine: Engine, customer_id: str) -> bool:
    """True when ``customer_id`` has a row in ``customers``."""
    with engine.connect() as conn:
        return (
            conn.scalar(select(t.customers.c.customer_id).where(t.customers.c.customer_id == customer_id)) is not None
        )


def customer_of_key(engine: Engine, key: str) -> str | None:
    """The customer an identifier key (``type:value``, as stored) belongs to."""
    with engine.connect() as conn:
        found = conn.scalar(select(t.identities.c.customer_id).where(t.identities.c.identifier == key))
        return None if found is None else str(found)


def customer_profile(engine: Engine, customer_id: str) -> dict[str, Any] | None:
    """A customer's ``customers`` row (without the stitching state) and its identifier keys; None if unknown."""
    c = t.customers.c
    with engine.connect() as conn:
        columns = [col for col in t.customers.columns if col.name != "state"]
        row = conn.execute(select(*columns).where(c.customer_id == customer_id)).mappings().first()
        if row is None:
            return None
        keys = conn.execute(
            select(t.identities.c.identifier)
            .where(t.identities.c.customer_id == customer_id)
            .order_by(t.identities.c.identifier)
        ).scalars()
        profile = _plain(row)
        profile["identifiers"] = list(keys)
        profile["channels"] = [] if profile["channels"] is None else [c for c in profile["channels"].split(",") if c]
        return profile


def _page(
    engine: Engine, query: Select[Any], order: Sequence[Any], after: Sequence[Any] | None, limit: int | None
) -> list[dict[str, Any]]:
    """Rows of ``query`` in ``order`` (a unique key), up to ``limit`` of them (all without one) after the position
    ``after``."""
    if after is not None:
        query = query.where(tuple_(*order) > tuple_(*(_utc(value) for value in after)))
    with engine.connect() as conn:
        return [_plain(row) for row in conn.execute(query.order_by(*order).limit(limit)).mappings()]


def _between(query: Select[Any], column: Any, since: datetime | None, until: datetime | None) -> Select[Any]:
    """``query`` kept to rows whose ``column`` is in ``[since, until)`` (either bound optional)."""
    if since is not None:
        query = query.where(column >= _utc(since))
    if until is not None:
        query = query.where(column < _utc(until))
    return query


def _utc(value: Any) -> Any:
    """A time bound as compared with the stored times: in UTC. SQLite stores a time's wall-clock fields and drops
    its offset, so a bound given in another zone (``10:00+02:00``) would be compared as if it were 10:00 UTC."""
    if not isinstance(value, datetime):
        return value
    try:
        return as_utc(value)
    except OverflowError:  # 0001-01-01T00:00+01:00 is before the first UTC time there is; 9999-12-31T23:00-05:00 after
        ahead = (value.utcoffset() or timedelta()) > timedelta()
        return datetime.min.replace(tzinfo=UTC) if ahead else datetime.max.replace(tzinfo=UTC)


def timeline_page(
    engine: Engine, customer_id: str, after: tuple[datetime, str] | None, limit: int
) -> list[dict[str, Any]]:
    """Up to ``limit`` of a customer's touchpoints in event-time order (ties by event id), after ``after``."""
    c = t.touchpoints.c
    query = select(*(c[name] for name in TIMELINE_COLUMNS)).where(c.customer_id == customer_id)
    return _page(engine, query, (c.occurred_at, c.event_id), after, limit)


#: The filters ``metric_page`` takes: a column of the ``metrics`` view each.
METRIC_FILTERS = ("scope", "key", "metric", "window")


def metric_page(
    engine: Engine,
    filters: dict[str, str],
    since: datetime | None,
    until: datetime | None,
    after: tuple[datetime, str, str, str, str] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Figures of the ``metrics`` view matching ``filters`` (equality on ``METRIC_FILTERS``) whose window starts in
    ``[since, until)``, ordered by window start, scope, key, metric, window; up to ``limit`` after ``after``."""
    m = t.metrics.c
    order = (m.window_start, m.scope, m.key, m.metric, m["window"])
    return _filtered_page(engine, t.metrics, filters, (since, until), order, after, limit)


def _filtered_page(
    engine: Engine,
    table: Any,
    filters: dict[str, str],
    between: tuple[datetime | None, datetime | None],
    order: tuple[Any, ...],
    after: tuple[Any, ...] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Rows of ``table`` whose columns equal ``filters`` and whose first ``order`` column is in ``between``
    (``[since, until)``), in ``order``; up to ``limit`` after ``after``."""
    query = select(table).where(*(table.c[name] == value for name, value in filters.items()))
    return _page(engine, _between(query, order[0], *between), order, after, limit)


def customer_identities(engine: Engine, customer_id: str) -> list[dict[str, Any]]:
    """A customer's identity rows (type, value as stored, first and last seen), by key."""
    c = t.identities.c
    query = select(c.identifier, c.id_type, c.id_value, c.first_seen, c.last_seen).where(c.customer_id == customer_id)
    with engine.connect() as conn:
        return [_plain(row) for row in conn.execute(query.order_by(c.identifier)).mappings()]


def customer_merges(
    engine: Engine, customer_id: str, after: tuple[datetime, str] | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """The merges that ended in a customer (the customers merged into it, with their evidence), by event time, ties
    by merged id; up to ``limit`` of them (all without one) after ``after``."""
    m = t.identity_merges.c
    query = select(t.identity_merges).where(m.survivor_id == customer_id)
    return _page(engine, query, (m.occurred_at, m.merged_id), after, limit)


#: The filters ``alert_page`` takes: a column of ``alerts`` each.
ALERT_FILTERS = ("customer_id", "rule", "severity")


def alert_page(
    engine: Engine,
    filters: dict[str, str],
    since: datetime | None,
    until: datetime | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Alerts matching ``filters`` (equality on ``ALERT_FILTERS``) that occurred in ``[since, until)``, by time then
    id; up to ``limit`` after ``after``."""
    a = t.alerts.c
    return _filtered_page(engine, t.alerts, filters, (since, until), (a.occurred_at, a.alert_id), after, limit)


#: The filters ``experience_alert_page`` takes: a column of ``experience_alerts`` each.
EXPERIENCE_ALERT_FILTERS = ("scope", "key", "metric", "status")


def experience_alert_page(
    engine: Engine,
    filters: dict[str, str],
    since: datetime | None,
    until: datetime | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Experience-drop alerts matching ``filters`` (equality on ``EXPERIENCE_ALERT_FILTERS``) whose window starts in
    ``[since, until)``, by window start then id; up to ``limit`` after ``after``."""
    e = t.experience_alerts.c
    order = (e.window_start, e.alert_id)
    return _filtered_page(engine, t.experience_alerts, filters, (since, until), order, after, limit)


def customer_figures(engine: Engine, customer_id: str) -> list[dict[str, Any]]:
    """A customer's own figures (scope ``customer``, every window) as the ``metrics`` view has them, by window start,
    metric and window: computed here from the customer's cells with the domain's arithmetic (``figures``), which the
    view reproduces in SQL, because planning the view's one branch per metric cost more than the whole read."""
    c = t.metric_cells.c
    query = select(c["window"], c.window_start, c.counters, c.final).where(
        c.scope == MetricScope.CUSTOMER.value, c.key == customer_id
    )
    with engine.connect() as conn:
        cells = conn.execute(query).all()
    keyed = [
        (cell_key(MetricScope.CUSTOMER.value, customer_id, window, as_utc(start)), counters, final)
        for window, start, counters, final in cells
    ]
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    rows = [row for cell, counters, final in keyed for row in figures(cell, counters, final=final)]
    rows += rolling_figures({cell: counters for cell, counters, _ in keyed}, today)
    found = [{**row._asdict(), "scope": row.scope.value} for row in rows]
    return sorted(found, key=lambda row: (row["window_start"], row["metric"], row["window"]))


def engagement_distribution(engine: Engine) -> dict[str, dict[float, int]]:
    """How many customers hold each engagement score, per channel they were met in (a customer counts in every
    channel of its touchpoints) and over all of them (:data:`ALL_CHANNELS`); customers written before migration
    0017 have no score and are left out. One scan of ``customers`` grouped by (channels, score): scores have one
    decimal, so at most 1,001 rows per combination of channels."""
    c = t.customers.c
    query = (
        select(c.channels, c.engagement, func.count())
        .where(c.engagement.is_not(None))
        .group_by(c.channels, c.engagement)
    )
    found: dict[str, dict[float, int]] = {}
    with engine.connect() as conn:
        for channels, engagement, n in conn.execute(query):
            for channel in (ALL_CHANNELS, *(name for name in (channels or "").split(",") if name)):
                counts = found.setdefault(channel, {})
                counts[engagement] = counts.get(engagement, 0) + n
    return found


def engagement_quantiles(engine: Engine) -> list[dict[str, Any]]:
    """Per channel (:data:`ALL_CHANNELS` first, then by name): its customers with a score and the score's
    :data:`ENGAGEMENT_QUANTILES` (nearest rank) as ``p25``, ``p50``, ``p75``, ``p90``."""
    found = []
    for channel, counts in sorted(
        engagement_distribution(engine).items(), key=lambda kv: (kv[0] != ALL_CHANNELS, kv[0])
    ):
        row: dict[str, Any] = {"channel": channel, "customers": sum(counts.values())}
        for q in ENGAGEMENT_QUANTILES:
            row[f"p{round(q * 100)}"] = nearest_rank(counts, q)
        found.append(row)
    return found


# --- the pages (streams.pages) -------------------------------------------------------------------------------------


def latest_touchpoints(engine: Engine, customer_id: str, limit: int) -> tuple[list[dict[str, Any]], int]:
    """A customer's latest ``limit`` touchpoints in event-time order, and how many the customer has in all."""
    c = t.touchpoints.c
    query = (
        select(*(c[name] for name in TIMELINE_COLUMNS))
        .where(c.customer_id == customer_id)
        .order_by(c.occurred_at.desc(), c.event_id.desc())
    )
    with engine.connect() as conn:
        rows = [_plain(row) for row in conn.execute(query.limit(limit)).mappings()]
        total = conn.scalar(select(func.count()).select_from(t.touchpoints).where(c.customer_id == customer_id))
    return rows[::-1], int(total or 0)


def latest_alerts(engine: Engine, limit: int, customer_id: str | None = None) -> list[dict[str, Any]]:
    """The latest ``limit`` alerts (of one customer, when given), newest first."""
    a = t.alerts.c
    query = select(t.alerts)
    if customer_id is not None:
        query = query.where(a.customer_id == customer_id)
    with engine.connect() as conn:
        rows = conn.execute(query.order_by(a.occurred_at.desc(), a.alert_id.desc()).limit(limit)).mappings()
        return [_plain(row) for row in rows]


def worst_served(engine: Engine, limit: int, since: datetime | None = None) -> list[dict[str, Any]]:
    """The customers with the most alerts since ``since`` (ties: more open issues, then more contacts), with their
    counters.

    Alerts are what the rules judged a bad experience (repeat contacts, low scores, overdue issues), so their count
    is the measure of who was served worst; the customer's open issues and contacts say what is still pending.
    """
    a, c = t.alerts.c, t.customers.c
    alerts = select(a.customer_id, func.count().label("alerts"), func.max(a.occurred_at).label("latest_alert"))
    counted = _between(alerts, a.occurred_at, since, None).group_by(a.customer_id).subquery()
    query = (
        select(
            counted.c.customer_id,
            counted.c.alerts,
            counted.c.latest_alert,
            c.stage,
            c.open_issues,
            c.contacts,
            c.events,
            c.last_seen,
        )
        .join(t.customers, c.customer_id == counted.c.customer_id)
        .order_by(counted.c.alerts.desc(), c.open_issues.desc(), c.contacts.desc(), counted.c.customer_id)
        .limit(limit)
    )
    with engine.connect() as conn:
        return [_plain(row) for row in conn.execute(query).mappings()]


def metric_series(
    engine: Engine, scopes: Sequence[str], window: str, metrics: Sequence[str], days: float
) -> list[dict[str, Any]]:
    """Figures of ``metrics`` in ``scopes`` and one window length from the ``metrics`` view, over the ``days``
    before the latest window start of those scopes, ordered by metric, scope, key and window start (a series per
    metric and key)."""
    m = t.metrics.c
    chosen = (m.scope.in_(list(scopes)), m["window"] == window, m.metric.in_(list(metrics)))
    with engine.connect() as conn:
        latest = conn.scalar(select(func.max(m.window_start)).where(*chosen))
        if latest is None:
            return []
        # Not past the event-time watermark: one event from a source with a wrong clock (dated years ahead) would
        # otherwise leave only itself in the chart's range.
        watermark = conn.scalar(select(func.max(t.stream_clock.c.watermark)))
        if watermark is not None:
            latest = min(as_utc(latest), as_utc(watermark))
        query = select(m.scope, m.key, m.metric, m.window_start, m.window_end, m.value, m.denominator, m.status).where(
            *chosen, m.window_start >= as_utc(latest) - timedelta(days=days)
        )
        rows = conn.execute(query.order_by(m.metric, m.scope, m.key, m.window_start)).mappings()
        return [_plain(row) for row in rows]
