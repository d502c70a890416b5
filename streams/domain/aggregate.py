"""Windowed metric aggregation: a batch of timeline entries becomes counter deltas per window cell.

The worker's cycle for one batch (all pure here; loading and writing belong to the worker)::

    agg = MetricAggregator(policy)                  # a MetricPolicy: windows and grace
    agg.add_counters(...)                           # merged customers' stored cells, under their survivor
    agg.add_batch(batch.entries, batch.replaced, moved)  # the stitcher's BatchResult; moved: merged id -> survivor
    current = load_counters(agg.touched())          # stored counters of those cells, from SQL
    out = agg.updates(current)                      # merged counters + a CellFigures per changed cell
    write(out.counters); publish(out.updates)       # in the transaction that stores the offsets

Revisions come from the counters themselves (``revision_of``): the number of entry versions added to or
withdrawn from the metric's basis. The last record of every cell is therefore the same however
the worker split the entries into batches; where the stitcher re-emits entries, the versions it emitted (which
depend on its own batching) are counted too, and the revision still only grows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Literal, NamedTuple

from schemas.outputs import MetricCellUpdate, MetricFigure, MetricScope
from schemas.touchpoint import EventType
from streams.domain.entry import Entry
from streams.domain.metrics import (
    METRICS_BY_SCOPE,
    RETRACTED,
    ROLLING_METRICS,
    ROLLING_SCOPES,
    ROLLING_SOURCE_WINDOW,
    ROLLING_WINDOWS,
    Counters,
    contributions,
    first_purchase_in_window,
    merge,
    retraction,
    revision_of,
    value_of,
)
from streams.domain.windows import ALL_TIME_END, ALL_TIME_START, Window, parse_window

#: Key of the overall scope.
OVERALL_KEY = "all"

_CUSTOMER = MetricScope.CUSTOMER
_CHANNEL = MetricScope.CHANNEL
_OVERALL = MetricScope.OVERALL
_PURCHASE = EventType.PURCHASE
_ALL_TIME_START_S = int(ALL_TIME_START.timestamp())
_Status = Literal["provisional", "final"]


@lru_cache(maxsize=64)
def _window(name: str) -> Window:
    return parse_window(name)


@lru_cache(maxsize=4096)
def _utc(seconds: int) -> datetime:
    # Window bounds repeat across cells and batches: one datetime per bound, not one per figure.
    return datetime.fromtimestamp(seconds, tz=UTC)


#: Scope -> the counters that move a metric's revision (its basis, or the basis's _retracted).
_REVISING: dict[MetricScope, frozenset[str]] = {
    scope: frozenset(c for m in metrics for c in (m.basis, RETRACTED[m.basis]))
    for scope, metrics in METRICS_BY_SCOPE.items()
}


class CellKey(NamedTuple):
    """One window cell: metrics of one scope key over one window; ``start`` is the window start in epoch seconds."""

    scope: MetricScope
    key: str
    window: str
    start: int

    @property
    def window_start(self) -> datetime:
        """Start of the window (inclusive)."""
        return _utc(self.start)

    @property
    def window_end(self) -> datetime:
        """End of the window (exclusive); the all-time window ends at ALL_TIME_END."""
        seconds = _window(self.window).seconds
        if seconds is None:
            return ALL_TIME_END
        return _utc(self.start + seconds)


def _starts(ts: int, seconds: Iterable[int | None]) -> tuple[int, ...]:
    # Window.bounds' arithmetic on one timestamp for all windows: a datetime per window would dominate add().
    return tuple(_ALL_TIME_START_S if s is None else ts - ts % s for s in seconds)


def cells_for(entry: Entry, windows: Sequence[Window], customer_windows: Sequence[Window]) -> list[CellKey]:
    """The cells an entry falls in: its customer's (``customer_windows``), its channel's and overall (``windows``)."""
    ts = int(entry.occurred_at.timestamp())
    cells = []
    scopes = [(_CHANNEL, entry.channel.value, windows), (_OVERALL, OVERALL_KEY, windows)]
    if entry.customer_id is not None:  # an unattributed touchpoint counts for its channel and overall only
        scopes.insert(0, (_CUSTOMER, entry.customer_id, customer_windows))
    for scope, key, wins in scopes:
        starts = _starts(ts, (w.seconds for w in wins))
        cells += [CellKey(scope, key, w.name, start) for w, start in zip(wins, starts, strict=True)]
    return cells


class MetricRow(NamedTuple):
    """One figure of one cell, as a row of the SQL ``metrics`` view and an ``ApiFigure`` of the read API."""

    scope: MetricScope
    key: str
    metric: str
    window: str
    window_start: datetime
    window_end: datetime
    numerator: float
    denominator: float
    value: float | None
    status: _Status
    revision: int


class Figure(NamedTuple):
    """One metric of a cell as a ``MetricCellUpdate`` record carries it (``MetricFigure``)."""

    metric: str
    numerator: float
    denominator: float
    value: float | None
    revision: int


class CellFigures(NamedTuple):
    """Every figure of one cell, as one ``MetricCellUpdate`` record publishes them.

    A record carries each metric the cell has, not only those a batch changed: the last record of a cell on the
    compacted topic is then the whole cell. ``revision`` is the sum of the figures' revisions, so it grows
    whenever one of them does and is the same however the worker split the entries into batches.
    """

    cell: CellKey
    status: _Status
    revision: int
    figures: tuple[Figure, ...]

    def rows(self) -> list[MetricRow]:
        """The figures as per-metric rows (the ``metrics`` view's shape)."""
        cell, status = self.cell, self.status
        start, end = cell.window_start, cell.window_end
        return [
            MetricRow(cell.scope, cell.key, f.metric, cell.window, start, end, *f[1:4], status, f.revision)
            for f in self.figures
        ]

    def model(self) -> MetricCellUpdate:
        """The validated ``MetricCellUpdate`` of this cell."""
        cell = self.cell
        return MetricCellUpdate(
            scope=cell.scope,
            key=cell.key,
            window=cell.window,
            window_start=cell.window_start,
            window_end=cell.window_end,
            status=self.status,
            revision=self.revision,
            figures={
                f.metric: MetricFigure(
                    numerator=f.numerator, denominator=f.denominator, value=f.value, revision=f.revision
                )
                for f in self.figures
            },
        )


def cell_figures(cell: CellKey, counters: Mapping[str, float], *, final: bool) -> CellFigures:
    """The record of a cell with ``counters``: every metric it has (a revision above 0), provisional, or final
    with each figure's revision + 1 (``finalise``), so that it supersedes the last provisional record."""
    bump = 1 if final else 0
    out = []
    total = 0
    for metric in METRICS_BY_SCOPE[cell.scope]:
        revision = revision_of(metric, counters)
        if revision:
            revision += bump
            total += revision
            out.append(Figure(metric.name, *value_of(metric, counters), revision))
    return CellFigures(cell, "final" if final else "provisional", total, tuple(out))


@dataclass(slots=True)
class AggregateResult:
    """What one batch produces: the new stored counters of every touched cell, and the records to publish."""

    counters: dict[CellKey, Counters] = field(default_factory=dict)
    #: A record for every cell whose figures changed.
    updates: list[CellFigures] = field(default_factory=list)
    #: The cells among ``counters`` whose window had closed already: stored final, their figures published final.
    final: set[CellKey] = field(default_factory=set)

    def extend(self, other: AggregateResult) -> None:
        """Add the cells of ``other`` (another part of the same batch: ``MetricAggregator.updates``'s ``scope``)."""
        self.counters.update(other.counters)
        self.updates.extend(other.updates)
        self.final.update(other.final)


def figures(cell: CellKey, counters: Mapping[str, float], *, final: bool) -> list[MetricRow]:
    """Every figure of a cell as per-metric rows, as the ``metrics`` view and the read API give them: the
    figures of ``cell_figures``. The SQL ``metrics`` view computes the same from the stored counters
    (``sinks.metrics_view``)."""
    return cell_figures(cell, counters, final=final).rows()


def rolling_figures(daily: Mapping[CellKey, Mapping[str, float]], today: datetime) -> list[MetricRow]:
    """The rolling figures as of ``today`` (a UTC midnight): per scope and key, each rolling window's daily cells
    (the ``1d`` cells of the last N days, today's included) summed, each metric that adds up across days computed
    over the sum. No extra state: the ``metrics`` view computes the same in SQL (``sinks.metrics_view``)."""
    end = today + timedelta(days=1)
    rows: list[MetricRow] = []
    for name, days in ROLLING_WINDOWS.items():
        start = today - timedelta(days=days - 1)
        sums: dict[tuple[MetricScope, str], Counters] = {}
        for cell, counters in daily.items():
            if (
                cell.window == ROLLING_SOURCE_WINDOW
                and cell.scope in ROLLING_SCOPES
                and start <= cell.window_start < end
            ):
                merge(sums.setdefault((cell.scope, cell.key), {}), counters)
        for (scope, key), counters in sums.items():
            for metric in METRICS_BY_SCOPE[scope]:
                revision = revision_of(metric, counters)
                if metric.name in ROLLING_METRICS and revision:
                    rows.append(
                        MetricRow(
                            scope,
                            key,
                            metric.name,
                            name,
                            start,
                            end,
                            *value_of(metric, counters),
                            "provisional",
                            revision,
                        )
                    )
    return rows


@dataclass(frozen=True, slots=True)
class MetricPolicy:
    """What metric aggregation reads: its windows and their grace (built by ``streams.policies``)."""

    #: Windows of the channel and overall scopes.
    windows: tuple[Window, ...]
    #: Windows of the customer scope.
    customer_windows: tuple[Window, ...]
    #: A window closes (its figures turn final) once the watermark passes its end plus this, seconds.
    grace_s: float


class MetricAggregator:
    """Accumulates one batch of timeline entries into counter deltas per cell, then merges them into stored ones."""

    def __init__(self, policy: MetricPolicy):
        """Aggregate channel and overall scopes over ``policy.windows``, customers over ``policy.customer_windows``."""
        self.windows = policy.windows
        self.customer_windows = policy.customer_windows
        self.grace_s = policy.grace_s
        # A group in add() spans several windows but purchasers differs by window: it is kept per window
        # index under a private name until _spread() moves it to its cell.
        self._purchasers_at = tuple(
            f"purchasers@{i}" for i in range(max(len(self.windows), len(self.customer_windows)))
        )
        self._seconds = tuple(w.seconds for w in self.windows)
        self._customer_seconds = tuple(w.seconds for w in self.customer_windows)
        self._groups: dict[tuple[MetricScope, str, tuple[int, ...]], Counters] = {}
        self._deltas: dict[CellKey, Counters] = {}

    def add(self, entry: Entry) -> None:
        """Add one timeline entry (a new event, or the new version of a re-emitted one) to the batch."""
        self._apply(entry, contributions(entry), 1)

    def retract(self, entry: Entry) -> None:
        """Withdraw the version a re-emitted entry replaces (the stitcher's ``replaced``); then add the new one."""
        self._apply(entry, retraction(contributions(entry)), -1)

    def add_batch(self, entries: Iterable[Entry], replaced: Mapping[str, Entry], moved: Mapping[str, str]) -> None:
        """Add a batch's entries (the stitcher's ``BatchResult.entries``), each re-emitted one after withdrawing
        the version it replaces (``replaced``).

        ``moved``: merged customer id -> survivor id, for the customers whose cells the batch's merges folded into
        the survivor's (``add_counters``). A replaced version counted under such a customer is withdrawn from the
        survivor's cells, where its counts now are: a split re-emits its customer's entries, replacing versions
        under the id it split, and a merge in the same batch may then fold that id into another customer.
        """
        for entry in entries:
            old = replaced.get(entry.event_id)
            if old is not None:
                survivor = moved.get(old.customer_id) if old.customer_id is not None else None
                self.retract(old if survivor is None else replace(old, customer_id=survivor))
            self.add(entry)

    def _apply(self, entry: Entry, contrib: Counters, sign: int) -> None:
        # Entries are summed per (scope, key, window starts) group, one dict merge per scope instead of one per
        # window; groups are spread over their window cells once per batch, in _spread().
        items = contrib.items()
        ts = int(entry.occurred_at.timestamp())
        starts = _starts(ts, self._seconds)
        customer_starts = _starts(ts, self._customer_seconds)
        purchase = entry.type is _PURCHASE
        groups = self._groups
        scopes: tuple[tuple[MetricScope, str, tuple[int, ...]], ...] = (
            (_CHANNEL, entry.channel.value, starts),
            (_OVERALL, OVERALL_KEY, starts),
        )
        if entry.customer_id is not None:  # an unattributed touchpoint counts for its channel and overall only
            scopes = ((_CUSTOMER, entry.customer_id, customer_starts), *scopes)
        for group in scopes:
            delta = groups.get(group)
            if delta is None:
                groups[group] = delta = dict(contrib)
            else:
                for name, count in items:
                    delta[name] = delta.get(name, 0) + count
            if purchase and group[0] is not _CHANNEL:
                for i, start in enumerate(group[2]):
                    if first_purchase_in_window(entry, start * 1_000_000):
                        name = self._purchasers_at[i]
                        delta[name] = delta.get(name, 0) + sign

    def add_counters(self, cell: CellKey, counters: Mapping[str, float]) -> None:
        """Add whole counters to a cell: how a merged customer's cells move into the survivor's."""
        merge(self._deltas.setdefault(cell, {}), counters)

    def _spread(self) -> dict[CellKey, Counters]:
        per_window = set(self._purchasers_at)
        for (scope, key, starts), delta in self._groups.items():
            shared = [(name, count) for name, count in delta.items() if name not in per_window]
            windows = self.customer_windows if scope is _CUSTOMER else self.windows
            for i, (window, start) in enumerate(zip(windows, starts, strict=True)):
                cell = CellKey(scope, key, window.name, start)
                target = self._deltas.setdefault(cell, {})
                for name, count in shared:
                    target[name] = target.get(name, 0) + count
                purchasers = delta.get(self._purchasers_at[i])
                if purchasers:
                    target["purchasers"] = target.get("purchasers", 0) + purchasers
        self._groups = {}
        return self._deltas

    def touched(self) -> list[CellKey]:
        """Cells the batch changes: the worker loads their stored counters before ``updates``."""
        return list(self._spread())

    def updates(
        self,
        current: Mapping[CellKey, Mapping[str, float]],
        watermark: datetime | None = None,
        scope: MetricScope | None = None,
    ) -> AggregateResult:
        """Merge the batch into ``current`` (stored counters; a missing cell is empty) and start a new batch.

        A record is produced for every cell with a metric whose revision (``revision_of``) grew in this batch,
        which is whenever an entry version changing its numerator or denominator was added or withdrawn. A cell
        that closed at or before ``watermark`` stays final: late events revise it with final records (each
        figure's revision + 1, as ``finalise`` publishes them).

        ``scope``: merge only that scope's cells; the others stay for the next call (``touched`` lists them).
        """
        result = AggregateResult()
        deltas = self._spread()
        if scope is None:
            self._deltas = {}
        else:
            self._deltas = {cell: delta for cell, delta in deltas.items() if cell.scope is not scope}
            deltas = {cell: delta for cell, delta in deltas.items() if cell.scope is scope}
        for cell, delta in deltas.items():
            # Zeros are dropped (a withdrawn version can bring a counter back to 0): a missing counter is 0.
            counters = {k: v for k, v in merge(dict(current.get(cell, {})), delta).items() if v}
            result.counters[cell] = counters
            closes = self.closes_at(cell)
            final = watermark is not None and closes is not None and closes <= watermark
            if final:
                result.final.add(cell)
            revising = _REVISING[cell.scope]
            if any(count and name in revising for name, count in delta.items()):
                result.updates.append(cell_figures(cell, counters, final=final))
        return result

    def close(self, result: AggregateResult, watermark: datetime | None) -> None:
        """Turn final the cells of ``result`` that closed at or before ``watermark``, a watermark later than the one
        ``updates`` was given: stored final, and their records re-made final (a cell closed stays final)."""
        if watermark is None:
            return
        closed = {
            cell
            for cell in result.counters
            if cell not in result.final and (closes := self.closes_at(cell)) is not None and closes <= watermark
        }
        if closed:
            result.final |= closed
            result.updates = [
                cell_figures(u.cell, result.counters[u.cell], final=True) if u.cell in closed else u
                for u in result.updates
            ]

    def closes_at(self, cell: CellKey) -> datetime | None:
        """When a cell becomes final: window end + grace; None for the all-time window."""
        if _window(cell.window).seconds is None:
            return None
        return cell.window_end + timedelta(seconds=self.grace_s)

    def finalise(
        self, cells: Mapping[CellKey, Mapping[str, float]], watermark: datetime, since: datetime | None = None
    ) -> list[CellFigures]:
        """Final records of the cells that closed at or before ``watermark`` (and after ``since``, if given).

        Every figure of the cell is re-published with status final and its revision + 1, so the record
        supersedes the last provisional one. A later event still revises it, with final records.
        """
        out: list[CellFigures] = []
        for cell, counters in cells.items():
            closes = self.closes_at(cell)
            if closes is None or closes > watermark or (since is not None and closes <= since):
                continue
            out.append(cell_figures(cell, counters, final=True))
        return out
