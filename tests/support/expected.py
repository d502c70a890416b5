"""What the result tables must hold after a run: the oracle's replay turned into rows, as the worker writes them.

Rows are built with the worker's own row functions (``streams.result_rows``) and the metric registry, and put in
the form ``results.snapshot`` reads SQL in, so a run compares with ``==``. Only the tables that do not depend
on arrival order are here (see the README's guarantees): ``identity_merges`` and ``alerts`` are not.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from config.settings import Settings
from schemas.touchpoint import TouchpointEvent
from streams.domain.aggregate import MetricAggregator, figures, rolling_figures
from streams.domain.event_time import MAX_CLOCK_SKEW_S
from streams.domain.identity import NO_RULES, KeptApart
from streams.domain.oracle import replay
from streams.domain.stitching import ManualLink, Stitcher
from streams.policies import Policies
from streams.result_rows import cell_row, customer_row, identity_rows, overdue_at, stitched_by, touchpoint_row
from tests.support.results import BOOKKEEPING_COLUMNS, plain_row, without_versions

#: The tables whose rows the oracle decides.
ORDER_FREE_TABLES = ("customers", "identities", "touchpoints", "metrics", "metric_cells")


def expected_results(
    events: Iterable[TouchpointEvent],
    settings: Settings,
    apart: KeptApart = NO_RULES,
    links: Sequence[ManualLink] = (),
) -> dict[str, list[dict[str, Any]]]:
    """The order-free result tables a worker ends with once it applied ``events`` (as read from the channel
    topics, duplicates and all) and every partition went idle, in ``results.without_versions`` form; with the
    never-link rules ``apart`` (in arrival order by event time: where they bite, arrival order decides) and the
    merges made by hand ``links`` (after the events)."""
    events = list(events)
    policies = Policies.from_settings(settings)
    oracle = replay(events, policies, apart, links)
    tables: dict[str, list[dict[str, Any]]] = {name: [] for name in ORDER_FREE_TABLES}
    for customer_id, profile in oracle.profiles.items():
        state = oracle.customers[customer_id]
        tables["customers"].append(
            customer_row(profile, state, overdue_at(state, policies.customer, settings.issue_target_s))._asdict()
        )
    ordered = sorted(events, key=lambda event: (event.occurred_at, event.event_id))
    keys = Stitcher(policies).keys_of(ordered)
    tables["identities"] = [row._asdict() for row in identity_rows(ordered, keys, oracle.result, oracle.identities, {})]
    now = datetime.now(UTC)
    # Each touchpoint records an identify call's details (the first record of an event id is the one applied); the
    # keys it linked depend on arrival order (results.BOOKKEEPING_COLUMNS).
    firsts: dict[str, tuple[str | None, str | None]] = {}
    for event, event_keys in zip(ordered, keys, strict=True):
        firsts.setdefault(event.event_id, stitched_by(event, event_keys.keys))
    tables["touchpoints"] = [
        touchpoint_row(entry, now, *firsts[entry.event_id])._asdict() for entry in oracle.entries.values()
    ]
    aggregator = MetricAggregator(policies.metrics)
    for entry in oracle.entries.values():
        aggregator.add(entry)
    # Every partition idle: the watermark is the latest event time read (never further ahead of the wall clock
    # than the skew allowed).
    watermark = min(max(e.occurred_at.timestamp() for e in events), time.time() + MAX_CLOCK_SKEW_S)
    cells = aggregator.updates({}).counters
    for cell, counters in cells.items():
        closes = aggregator.closes_at(cell)
        final = closes is not None and closes.timestamp() <= watermark
        tables["metric_cells"].append(cell_row(cell, counters, final=final)._asdict())
        tables["metrics"] += [
            {**row._asdict(), "scope": row.scope.value} for row in figures(cell, counters, final=final)
        ]
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    tables["metrics"] += [{**row._asdict(), "scope": row.scope.value} for row in rolling_figures(cells, today)]
    snapshot = {
        name: sorted(
            (plain_row({k: v for k, v in row.items() if k not in BOOKKEEPING_COLUMNS}) for row in rows),
            key=lambda r: repr(sorted(r.items())),
        )
        for name, rows in tables.items()
    }
    return without_versions(snapshot)
