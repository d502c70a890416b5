"""The engagement score: how much, how recently and how happily a customer deals with the company, in [0, 100].

Every event of a customer contributes a *tally* (:func:`tally`), counted in the week it occurred (weeks of
:data:`WEEK_S` from the Unix epoch):

- a journey touchpoint (``stages.is_journey_event``) other than a purchase or an identify call: one *touch*;
- a purchase: one *purchase*;
- a survey answer (any event's ``[nps, csat, ces]``): *positive* when no answer is low and one is high, *negative*
  when one is low (:data:`HIGH` and :data:`LOW`, per answer: NPS 9-10 / 0-6, CSAT 4-5 / 1-2, CES 5-7 / 1-3);
- each of its negative moments but ``detractor`` (the survey already counts): complaint, issue_unresolved, return,
  late_delivery.

Recency weighs each week by ``2 ** (-7 * age / half_life_days)``, its age in weeks counted from the week of the
customer's latest event (not the wall clock: the score is a function of the customer's events alone), over the
``horizon_weeks`` weeks up to it. With the weights of :class:`EngagementPolicy`::

    E = sum over weeks b of 2 ** (-7 * age_b / half_life_days)
        * (touch * touches_b + purchase * purchases_b + positive_survey * positives_b
           - negative_survey * negatives_b - negative_moment * moments_b)
    score = round(100 * (1 - exp(-max(E, 0) / scale)), 1)

A customer's state keeps the week counts (integers, so any order of adding them gives the same counts) of the
horizon only; the float sum runs over the weeks in order, so equal counts give the same score to the last bit.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from schemas.outputs import ENGAGEMENT_WEIGHTS, NEGATIVE_MOMENTS, Moment
from schemas.touchpoint import EventType
from streams.domain.stages import is_journey_event

#: The width of a week bucket, seconds.
WEEK_S = 7 * 86400
#: Per survey answer (NPS, CSAT, CES): the lowest high answer and the highest low answer.
HIGH = (9, 4, 5)
LOW = (6, 2, 3)
#: The moments a tally counts as negative (``detractor`` is counted as a negative survey instead).
TALLIED_MOMENTS: frozenset[str] = frozenset(m.value for m in NEGATIVE_MOMENTS if m is not Moment.DETRACTOR)
#: What a week bucket counts, after its week: ``[week, touches, purchases, positives, negatives, moments]``.
COUNTS = ("touches", "purchases", "positive_surveys", "negative_surveys", "negative_moments")
#: The weight names of ``CXSTREAM_ENGAGEMENT_WEIGHTS``, in :data:`COUNTS` order.
WEIGHT_NAMES = ("touch", "purchase", "positive_survey", "negative_survey", "negative_moment")

_PURCHASE = EventType.PURCHASE.value
# Identify calls are profile updates (a login, a CRM sync re-sending everyone's traits), not dealings: counted, they
# would raise every synced customer's score and move their latest week.
_JOURNEY: frozenset[str] = frozenset(
    t.value for t in EventType if is_journey_event(t) and t not in (EventType.PURCHASE, EventType.IDENTIFY)
)

Tally = tuple[int, int, int, int, int]
_WEEK = itemgetter(0)


@dataclass(frozen=True, slots=True)
class EngagementPolicy:
    """The score's parameters (``CXSTREAM_ENGAGEMENT_*``)."""

    half_life_days: float = 28.0
    scale: float = 20.0
    horizon_weeks: int = 52
    #: Weights in :data:`WEIGHT_NAMES` order; the negative kinds are subtracted, so given as positive numbers.
    weights: tuple[float, ...] = tuple(ENGAGEMENT_WEIGHTS[name] for name in WEIGHT_NAMES)
    #: Signed weights in :data:`COUNTS` order, and the decay factor of each age in weeks (derived).
    signed: tuple[float, ...] = field(init=False, repr=False, compare=False)
    decay: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        signs = (1.0, 1.0, 1.0, -1.0, -1.0)
        object.__setattr__(self, "signed", tuple(s * float(w) for s, w in zip(signs, self.weights, strict=True)))
        factors = tuple(2.0 ** (-7.0 * age / self.half_life_days) for age in range(self.horizon_weeks))
        object.__setattr__(self, "decay", factors)


def week_of(t: float) -> int:
    """The week bucket of an event time (seconds since the epoch)."""
    return math.floor(t / WEEK_S)


def tally(kind: str, survey: list[Any] | tuple[Any, ...] | None, moments: Iterable[str]) -> Tally | None:
    """What one event adds to its week: (touches, purchases, positive surveys, negative surveys, negative moments);
    None when it adds nothing."""
    touches = 1 if kind in _JOURNEY else 0
    purchases = 1 if kind == _PURCHASE else 0
    positive = negative = 0
    if survey is not None:
        low = high = False
        for answer, low_max, high_min in zip(survey, LOW, HIGH, strict=True):
            if answer is not None:
                low = low or answer <= low_max
                high = high or answer >= high_min
        if low:
            negative = 1
        elif high:
            positive = 1
    bad = sum(1 for m in moments if m in TALLIED_MOMENTS)
    if not (touches or purchases or positive or negative or bad):
        return None
    return (touches, purchases, positive, negative, bad)


def add_tally(buckets: list[list[int]], week: int, counts: Tally) -> None:
    """Count ``counts`` in ``week`` of ``buckets`` (``[week, *counts]`` rows sorted by week)."""
    if buckets and buckets[-1][0] == week:
        row = buckets[-1]
    else:
        i = bisect_left(buckets, week, key=_WEEK)
        if i < len(buckets) and buckets[i][0] == week:
            row = buckets[i]
        else:
            row = [week, 0, 0, 0, 0, 0]
            buckets.insert(i, row)
    for j, n in enumerate(counts, 1):
        row[j] += n


def merge_buckets(mine: list[list[int]], other: list[list[int]]) -> list[list[int]]:
    """The week counts of both (summed where they share a week), sorted by week."""
    merged = {row[0]: list(row) for row in mine}
    for row in other:
        held = merged.get(row[0])
        if held is None:
            merged[row[0]] = list(row)
        else:
            for j in range(1, len(row)):
                held[j] += row[j]
    return [merged[week] for week in sorted(merged)]


def oldest_week(latest_week: int, policy: EngagementPolicy) -> int:
    """The first week the score counts (and a state keeps), given the week of the customer's latest event."""
    return latest_week - policy.horizon_weeks + 1


def prune_buckets(buckets: list[list[int]], latest_week: int, policy: EngagementPolicy) -> None:
    """Forget the weeks before the horizon."""
    i = bisect_left(buckets, oldest_week(latest_week, policy), key=_WEEK)
    if i:
        del buckets[:i]


def score(buckets: Iterable[list[int]], latest_week: int, policy: EngagementPolicy) -> float:
    """The engagement score of week counts (sorted by week), as of ``latest_week`` (see the module docstring)."""
    oldest = oldest_week(latest_week, policy)
    signed, decay = policy.signed, policy.decay
    a, b, c, d, e = signed
    total = 0.0
    for week, touches, purchases, positives, negatives, moments in buckets:
        if week < oldest:
            continue
        value = a * touches + b * purchases + c * positives + d * negatives + e * moments
        total += value * decay[latest_week - week]
    if total <= 0.0:
        return 0.0
    return round(-100.0 * math.expm1(-total / policy.scale), 1)


def nearest_rank(counts: Mapping[float, int], q: float) -> float | None:
    """The ``q`` quantile (0 < q <= 1) of a distribution given as value -> how many: the smallest value with at least
    ``q`` of them at or below it (nearest rank); None when empty."""
    n = sum(counts.values())
    if not n:
        return None
    rank = max(1, math.ceil(q * n - 1e-9))
    seen = 0
    for value in sorted(counts):
        seen += counts[value]
        if seen >= rank:
            return value
    return max(counts)
