"""Windowed aggregation is independent of arrival order and batching, and windows merge by addition."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.outputs import MetricScope, Stage, TimelineEntry
from schemas.touchpoint import Channel, EventType, SurveyAnswers
from streams.domain.aggregate import CellFigures, CellKey, MetricAggregator, MetricPolicy, MetricRow, cells_for
from streams.domain.metrics import (
    METRICS,
    METRICS_BY_SCOPE,
    WINDOW_DEPENDENT_COUNTERS,
    Counters,
    contributions,
    first_purchase_in_window,
    merge,
    revision_of,
    value_of,
)
from streams.domain.windows import parse_window

T0 = datetime(2024, 2, 27, 22, 15, tzinfo=UTC)
WINDOWS = tuple(parse_window(w) for w in ("1h", "1d", "7d", "30d", "all"))
CUSTOMER_WINDOWS = tuple(parse_window(w) for w in ("30d", "all"))
DAY = 86400

_maybe = st.none


@st.composite
def entries(draw: st.DrawFn) -> TimelineEntry:
    """One timeline entry with every metric-relevant field drawn independently."""
    is_contact = draw(st.booleans())
    survey = draw(
        _maybe()
        | st.builds(
            SurveyAnswers,
            nps=_maybe() | st.integers(0, 10),
            csat=_maybe() | st.integers(1, 5),
            ces=_maybe() | st.integers(1, 7),
        )
    )
    occurred = T0 + timedelta(seconds=draw(st.integers(0, 45 * DAY)), microseconds=draw(st.integers(0, 999_999)))
    fields: dict[str, Any] = {
        "customer_id": draw(st.sampled_from(["c0", "c1", "c2", "c3"])),
        "event_id": f"e{draw(st.integers(0, 60))}",  # collisions are the duplicates the stitcher removes
        "channel": draw(st.sampled_from(list(Channel))),
        "type": draw(st.sampled_from([EventType.PURCHASE, EventType.PAGE_VIEW, *EventType])),
        "occurred_at": occurred,
        "received_at": occurred,
        "stage": draw(st.sampled_from(list(Stage))),
        "amount": draw(_maybe() | st.decimals(-50, 5000, places=5, allow_nan=False, allow_infinity=False)),
        "is_contact": is_contact,
        "contact_number": draw(st.integers(1, 3)) if is_contact else 0,
        "repeat_contact": is_contact and draw(st.booleans()),
        "resolved": draw(st.sampled_from([None, True, False])),
        "channel_switch": is_contact and draw(st.booleans()),
        "transfers": draw(st.integers(0, 3)),
        "time_to_resolution_s": draw(_maybe() | st.floats(0, 30 * DAY)),
        "time_since_last_purchase_s": draw(_maybe() | st.floats(0, 60 * DAY)),
        "survey": survey,
    }
    return TimelineEntry(**fields)


def dedupe(items: Iterable[TimelineEntry]) -> list[TimelineEntry]:
    seen: dict[str, TimelineEntry] = {}
    for e in items:
        seen.setdefault(e.event_id, e)
    return list(seen.values())


def cell_contributions(entry: TimelineEntry, cell: CellKey) -> Counters:
    """What one entry adds to one cell, from the definitions (the reference the aggregator must match)."""
    out = dict(contributions(entry))
    if cell.scope is not MetricScope.CHANNEL and first_purchase_in_window(entry, cell.start * 1_000_000):
        out["purchasers"] = 1
    return out


def recompute(items: Sequence[TimelineEntry]) -> tuple[dict[CellKey, Counters], dict[CellKey, list[Counters]]]:
    """Counters of every cell summed from scratch, and each cell's per-entry contributions."""
    totals: dict[CellKey, Counters] = defaultdict(dict)
    per_entry: dict[CellKey, list[Counters]] = defaultdict(list)
    for e in items:
        for cell in cells_for(e, WINDOWS, CUSTOMER_WINDOWS):
            c = cell_contributions(e, cell)
            merge(totals[cell], c)
            per_entry[cell].append(c)
    return dict(totals), dict(per_entry)


def run_batches(batches: Sequence[Sequence[TimelineEntry]]) -> tuple[dict[CellKey, Counters], list[CellFigures]]:
    """The worker's cycle: per batch, load the touched cells, merge, store, publish."""
    stored: dict[CellKey, Counters] = {}
    published: list[CellFigures] = []
    agg = MetricAggregator(MetricPolicy(WINDOWS, CUSTOMER_WINDOWS, 3 * DAY))
    for batch in batches:
        for e in batch:
            agg.add(e)
        result = agg.updates({c: stored[c] for c in agg.touched() if c in stored})
        stored.update(result.counters)
        published += result.updates
    return stored, published


def split(items: list[TimelineEntry], cuts: list[int]) -> list[list[TimelineEntry]]:
    bounds = sorted({min(c, len(items)) for c in cuts} | {0, len(items)})
    return [items[a:b] for a, b in pairwise(bounds)]


def latest(published: Sequence[CellFigures]) -> dict[tuple[CellKey, str], MetricRow]:
    """What a consumer keeping each cell's record of the highest revision holds, by (cell, metric); checks on the
    way that a cell's revision grows with each record and that none of its figures' revisions falls."""
    last: dict[CellKey, CellFigures] = {}
    for record in published:
        before = last.get(record.cell)
        if before is not None:
            assert record.revision > before.revision  # a consumer keeping the highest revision is right
            revisions = {f.metric: f.revision for f in record.figures}
            assert all(revisions.get(f.metric, -1) >= f.revision for f in before.figures)
        last[record.cell] = record
    return {(cell, row.metric): row for cell, record in last.items() for row in record.rows()}


FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(
    raw=st.lists(entries(), min_size=1, max_size=30),
    order=st.randoms(use_true_random=False),
    cuts=st.lists(st.integers(0, 30), max_size=6),
)
def test_batches_in_any_order_equal_recomputation(raw: list[TimelineEntry], order: Any, cuts: list[int]) -> None:
    items = dedupe(raw)
    arrival = list(items)
    order.shuffle(arrival)
    stored, published = run_batches(split(arrival, cuts))
    expected, per_entry = recompute(items)
    assert stored == expected
    last = latest(published)

    for cell, counters in expected.items():
        for metric in METRICS_BY_SCOPE[cell.scope]:
            # Revision = the number of entries in the cell that changed this metric's counters.
            contributing = sum(1 for c in per_entry[cell] if any(c.get(n) for n in metric.counters))
            assert revision_of(metric, counters) == contributing
            if contributing == 0:
                assert (cell, metric.name) not in last
                continue
            # The last record of every (cell, metric) is the recomputed figure, whatever the batching.
            record = last[(cell, metric.name)]
            assert (record.numerator, record.denominator, record.value) == value_of(metric, counters)
            assert record.revision == contributing
            assert record.status == "provisional"


@FAST
@given(raw=st.lists(entries(), min_size=1, max_size=30), picks=st.lists(st.booleans(), min_size=30, max_size=30))
def test_disjoint_sets_merge_by_addition(raw: list[TimelineEntry], picks: list[bool]) -> None:
    items = dedupe(raw)
    left = [e for e, p in zip(items, picks, strict=False) if p]
    right = [e for e, p in zip(items, picks, strict=False) if not p]
    a, _ = run_batches([left])
    b, _ = run_batches([right])
    combined: dict[CellKey, Counters] = {}
    for part in (a, b):
        for cell, counters in part.items():
            merge(combined.setdefault(cell, {}), counters)
    assert combined == run_batches([items])[0]


@FAST
@given(raw=st.lists(entries(), min_size=1, max_size=30))
def test_smaller_windows_add_up_to_bigger_ones(raw: list[TimelineEntry]) -> None:
    stored, _ = run_batches([dedupe(raw)])
    for small, big in (("1h", "1d"), ("1d", "30d"), ("30d", "all")):
        for scope in (MetricScope.OVERALL, MetricScope.CHANNEL, MetricScope.CUSTOMER):
            rolled: dict[tuple[str, int], Counters] = defaultdict(dict)
            for cell, counters in stored.items():
                if cell.scope is scope and cell.window == small:
                    start = int(parse_window(big).bounds(cell.window_start)[0].timestamp())
                    additive = {k: v for k, v in counters.items() if k not in WINDOW_DEPENDENT_COUNTERS}
                    merge(rolled[(cell.key, start)], additive)
            for (key, start), counters in rolled.items():
                target = stored[CellKey(scope, key, big, start)]
                assert counters == {k: v for k, v in target.items() if k not in WINDOW_DEPENDENT_COUNTERS}


@FAST
@given(entry=entries())
def test_every_change_to_a_metric_moves_its_revision(entry: TimelineEntry) -> None:
    for cell in cells_for(entry, WINDOWS, CUSTOMER_WINDOWS):
        c = cell_contributions(entry, cell)
        for metric in METRICS_BY_SCOPE[cell.scope]:
            if any(c.get(n) for n in metric.counters):
                assert c.get(metric.basis, 0) >= 1, (metric.name, c)


@st.composite
def versioned(draw: st.DrawFn) -> tuple[list[list[TimelineEntry]], list[tuple[str, int]]]:
    """Entries with up to two re-emitted versions each, and an arrival order of their versions."""
    base = dedupe(draw(st.lists(entries(), min_size=1, max_size=12)))
    versions = []
    for e in base:
        later = draw(st.lists(entries(), max_size=2))
        same = {"event_id": e.event_id, "customer_id": e.customer_id, "channel": e.channel}
        same["occurred_at"] = same["received_at"] = e.occurred_at
        versions.append([e, *(v.model_copy(update=same) for v in later)])
    tokens = [(e.event_id, i) for e, vs in zip(base, versions, strict=True) for i in range(len(vs))]
    shuffled = draw(st.permutations(tokens))
    return versions, shuffled


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=versioned(), cuts=st.lists(st.integers(0, 36), max_size=6))
def test_re_emitted_versions_replace_their_predecessors(
    data: tuple[list[list[TimelineEntry]], list[tuple[str, int]]], cuts: list[int]
) -> None:
    versions, shuffled = data
    by_id = {vs[0].event_id: vs for vs in versions}
    # Versions of one entry arrive in order: the k-th arrival of an event id is its k-th version.
    arrived: dict[str, int] = defaultdict(int)
    ops: list[tuple[TimelineEntry | None, TimelineEntry]] = []
    for event_id, _ in shuffled:
        k = arrived[event_id]
        arrived[event_id] += 1
        ops.append((by_id[event_id][k - 1] if k else None, by_id[event_id][k]))

    stored: dict[CellKey, Counters] = {}
    published: list[CellFigures] = []
    agg = MetricAggregator(MetricPolicy(WINDOWS, CUSTOMER_WINDOWS, 3 * DAY))
    for batch in split(ops, cuts):  # type: ignore[arg-type]
        for old, new in batch:
            if old is not None:
                agg.retract(old)
            agg.add(new)
        result = agg.updates({c: stored[c] for c in agg.touched() if c in stored})
        stored.update(result.counters)
        published += result.updates
    last = latest(published)

    def live(counters: dict[CellKey, Counters]) -> dict[CellKey, Counters]:
        """Counters without zeros and withdrawal counts, of cells that still hold something."""
        out = {c: {k: v for k, v in cs.items() if v and not k.endswith("_retracted")} for c, cs in counters.items()}
        return {c: cs for c, cs in out.items() if cs}

    assert live(stored) == live(recompute([vs[-1] for vs in versions])[0])
    # Revision = every version added to or withdrawn from the metric's basis in this cell.
    touches: dict[tuple[CellKey, str], int] = defaultdict(int)
    for old, new in ops:
        for version in (old, new):
            for cell in cells_for(version, WINDOWS, CUSTOMER_WINDOWS) if version is not None else ():
                for name in cell_contributions(version, cell):
                    touches[(cell, name)] += 1
    for (cell, name), record in last.items():
        metric = METRICS[name]
        assert (record.numerator, record.denominator, record.value) == value_of(metric, stored[cell])
        assert record.revision == touches[(cell, metric.basis)]
