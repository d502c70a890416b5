"""The engagement score: its formula as the README gives it, its parameters' settings, and the state's week counts."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from config.settings import SettingsError, load_settings
from schemas.touchpoint import Channel, EventType, IdentifierType, SourceRef, SurveyAnswers, TouchpointEvent
from streams.domain.customer import CustomerState, identify_details, make_row
from streams.domain.engagement import WEEK_S, EngagementPolicy, nearest_rank, score, tally, week_of
from streams.policies import Policies, engagement_policy

T0 = datetime(2026, 3, 2, tzinfo=UTC)
POLICY = Policies.from_settings(load_settings()).customer


def event(n: int, kind: EventType, at: datetime, **extra: object) -> TouchpointEvent:
    return TouchpointEvent(
        event_id=f"e{n}",
        channel=Channel.WEB,
        type=kind,
        occurred_at=at,
        received_at=at,
        identifiers={IdentifierType.EMAIL: "ann@example.org"},
        source=SourceRef(system="test", id=str(n)),
        **extra,
    )


def state_of(events: list[TouchpointEvent]) -> CustomerState:
    state = CustomerState("c")
    for e in events:
        state.add(make_row(e, e.occurred_at.timestamp()), identify_details(e))
    state.prune(POLICY)
    return state


def test_the_settings_defaults_are_the_domains() -> None:
    assert engagement_policy(load_settings()) == EngagementPolicy()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CXSTREAM_ENGAGEMENT_WEIGHTS", '{"touch": 1, "visit": 2}'),
        ("CXSTREAM_ENGAGEMENT_WEIGHTS", '{"purchase": -5}'),
        ("CXSTREAM_ENGAGEMENT_HALF_LIFE_DAYS", "0"),
        ("CXSTREAM_ENGAGEMENT_HORIZON_WEEKS", "0"),
        ("CXSTREAM_ENGAGEMENT_SCALE", "-1"),
    ],
)
def test_a_bad_parameter_is_refused_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        load_settings()


def test_weights_left_out_keep_their_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXSTREAM_ENGAGEMENT_WEIGHTS", '{"purchase": 8}')
    assert engagement_policy(load_settings()).weights == (1.0, 8.0, 3.0, 3.0, 2.0)


def test_what_each_event_counts() -> None:
    # (touches, purchases, positive surveys, negative surveys, negative moments)
    assert tally("page_view", None, []) == (1, 0, 0, 0, 0)
    assert tally("purchase", None, []) == (0, 1, 0, 0, 0)
    assert tally("other", None, []) is None, "not a journey touchpoint"
    assert tally("identify", None, []) is None, "a profile update (a login, a CRM sync), not a dealing"
    assert tally("survey", [10, None, None], ["promoter"]) == (0, 0, 1, 0, 0)
    assert tally("survey", [8, 4, None], ["passive"]) == (0, 0, 1, 0, 0), "a high CSAT, nothing low"
    assert tally("survey", [9, 2, None], ["promoter"]) == (0, 0, 0, 1, 0), "a low answer makes it negative"
    assert tally("survey", [None, None, 4], []) is None, "neutral"
    assert tally("survey", [3, None, None], ["detractor"]) == (0, 0, 0, 1, 0), "the detractor is the survey"
    assert tally("support_contact", None, ["support_contact", "issue_unresolved", "complaint"]) == (1, 0, 0, 0, 2)
    assert tally("return", None, ["return"]) == (1, 0, 0, 0, 1)


def test_a_customer_with_only_bad_moments_scores_zero_and_a_busy_one_stays_below_100() -> None:
    unhappy = [
        event(n, EventType.REVIEW, T0 + timedelta(hours=n), attributes={"rating": 1}, survey=SurveyAnswers(csat=1))
        for n in range(5)
    ]
    assert state_of(unhappy).engagement_score(POLICY) == 0.0
    busy = state_of([event(n, EventType.PURCHASE, T0 + timedelta(minutes=n)) for n in range(500)])
    assert busy.engagement_score(POLICY) == 100.0  # rounded to one decimal; never more
    assert 0 < state_of([event(0, EventType.PAGE_VIEW, T0)]).engagement_score(POLICY) < 10


_KINDS = [EventType.PAGE_VIEW, EventType.PURCHASE, EventType.SURVEY, EventType.RETURN, EventType.OTHER]


@given(
    items=st.lists(
        st.tuples(st.integers(0, 3 * 365 * 86400), st.sampled_from(_KINDS), st.integers(0, 10)), min_size=1, max_size=40
    ),
    half_life=st.floats(1, 200),
    horizon=st.integers(1, 60),
)
# Found by CI: a week 52 weeks old, scored with a horizon of 53 but kept under the default 52.
@example(items=[(5702400, EventType.PAGE_VIEW, 0), (37152000, EventType.PAGE_VIEW, 0)], half_life=61.0, horizon=53)
def test_the_score_is_the_readmes_formula(
    items: list[tuple[int, EventType, int]], half_life: float, horizon: int
) -> None:
    policy = EngagementPolicy(half_life_days=half_life, horizon_weeks=horizon)
    events = [
        event(n, kind, T0 + timedelta(seconds=s), survey=SurveyAnswers(nps=nps) if kind is EventType.SURVEY else None)
        for n, (s, kind, nps) in enumerate(items)
    ]
    state = state_of(events)
    latest = week_of(max(e.occurred_at.timestamp() for e in events))
    # The state was kept under the default policy: weeks past its horizon are gone whatever ``horizon`` says.
    kept = min(horizon, POLICY.engagement.horizon_weeks)
    total = 0.0
    for e in events:
        age = latest - week_of(e.occurred_at.timestamp())
        if age >= kept:
            continue
        weight = {EventType.PAGE_VIEW: 1, EventType.PURCHASE: 5, EventType.RETURN: 1 - 2, EventType.OTHER: 0}.get(
            e.type, 3 if (e.survey and e.survey.nps is not None and e.survey.nps >= 9) else 0
        )
        if e.type is EventType.SURVEY and e.survey and e.survey.nps is not None and e.survey.nps <= 6:
            weight = -3
        total += weight * 2 ** (-7 * age / half_life)
    expected = 100 * (1 - math.exp(-max(total, 0) / policy.scale))
    got = score(state.engagement, latest, policy)
    assert 0 <= got <= 100
    assert abs(got - expected) <= 0.05 + 1e-9
    # The state keeps a row per week with events, of the weeks the default horizon covers at most.
    assert len(state.engagement) <= POLICY.engagement.horizon_weeks
    assert all(row[0] > latest - POLICY.engagement.horizon_weeks for row in state.engagement)


def test_weeks_are_counted_from_the_epoch() -> None:
    assert week_of(0) == 0 and week_of(WEEK_S - 0.001) == 0 and week_of(WEEK_S) == 1 and week_of(-1) == -1


def test_nearest_rank_quantiles() -> None:
    counts = {10.0: 1, 20.0: 2, 30.0: 1}  # 10, 20, 20, 30
    assert [nearest_rank(counts, q) for q in (0.25, 0.5, 0.75, 0.9, 1.0)] == [10.0, 20.0, 20.0, 30.0, 30.0]
    assert nearest_rank({}, 0.5) is None
