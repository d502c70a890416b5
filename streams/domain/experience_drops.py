"""Alerts on the whole: a channel's (or the company's) experience falling below its own baseline.

Per-customer rules (``streams.domain.alerts``) see one person; a channel whose CSAT halves over a day raises
nothing there. Here each window cell of the *short* window (``DropPolicy.window``, a tumbling metric window of
the channel and overall scopes, ``1d`` by default) is compared with its *baseline*: the counters of the
``baseline_windows`` cells before it, summed. A watched metric whose short figure is worse than the baseline's
by at least its margin fires, provided that

- both figures rest on at least ``min_answers`` (the metric's denominator: answers for NPS and CSAT, issues for
  FCR, resolutions for the experience gap, contacts for the repeat-contact rate),
- the difference is at least ``min_z`` standard errors (a two-sample z score, ``answer_variance``), so that the
  chance spread of a few dozen answers does not fire it,
- and the baseline's first window and at least half of its windows hold data (a baseline that starts before the
  data is none).

Everything is decided from the cells' counters, which are the same whatever the arrival order and batch cuts;
a decision is therefore a function of the cells, and the worker re-decides every cell whose short window or
baseline a batch changed (``to_check``). An alert id is derived from the scope, key, metric, window and window
start, so a cell's alert is one alert however often it is decided; when later events take the figure back
within the margin the alert is resolved (same id, status ``resolved``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, NamedTuple

from schemas.outputs import ExperienceDropAlert, MetricScope
from streams.domain.aggregate import CellKey
from streams.domain.metrics import METRICS_BY_SCOPE, Counters, merge, value_of

RULE = "experience_drop"

#: Metrics an experience-drop alert can watch, and which way is worse: -1 when a lower figure is worse (NPS,
#: CSAT, FCR, CES), +1 when a higher one is (the experience gap, the repeat-contact rate).
WORSE: dict[str, int] = {
    "nps": -1,
    "csat": -1,
    "ces": -1,
    "fcr": -1,
    "confirmed_fcr": -1,
    "experience_gap": 1,
    "repeat_contact_rate": 1,
}

#: Scopes watched: the channel and overall cells (a customer's cells are the per-customer rules' business).
SCOPES: frozenset[MetricScope] = frozenset({MetricScope.CHANNEL, MetricScope.OVERALL})

Status = Literal["firing", "resolved"]


@dataclass(frozen=True, slots=True)
class DropPolicy:
    """What experience-drop alerts compare (built by ``streams.policies`` from the settings)."""

    #: The short window: a tumbling metric window of the channel and overall scopes.
    window: str
    window_s: int
    #: How many short windows before the current one make its baseline.
    baseline_windows: int
    #: Watched metric -> how much worse than the baseline (in the metric's own unit: points) fires.
    margins: Mapping[str, float]
    #: Both the short window's and the baseline's denominator must reach this.
    min_answers: int
    #: The drop must also be this many standard errors of the difference (a two-sample z score): a margin
    #: alone is crossed by chance often where a window holds a few dozen answers.
    min_z: float = 3.0


class Drop(NamedTuple):
    """One watched metric of one short-window cell, as decided from the cells: firing or not."""

    alert_id: str
    scope: MetricScope
    key: str
    metric: str
    window: str
    window_start: int
    value: float | None
    baseline: float | None
    answers: int
    baseline_answers: int
    #: How many standard errors worse than the baseline (0 when there is no figure to compare).
    z: float
    firing: bool

    @property
    def status(self) -> Status:
        """``firing`` or ``resolved``."""
        return "firing" if self.firing else "resolved"


def answer_variance(metric: str, counters: Mapping[str, float]) -> float:
    """The variance of one answer (one issue, one contact) of ``metric`` over ``counters``, in the metric's unit
    squared: the spread its standard error comes from.

    Rates (CSAT, FCR, the gap, repeat contacts) are shares of yes/no answers: p(1-p), in percentage points. An
    NPS answer is +1, 0 or -1 (x 100). CES keeps no sum of squares, so its variance is bounded from above by the
    most a 1-7 answer with that mean can vary, (mean - 1)(7 - mean): conservative, it fires later, never sooner.
    """
    _, n, value = value_of(metric, counters)
    if value is None or n <= 0:
        return 0.0
    if metric == "nps":
        promoters, detractors = counters.get("nps_promoters", 0) / n, counters.get("nps_detractors", 0) / n
        return (promoters + detractors - (promoters - detractors) ** 2) * 100.0**2
    if metric == "ces":
        return max(0.0, (value - 1.0) * (7.0 - value))
    share = value / 100.0
    return share * (1.0 - share) * 100.0**2


def drop_alert_id(scope: str, key: str, metric: str, window: str, window_start: int) -> str:
    """Deterministic id of the experience-drop alert of one metric of one short-window cell."""
    digest = hashlib.sha256("\x1f".join((RULE, scope, key, metric, window, str(window_start))).encode()).hexdigest()
    return f"{RULE}-{digest[:24]}"


def alert_ids(cells: Iterable[CellKey], policy: DropPolicy) -> list[str]:
    """The ids of every watched metric's alert of ``cells``: whose stored status ``redecide`` needs."""
    return [drop_alert_id(c.scope.value, c.key, metric, c.window, c.start) for c in cells for metric in policy.margins]


def to_check(touched: Iterable[CellKey], policy: DropPolicy) -> set[CellKey]:
    """The short-window cells whose decisions a change to ``touched`` cells may change: each touched cell of the
    short window, and the cells whose baseline it is part of (the ``baseline_windows`` after it)."""
    out: set[CellKey] = set()
    for cell in touched:
        if cell.window == policy.window and cell.scope in SCOPES:
            out.update(
                cell._replace(start=cell.start + i * policy.window_s) for i in range(policy.baseline_windows + 1)
            )
    return out


def baseline_cells(cell: CellKey, policy: DropPolicy) -> list[CellKey]:
    """The cells whose counters make ``cell``'s baseline."""
    return [cell._replace(start=cell.start - i * policy.window_s) for i in range(1, policy.baseline_windows + 1)]


def needed(cells: Iterable[CellKey], policy: DropPolicy) -> set[CellKey]:
    """Every cell ``decide`` reads to decide ``cells``: each and its baseline cells."""
    out: set[CellKey] = set()
    for cell in cells:
        out.add(cell)
        out.update(baseline_cells(cell, policy))
    return out


def decide(cell: CellKey, counters: Mapping[CellKey, Mapping[str, float]], policy: DropPolicy) -> list[Drop]:
    """The decisions of one short-window cell, one per watched metric its scope has, from the stored counters of
    it and its baseline cells (a missing cell is empty: its figures are None and do not fire)."""
    short = counters.get(cell, {})
    baseline: Counters = {}
    # A baseline must start with the data and hold data in at least half its windows: right after the data starts
    # (a new deployment, a backfill's first days) a baseline of a few days describes another mix, and would fire
    # on the normal; a shop closed on Sundays still has one (its Sundays have no decisions to make either).
    held_windows = 0
    for before in baseline_cells(cell, policy):
        held = counters.get(before)
        if held:
            held_windows += 1
            merge(baseline, held)
    first = cell._replace(start=cell.start - policy.baseline_windows * policy.window_s)
    complete = bool(counters.get(first)) and 2 * held_windows >= policy.baseline_windows
    pooled = merge(dict(short), baseline)
    present = {m.name for m in METRICS_BY_SCOPE[cell.scope]}
    out = []
    for metric, margin in policy.margins.items():
        if metric not in present:
            continue
        _, answers, value = value_of(metric, short)
        _, baseline_answers, base = value_of(metric, baseline)
        z = 0.0
        if value is not None and base is not None:
            spread = answer_variance(metric, pooled) * (1 / answers + 1 / baseline_answers)
            worse = (value - base) * WORSE[metric]
            z = worse / math.sqrt(spread) if spread > 0 else 0.0
        firing = (
            complete
            and value is not None
            and base is not None
            and answers >= policy.min_answers
            and baseline_answers >= policy.min_answers
            and (value - base) * WORSE[metric] >= margin
            and z >= policy.min_z
        )
        out.append(
            Drop(
                drop_alert_id(cell.scope.value, cell.key, metric, cell.window, cell.start),
                cell.scope,
                cell.key,
                metric,
                cell.window,
                cell.start,
                value,
                base,
                int(answers),
                int(baseline_answers),
                round(z, 6),
                firing,
            )
        )
    return out


class Decision(NamedTuple):
    """A decision to store: a firing alert's figures, or a status change; ``changed``: publish it."""

    drop: Drop
    changed: bool


def redecide(
    cells: Iterable[CellKey],
    counters: Mapping[CellKey, Mapping[str, float]],
    stored: Mapping[str, Status | str],
    policy: DropPolicy,
) -> list[Decision]:
    """The worker's step after a batch changed ``cells`` (``to_check`` of its touched cells): decide them again
    from ``counters`` (the cells ``needed``) and, against ``stored`` (alert id -> status of the alerts with a
    row), say what to store and publish. A firing alert is stored with its latest figures; one that stops
    firing is stored and published resolved; one that never fired leaves nothing."""
    out = []
    for cell in sorted(cells):
        for drop in decide(cell, counters, policy):
            before = stored.get(drop.alert_id)
            if drop.firing or before == "firing":
                out.append(Decision(drop, before != drop.status))
    return out


def firing(counters: Mapping[CellKey, Mapping[str, float]], policy: DropPolicy) -> dict[str, Drop]:
    """Every firing alert of a whole set of cells, by id: the batch oracle of what the worker's decisions end at."""
    out: dict[str, Drop] = {}
    for cell in counters:
        if cell.window == policy.window and cell.scope in SCOPES:
            for drop in decide(cell, counters, policy):
                if drop.firing:
                    out[drop.alert_id] = drop
    return out


def _utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _figure(value: float | None) -> str:
    return "none" if value is None else f"{value:.1f}"


def to_alert(drop: Drop, policy: DropPolicy, revision: int) -> ExperienceDropAlert:
    """The published record of a decision made by the group's batch ``revision`` (its commit sequence)."""
    margin = policy.margins[drop.metric]
    where = "overall" if drop.scope is MetricScope.OVERALL else f"on {drop.key}"
    message = (
        f"{drop.metric} {where} over the {drop.window} from {_utc(drop.window_start).isoformat()}: "
        f"{_figure(drop.value)} ({drop.answers}) against {_figure(drop.baseline)} ({drop.baseline_answers}) over "
        f"the {policy.baseline_windows} windows before, {drop.z:.1f} standard errors; fires at {margin:g} worse "
        f"and {policy.min_z:g} standard errors"
    )
    return ExperienceDropAlert(
        alert_id=drop.alert_id,
        status=drop.status,
        scope=drop.scope,
        key=drop.key,
        metric=drop.metric,  # type: ignore[arg-type]  # a key of margins: a WatchedMetric
        window=drop.window,
        window_start=_utc(drop.window_start),
        window_end=_utc(drop.window_start + policy.window_s),
        baseline_start=_utc(drop.window_start - policy.baseline_windows * policy.window_s),
        value=drop.value,
        baseline=drop.baseline,
        answers=drop.answers,
        baseline_answers=drop.baseline_answers,
        margin=margin,
        z=drop.z,
        revision=revision,
        message=message,
    )
