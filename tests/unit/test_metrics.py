"""Metric formulas, per-entry contributions, and the windowed aggregator, against hand-computed figures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from config.topics import Topics
from schemas.outputs import MetricCellUpdate, MetricScope, Stage, TimelineEntry
from schemas.touchpoint import Channel, EventType, SurveyAnswers
from streams.domain.aggregate import (
    OVERALL_KEY,
    CellFigures,
    CellKey,
    MetricAggregator,
    MetricPolicy,
    MetricRow,
    cell_figures,
    cells_for,
)
from streams.domain.metrics import (
    COUNTERS,
    METRICS,
    METRICS_BY_SCOPE,
    Counters,
    channel_counter,
    contributions,
    first_purchase_in_window,
    merge,
    metrics_markdown,
    value_of,
)
from streams.domain.windows import ALL_TIME_END, ALL_TIME_START, parse_window
from streams.downstream import Outputs
from streams.result_records import ResultRecords

T0 = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
DAY = 86400.0
WINDOWS = tuple(parse_window(w) for w in ("1h", "1d", "7d", "30d", "all"))
CUSTOMER_WINDOWS = tuple(parse_window(w) for w in ("30d", "all"))


def entry(event_id: str = "e1", **fields: Any) -> TimelineEntry:
    """A timeline entry with neutral defaults: a web page view by customer c1 at T0."""
    base: dict[str, Any] = {
        "customer_id": "c1",
        "event_id": event_id,
        "channel": Channel.WEB,
        "type": EventType.PAGE_VIEW,
        "occurred_at": T0,
        "received_at": T0,
        "stage": Stage.PRE_PURCHASE,
    }
    base.update(fields)
    return TimelineEntry(**base)


def survey(event_id: str, **scores: int) -> TimelineEntry:
    return entry(event_id, type=EventType.SURVEY, stage=Stage.POST_PURCHASE, survey=SurveyAnswers(**scores))


def contact(event_id: str, number: int = 1, **fields: Any) -> TimelineEntry:
    fields.setdefault("channel", Channel.PHONE)
    fields.setdefault("stage", Stage.POST_PURCHASE)
    fields.setdefault("type", EventType.SUPPORT_CONTACT)
    return entry(event_id, is_contact=True, contact_number=number, **fields)


def purchase(event_id: str, amount: str | None = "10.00", gap_s: float | None = None, **fields: Any) -> TimelineEntry:
    return entry(
        event_id,
        type=EventType.PURCHASE,
        stage=Stage.PURCHASE,
        amount=None if amount is None else Decimal(amount),
        time_since_last_purchase_s=gap_s,
        **fields,
    )


def total(*entries: TimelineEntry) -> Counters:
    out: Counters = {}
    for e in entries:
        merge(out, contributions(e))
    return out


def value(metric: str, *entries: TimelineEntry) -> float | None:
    return value_of(metric, total(*entries))[2]


# --- NPS, CSAT, CES -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("score", "kind"),
    [
        (0, "nps_detractors"),
        (6, "nps_detractors"),
        (7, "nps_passives"),
        (8, "nps_passives"),
        (9, "nps_promoters"),
        (10, "nps_promoters"),
    ],
)
def test_nps_boundaries(score: int, kind: str) -> None:
    c = contributions(survey("s", nps=score))
    assert c["nps_answers"] == 1
    assert {k for k in c if k.startswith("nps_") and k != "nps_answers"} == {kind}


def test_nps_formula() -> None:
    answers = [survey(f"s{i}", nps=n) for i, n in enumerate([10, 9, 8, 6])]
    assert value_of("nps", total(*answers)) == (1.0, 4.0, 25.0)
    assert value("nps", *[survey(f"d{i}", nps=n) for i, n in enumerate([0, 3, 6])]) == -100.0
    assert value("nps", survey("p", nps=9), survey("q", nps=10)) == 100.0
    assert value("nps", survey("x", nps=7), survey("y", nps=8)) == 0.0


def test_no_answers_gives_none() -> None:
    counters = total(entry("v"))
    for name in ("nps", "csat", "ces", "fcr", "repeat_contact_rate", "average_order_value", "time_to_resolution"):
        numerator, denominator, result = value_of(name, counters)
        assert (numerator, denominator, result) == (0.0, 0.0, None), name
    assert value_of("nps", {}) == (0.0, 0.0, None)


@pytest.mark.parametrize(("score", "satisfied"), [(1, 0), (2, 0), (3, 0), (4, 1), (5, 1)])
def test_csat_boundaries(score: int, satisfied: int) -> None:
    c = contributions(survey("s", csat=score))
    assert c["csat_answers"] == 1
    assert c.get("csat_satisfied", 0) == satisfied


def test_csat_and_ces_formulas() -> None:
    answers = [survey(f"s{i}", csat=c, ces=e) for i, (c, e) in enumerate([(5, 7), (4, 6), (3, 2), (1, 1)])]
    assert value_of("csat", total(*answers)) == (2.0, 4.0, 50.0)
    assert value_of("ces", total(*answers)) == (16.0, 4.0, 4.0)
    assert value("csat", survey("a", csat=3)) == 0.0


def test_one_survey_can_carry_all_three_scores() -> None:
    c = contributions(survey("s", nps=6, csat=4, ces=7))
    assert c["nps_detractors"] == c["csat_satisfied"] == c["ces_answers"] == 1
    assert c["ces_sum"] == 7


# --- service metrics ------------------------------------------------------------------------------------


def test_fcr_counts_issues_by_their_first_contact() -> None:
    entries = [
        contact("a1", 1, resolved=True),  # resolved at first contact
        contact("b1", 1, resolved=False),
        contact("b2", 2, resolved=True, repeat_contact=True),  # resolved, but not at the first contact
        contact("c1", 1),  # outcome unknown
    ]
    assert value_of("fcr", total(*entries)) == (1.0, 3.0, 100 / 3)
    assert value_of("repeat_contact_rate", total(*entries)) == (1.0, 4.0, 25.0)
    assert value_of("contacts", total(*entries)) == (4.0, 1.0, 4.0)


def test_switches_and_transfers_count_on_contacts_only() -> None:
    entries = [
        contact("a", 1, transfers=2),
        contact("b", 2, channel_switch=True, transfers=1),
        contact("c", 1),
        entry("v", transfers=5, channel_switch=True),  # not a contact: no effort signal
    ]
    counters = total(*entries)
    assert value_of("channel_switches", counters) == (1.0, 1.0, 1.0)
    assert value_of("channel_switches_per_contact", counters) == (1.0, 3.0, 1 / 3)
    assert value_of("transfers", counters) == (3.0, 1.0, 3.0)
    assert value_of("transfers_per_contact", counters) == (3.0, 3.0, 1.0)


def test_post_purchase_contacts_and_returns() -> None:
    entries = [
        contact("a", 1),
        contact("pre", 1, type=EventType.ENQUIRY, stage=Stage.PRE_PURCHASE),
        entry("r", type=EventType.RETURN, stage=Stage.POST_PURCHASE, channel=Channel.STORE),
    ]
    counters = total(*entries)
    assert counters["post_purchase_contacts"] == 1
    assert value_of("returns", counters) == (1.0, 1.0, 1.0)


def test_time_to_resolution_mean_in_seconds() -> None:
    counters = total(
        contact("a", 1, resolved=True, time_to_resolution_s=0.0), contact("b", 3, time_to_resolution_s=7.5)
    )
    assert counters["resolution_ms"] == 7500
    assert value_of("time_to_resolution", counters) == (7.5, 2.0, 3.75)


# --- purchase behaviour ---------------------------------------------------------------------------------


def test_visits_are_store_visits_and_page_views() -> None:
    entries = [
        entry("p"),
        entry("s", type=EventType.STORE_VISIT, channel=Channel.STORE),
        entry("v", type=EventType.PRODUCT_VIEW),
    ]
    assert value("visits", *entries) == 2.0
    assert value("touchpoints", *entries) == 3.0


def test_revenue_and_average_order_value() -> None:
    entries = [purchase("a", "19.99"), purchase("b", "0.0001"), purchase("c", None), purchase("d", "5.00005")]
    counters = total(*entries)
    # 5.00005 -> 50000.5 ten-thousandths -> 50000 (half-even): money counters are integers.
    assert counters["revenue_4dp"] == 199_900 + 1 + 50_000
    assert counters["priced_purchases"] == 3
    assert value_of("revenue", counters) == (24.9901, 1.0, 24.9901)
    assert value_of("average_order_value", counters) == (24.9901, 3.0, 24.9901 / 3)
    assert value_of("purchases", counters)[2] == 4.0


def test_time_between_purchases_uses_purchases_with_a_previous_one() -> None:
    entries = [
        purchase("a"),
        purchase("b", gap_s=2 * DAY),
        purchase("c", gap_s=4 * DAY),
        entry("v", time_since_last_purchase_s=5.0),
    ]
    counters = total(*entries)
    assert counters["purchase_gaps"] == 2
    assert value_of("time_between_purchases", counters) == (6 * DAY, 2.0, 3 * DAY)


def test_channel_mix_is_channel_count_over_all() -> None:
    entries = [entry("a"), entry("b"), entry("c", channel=Channel.STORE), entry("d", channel=Channel.PHONE)]
    counters = total(*entries)
    assert counters[channel_counter(Channel.WEB)] == 2
    assert value_of("channel_mix_web", counters) == (2.0, 4.0, 50.0)
    assert value_of("channel_mix_ecommerce", counters) == (0.0, 4.0, 0.0)


def test_first_purchase_in_window() -> None:
    start_us = int(datetime(2024, 5, 1, tzinfo=UTC).timestamp()) * 1_000_000
    assert first_purchase_in_window(purchase("a"), start_us)  # no previous purchase at all
    assert first_purchase_in_window(purchase("b", gap_s=12.5 * 3600 + 0.000001), start_us)  # previous before start
    assert not first_purchase_in_window(purchase("c", gap_s=12.5 * 3600), start_us)  # previous exactly at start
    assert not first_purchase_in_window(purchase("d", gap_s=60.0), start_us)
    assert not first_purchase_in_window(entry("v"), start_us)


# --- contributions and the registry ---------------------------------------------------------------------


def test_contributions_of_each_kind_of_entry() -> None:
    assert contributions(entry("v")) == {"touchpoints": 1, "touchpoints_web": 1, "visits": 1}
    assert contributions(purchase("p", "12.3456", gap_s=1.0, channel=Channel.STORE)) == {
        "touchpoints": 1,
        "touchpoints_store": 1,
        "purchases": 1,
        "priced_purchases": 1,
        "revenue_4dp": 123_456,
        "purchase_gaps": 1,
        "purchase_gap_ms": 1000,
    }
    assert contributions(contact("c", 2, repeat_contact=True, channel_switch=True, transfers=1)) == {
        "touchpoints": 1,
        "touchpoints_phone": 1,
        "contacts": 1,
        "repeat_contacts": 1,
        "channel_switches": 1,
        "transfers": 1,
        "post_purchase_contacts": 1,
    }
    assert contributions(survey("s", nps=9, csat=2, ces=5)) == {
        "touchpoints": 1,
        "touchpoints_web": 1,
        "nps_answers": 1,
        "nps_promoters": 1,
        "csat_answers": 1,
        "ces_answers": 1,
        "ces_sum": 5,
    }
    assert contributions(entry("r", type=EventType.RETURN, channel=Channel.ECOMMERCE)) == {
        "touchpoints": 1,
        "touchpoints_ecommerce": 1,
        "returns": 1,
    }


def test_registry_reads_only_documented_counters() -> None:
    for metric in METRICS.values():
        assert set(metric.counters) <= set(COUNTERS), metric.name
    assert {m.name for m in METRICS_BY_SCOPE[MetricScope.CHANNEL]} == set(METRICS) - {
        "purchase_frequency",
        *(f"channel_mix_{c}" for c in Channel),
    }


def test_docs_contain_the_generated_tables() -> None:
    docs = Path(__file__).resolve().parents[2] / "README.md"
    assert metrics_markdown() in docs.read_text()


# --- cells ----------------------------------------------------------------------------------------------


def test_cells_match_window_bounds() -> None:
    e = entry("v", occurred_at=datetime(2024, 5, 7, 23, 59, 59, 999_999, tzinfo=UTC))
    cells = cells_for(e, WINDOWS, CUSTOMER_WINDOWS)
    assert len(cells) == 2 + 5 + 5
    assert [c.scope for c in cells[:3]] == [MetricScope.CUSTOMER, MetricScope.CUSTOMER, MetricScope.CHANNEL]
    assert {c.key for c in cells} == {"c1", "web", OVERALL_KEY}
    for cell in cells:
        assert (cell.window_start, cell.window_end) == parse_window(cell.window).bounds(e.occurred_at)
    assert cells[1].window_start == ALL_TIME_START and cells[1].window_end == ALL_TIME_END


# --- aggregator -----------------------------------------------------------------------------------------


def aggregator(lateness_s: float = 3 * DAY) -> MetricAggregator:
    return MetricAggregator(MetricPolicy(WINDOWS, CUSTOMER_WINDOWS, lateness_s))


def cell(scope: MetricScope, key: str, window: str, at: datetime = T0) -> CellKey:
    start, _ = parse_window(window).bounds(at)
    return CellKey(scope, key, window, int(start.timestamp()))


def rows_of(records: list[CellFigures]) -> list[MetricRow]:
    """The figures of cell records as per-metric rows."""
    return [row for record in records for row in record.rows()]


def test_updates_merge_into_stored_counters_and_publish_each_changed_cell_whole() -> None:
    agg = aggregator()
    agg.add(survey("s1", nps=10))
    agg.add(entry("v1"))
    hour = cell(MetricScope.OVERALL, OVERALL_KEY, "1h")
    assert hour in agg.touched()
    stored = {hour: {"touchpoints": 3, "touchpoints_web": 3, "nps_answers": 1, "nps_detractors": 1, "returns": 2}}
    result = agg.updates(stored)
    assert result.counters[hour]["nps_answers"] == 2
    assert result.counters[hour]["touchpoints"] == 5
    assert stored[hour]["touchpoints"] == 3  # the caller's mapping is not mutated
    assert len({record.cell for record in result.updates}) == len(result.updates)  # one record per cell
    by_metric = {u.metric: u for u in rows_of(result.updates) if u.scope is MetricScope.OVERALL and u.window == "1h"}
    assert by_metric["nps"].value == 0.0 and by_metric["nps"].revision == 2
    assert by_metric["touchpoints"].revision == 5
    assert by_metric["channel_mix_web"].value == 100.0
    assert by_metric["nps"].window_start == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert by_metric["nps"].window_end == datetime(2024, 5, 1, 13, tzinfo=UTC)
    # The record is the whole cell: returns, which the batch did not change, is in it; metrics the cell never
    # counted are not.
    assert by_metric["returns"].value == 2.0 and by_metric["returns"].revision == 2
    assert "purchases" not in by_metric and "csat" not in by_metric
    (record,) = [u for u in result.updates if u.cell == hour]
    assert record.revision == sum(f.revision for f in record.figures)
    assert all(u.status == "provisional" for u in result.updates)
    assert agg.touched() == []  # updates() starts a new batch


def test_published_records_are_metric_cell_updates() -> None:
    agg = aggregator()
    agg.add(survey("s", nps=3, csat=5, ces=2))
    agg.add(purchase("p", "9.99"))
    updates = agg.updates({}).updates
    outputs = Outputs()
    ResultRecords(Topics("cx."), outputs).metrics(updates)
    assert len(outputs.records) == len(updates)
    for (topic, key, value, route), record in zip(outputs.records, updates, strict=True):
        model = record.model()
        assert isinstance(model, MetricCellUpdate)
        assert MetricCellUpdate.model_validate_json(value) == model
        assert model.revision == sum(f.revision for f in model.figures.values())
        assert topic == "cx.metrics"
        assert key == f"{model.scope.value}|{model.key}|{model.window}|{model.window_start.isoformat()}".encode()
        assert route == f"{model.scope.value}|{model.key}".encode()


def test_customer_cells_count_purchasers_per_window() -> None:
    agg = aggregator()
    agg.add(purchase("p1", "10"))
    agg.add(purchase("p2", "30", gap_s=3600.0, occurred_at=T0 + timedelta(hours=1)))
    agg.add(purchase("x", "5", customer_id="c2", occurred_at=T0, channel=Channel.STORE))
    counters = agg.updates({}).counters
    assert counters[cell(MetricScope.CUSTOMER, "c1", "30d")]["purchasers"] == 1
    assert value_of("purchase_frequency", counters[cell(MetricScope.CUSTOMER, "c1", "30d")])[2] == 2.0
    overall_day = counters[cell(MetricScope.OVERALL, OVERALL_KEY, "1d")]
    assert value_of("purchase_frequency", overall_day) == (3.0, 2.0, 1.5)
    assert value_of("average_order_value", overall_day)[2] == 15.0
    # p2 (13:30) is c1's first purchase of the 13:00 hour: the 12:00 hour holds p1 and c2's x.
    assert counters[cell(MetricScope.OVERALL, OVERALL_KEY, "1h")]["purchasers"] == 2
    assert "purchasers" not in counters[cell(MetricScope.CHANNEL, "web", "1d")]


def test_finalise_after_window_end_plus_lateness() -> None:
    agg = aggregator(lateness_s=3600)
    agg.add(entry("v1"))
    counters = agg.updates({}).counters
    hour = cell(MetricScope.CHANNEL, "web", "1h")
    end = datetime(2024, 5, 1, 13, tzinfo=UTC)
    assert agg.closes_at(hour) == end + timedelta(hours=1)
    assert agg.closes_at(cell(MetricScope.OVERALL, OVERALL_KEY, "all")) is None
    assert agg.finalise(counters, end + timedelta(minutes=59)) == []
    final = agg.finalise(counters, end + timedelta(hours=1))
    assert {(u.cell.scope, u.cell.window) for u in final} == {
        (MetricScope.CHANNEL, "1h"),
        (MetricScope.OVERALL, "1h"),
    }
    web = {u.metric: u for u in rows_of(final) if u.scope is MetricScope.CHANNEL}
    assert set(web) == {"touchpoints", "visits"}  # only metrics the cell has figures for
    assert web["touchpoints"].status == "final" and web["touchpoints"].revision == 2
    # Closed before the previous watermark: already finalised then.
    assert agg.finalise(counters, end + timedelta(hours=10), since=end + timedelta(hours=1)) == []
    later = agg.finalise(counters, end + timedelta(days=40), since=end + timedelta(hours=10))
    assert {u.cell.window for u in later} == {"1d", "7d", "30d"}
    assert all(u.status == "final" for u in later)


def test_updates_of_one_scope_leave_the_others_for_the_next_call() -> None:
    # The worker merges its customers' cells under their locks and the shared ones under the clock's.
    agg = aggregator()
    agg.add(entry("v1"))
    customers = agg.updates({}, scope=MetricScope.CUSTOMER)
    assert {c.scope for c in customers.counters} == {MetricScope.CUSTOMER}
    assert {c.scope for c in agg.touched()} == {MetricScope.CHANNEL, MetricScope.OVERALL}
    shared = agg.updates({})
    whole = aggregator()
    whole.add(entry("v1"))
    customers.extend(shared)
    assert customers.counters == whole.updates({}).counters
    assert agg.touched() == []


def test_close_turns_final_what_a_later_watermark_closed() -> None:
    # Decided under an earlier watermark; another worker's batch moved it past the 30d cell's close meanwhile: the
    # cell must not be written back provisional, nor its record published provisional after the final one.
    agg = aggregator(lateness_s=0)
    month = cell(MetricScope.CUSTOMER, "c1", "30d")
    agg.add(entry("v1"))
    result = agg.updates({month: {"touchpoints": 1, "touchpoints_web": 1}}, T0, scope=MetricScope.CUSTOMER)
    assert month not in result.final
    agg.close(result, T0)  # the same watermark: nothing closed
    assert result.final == set()
    later = agg.closes_at(month)
    assert later is not None
    agg.close(result, later)
    assert result.final == {month}  # the all-time cell never closes
    (record,) = [u for u in result.updates if u.cell == month]
    assert record.status == "final"
    assert record == cell_figures(month, result.counters[month], final=True)
    assert all(u.status == "provisional" for u in result.updates if u.cell != month)


def test_retract_replaces_a_re_emitted_version() -> None:
    agg = aggregator()
    day = cell(MetricScope.CHANNEL, "phone", "1d")
    first = contact("c2", 1, resolved=True)  # seen as the issue's first contact...
    agg.add(first)
    stored = agg.updates({}).counters
    assert value_of("fcr", stored[day]) == (1.0, 1.0, 100.0)
    # ...until a late earlier contact of the same issue renumbers it: the stitcher re-emits it with `replaced`.
    agg.add(contact("c1", 1, occurred_at=T0 - timedelta(minutes=5)))
    agg.retract(first)
    agg.add(contact("c2", 2, resolved=True, repeat_contact=True))
    result = agg.updates(stored)
    counters = result.counters[day]
    assert value_of("fcr", counters) == (0.0, 1.0, 0.0)
    assert value_of("repeat_contact_rate", counters) == (1.0, 2.0, 50.0)
    assert counters["issues_retracted"] == counters["contacts_retracted"] == 1
    assert "issues_resolved_first_contact" not in counters  # back to 0: dropped
    records = {u.metric: u for u in rows_of(result.updates) if u.scope is MetricScope.CHANNEL and u.window == "1d"}
    # Revisions count versions added and withdrawn: fcr 1 -> 3 although its basis is still 1.
    assert records["fcr"].revision == 3
    assert records["repeat_contact_rate"].revision == 4
    assert records["contacts"].value == 2.0


def test_retract_takes_back_a_purchaser() -> None:
    agg = aggregator()
    old = purchase("p", "10")
    agg.add(old)
    stored = agg.updates({}).counters
    agg.retract(old)
    agg.add(purchase("p", "10", gap_s=60.0))  # a late earlier purchase made it the second of the hour
    counters = agg.updates(stored).counters[cell(MetricScope.OVERALL, OVERALL_KEY, "1h")]
    assert "purchasers" not in counters and counters["purchases"] == 1
    assert value_of("purchase_frequency", counters)[2] is None


def test_add_counters_moves_a_merged_customer() -> None:
    agg = aggregator()
    survivor = cell(MetricScope.CUSTOMER, "c1", "all")
    agg.add_counters(survivor, {"touchpoints": 4, "touchpoints_web": 4, "returns": 1})
    result = agg.updates({survivor: {"touchpoints": 1, "touchpoints_store": 1}})
    assert result.counters[survivor] == {"touchpoints": 5, "touchpoints_store": 1, "touchpoints_web": 4, "returns": 1}
    assert {(u.metric, u.revision) for u in rows_of(result.updates)} == {("touchpoints", 5), ("returns", 1)}


def test_settings_windows() -> None:
    from config.settings import Settings
    from streams.policies import Policies

    settings = Settings(metric_windows=["1d", "all"], customer_metric_windows=["all"])
    agg = MetricAggregator(Policies.from_settings(settings).metrics)
    agg.add(entry("v"))
    shared = [(s, w) for s in (MetricScope.CHANNEL, MetricScope.OVERALL) for w in ("1d", "all")]
    assert sorted((c.scope, c.window) for c in agg.touched()) == sorted([(MetricScope.CUSTOMER, "all"), *shared])
