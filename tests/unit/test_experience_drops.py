"""Experience-drop decisions: a figure worse than its own baseline by the margin, on enough answers, beyond chance."""

from __future__ import annotations

from dataclasses import replace
from typing import get_args

import pytest

from schemas.outputs import ExperienceDropAlert, MetricScope, WatchedMetric
from streams.domain.aggregate import CellKey
from streams.domain.experience_drops import (
    WORSE,
    Drop,
    DropPolicy,
    answer_variance,
    decide,
    firing,
    needed,
    redecide,
    to_alert,
    to_check,
)
from streams.domain.metrics import Counters

DAY = 86400
T0 = 19_800 * DAY  # a UTC midnight
POLICY = DropPolicy(
    window="1d", window_s=DAY, baseline_windows=7, margins={"csat": 15.0, "experience_gap": 15.0}, min_answers=30
)


def day(n: int, key: str = "phone", scope: MetricScope = MetricScope.CHANNEL) -> CellKey:
    return CellKey(scope, key, "1d", T0 + n * DAY)


def csat(answers: int, satisfied: int) -> Counters:
    return {"touchpoints": answers, "csat_answers": answers, "csat_satisfied": satisfied}


def week_then(today: Counters, baseline: Counters | None = None) -> dict[CellKey, Counters]:
    """Seven days of ``baseline`` (80% satisfied of 100 answers by default), then ``today`` on day 7."""
    cells = {day(n): dict(baseline or csat(100, 80)) for n in range(7)}
    cells[day(7)] = today
    return cells


def decision(cells: dict[CellKey, Counters], metric: str = "csat", policy: DropPolicy = POLICY) -> Drop:
    (found,) = [d for d in decide(day(7), cells, policy) if d.metric == metric]
    return found


def test_a_channel_whose_csat_halves_fires_and_a_steady_one_does_not() -> None:
    assert decision(week_then(csat(60, 24))).firing  # 40% against 80%
    steady = decision(week_then(csat(60, 47)))  # 78%: within the margin
    assert not steady.firing and steady.value == pytest.approx(100 * 47 / 60) and steady.baseline == 80.0


def test_too_few_answers_never_fire_however_bad() -> None:
    assert not decision(week_then(csat(29, 0))).firing
    assert decision(week_then(csat(30, 0))).firing


def test_a_drop_past_the_margin_within_chance_does_not_fire() -> None:
    # 30 answers at 60% against 80%: 20 points worse, but about 2.6 standard errors.
    drop = decision(week_then(csat(30, 18)))
    assert drop.value == 60.0 and 2 < drop.z < 3 and not drop.firing
    assert decision(week_then(csat(30, 18)), policy=replace(POLICY, min_z=2.0)).firing


def test_a_baseline_mostly_before_the_data_is_no_baseline_but_a_closed_day_is_no_gap() -> None:
    cells = week_then(csat(60, 0))
    del cells[day(0)]  # six days of data before day 7: the data started after the baseline did
    assert not decision(cells).firing
    closed_on_sundays = week_then(csat(60, 0))
    del closed_on_sundays[day(2)]
    assert decision(closed_on_sundays).firing
    for n in (1, 3, 4, 5):
        del closed_on_sundays[day(n)]  # two days of seven: too few
    assert not decision(closed_on_sundays).firing


def test_higher_is_worse_for_the_experience_gap() -> None:
    gap = {"touchpoints": 1, "resolutions": 40, "contradicted_resolutions": 24}
    usual = {"touchpoints": 1, "resolutions": 40, "contradicted_resolutions": 4}
    assert decision(week_then(gap, usual), "experience_gap").firing
    assert not decision(week_then(usual, gap), "experience_gap").firing  # the gap closing is no alarm


def test_ids_are_one_per_scope_key_metric_and_window() -> None:
    one = decision(week_then(csat(60, 24)))
    again = decision(week_then(csat(61, 20)))
    assert one.alert_id == again.alert_id
    other_day = [d for d in decide(day(8), week_then(csat(60, 24)), POLICY) if d.metric == "csat"]
    assert other_day and other_day[0].alert_id != one.alert_id
    overall = decide(day(7, "all", MetricScope.OVERALL), {day(7, "all", MetricScope.OVERALL): csat(1, 1)}, POLICY)
    assert {d.alert_id for d in overall}.isdisjoint({one.alert_id})


def test_a_change_to_a_cell_redecides_it_and_the_windows_whose_baseline_it_is() -> None:
    check = to_check(
        [day(3), day(3, "phone", MetricScope.CUSTOMER), CellKey(MetricScope.CHANNEL, "phone", "1h", T0)], POLICY
    )
    assert check == {day(n) for n in range(3, 11)}
    assert needed({day(10)}, POLICY) == {day(n) for n in range(3, 11)}


def test_redecide_stores_firing_alerts_and_publishes_only_changes_of_status() -> None:
    cells = week_then(csat(60, 24))
    first = redecide([day(7)], cells, {}, POLICY)
    assert [(d.drop.metric, d.drop.status, d.changed) for d in first] == [("csat", "firing", True)]
    alert_id = first[0].drop.alert_id
    again = redecide([day(7)], cells, {alert_id: "firing"}, POLICY)
    assert [(d.drop.status, d.changed) for d in again] == [("firing", False)]  # figures refreshed, not published
    cells[day(7)] = csat(600, 470)  # late answers take it back within the margin
    back = redecide([day(7)], cells, {alert_id: "firing"}, POLICY)
    assert [(d.drop.status, d.changed) for d in back] == [("resolved", True)]
    assert redecide([day(7)], cells, {alert_id: "resolved"}, POLICY) == []
    assert set(firing(week_then(csat(60, 24)), POLICY)) == {alert_id}


def test_answer_variance_of_each_kind() -> None:
    assert answer_variance("csat", csat(100, 80)) == pytest.approx(1600.0)  # 0.8 * 0.2 in points squared
    nps = {"nps_answers": 10, "nps_promoters": 5, "nps_detractors": 5}
    assert answer_variance("nps", nps) == pytest.approx(10_000.0)  # half +1, half -1
    assert answer_variance("ces", {"ces_answers": 2, "ces_sum": 8}) == pytest.approx(9.0)  # mean 4: (4-1)(7-4)
    assert answer_variance("csat", {}) == 0.0


def test_every_watchable_metric_has_a_direction_and_the_record_reads_back() -> None:
    assert set(WORSE) == set(get_args(WatchedMetric))
    record = to_alert(decision(week_then(csat(60, 24))), POLICY, 7)
    assert ExperienceDropAlert.model_validate_json(record.model_dump_json()) == record
    assert record.status == "firing" and record.revision == 7
    assert record.window_end.timestamp() - record.window_start.timestamp() == DAY
    assert record.baseline_start.timestamp() == T0 and "csat on phone" in record.message
