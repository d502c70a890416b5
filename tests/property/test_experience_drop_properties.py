"""Experience-drop alerts decided batch by batch, as the worker does, end where a decision over the final cells
does, whatever the arrival order and batch cuts; and what a consumer of the compacted topic holds last is it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import event, given
from hypothesis import strategies as st

from schemas.outputs import TimelineEntry
from streams.domain.aggregate import MetricAggregator, MetricPolicy
from streams.domain.experience_drops import DropPolicy, Status, firing, needed, redecide, to_check
from streams.domain.metrics import Counters
from tests.property.test_metric_properties import CUSTOMER_WINDOWS, DAY, FAST, T0, WINDOWS, dedupe, entries, split

#: Loose enough that a few random entries fire and resolve (what is tested is the bookkeeping, not the
#: thresholds): every watchable metric, a 1-day baseline, one answer, no z test.
POLICY = DropPolicy(
    window="1d",
    window_s=DAY,
    baseline_windows=1,
    margins={m: 5.0 for m in ("nps", "csat", "ces", "fcr", "confirmed_fcr", "experience_gap", "repeat_contact_rate")},
    min_answers=1,
    min_z=0.0,
)


@FAST
@given(
    raw=st.lists(entries(), min_size=20, max_size=60),
    order=st.randoms(use_true_random=False),
    cuts=st.lists(st.integers(0, 60), max_size=40),
)
def test_batch_by_batch_decisions_end_as_the_final_cells_decide(
    raw: list[TimelineEntry], order: Any, cuts: list[int]
) -> None:
    # Three days rather than the strategy's 45: baselines then hold data, and alerts fire and resolve.
    items = [e.model_copy(update={"occurred_at": T0 + (e.occurred_at - T0) % timedelta(days=3)}) for e in dedupe(raw)]
    arrival = list(items)
    order.shuffle(arrival)
    cells: dict[Any, Counters] = {}
    stored: dict[str, Status] = {}
    published: dict[str, Status] = {}
    aggregator = MetricAggregator(MetricPolicy(WINDOWS, CUSTOMER_WINDOWS, 3 * DAY))
    for batch in split(arrival, cuts):
        for entry in batch:
            aggregator.add(entry)
        result = aggregator.updates({c: cells[c] for c in aggregator.touched() if c in cells})
        cells.update(result.counters)
        check = to_check(result.counters, POLICY)
        view = {c: cells[c] for c in needed(check, POLICY) if c in cells}
        for drop, changed in redecide(check, view, stored, POLICY):
            stored[drop.alert_id] = drop.status
            if changed:
                published[drop.alert_id] = drop.status
    expected = set(firing(cells, POLICY))
    event("fires" if expected else "fires nothing")
    event("resolved some" if "resolved" in stored.values() else "resolved none")
    assert {alert_id for alert_id, status in stored.items() if status == "firing"} == expected
    assert published == stored  # every stored status was published, the last one last
