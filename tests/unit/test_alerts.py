"""Alert rules: each default rule fires exactly once for its cause, and not without it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.outputs import Alert, Moment, Severity, Stage, TimelineEntry
from schemas.touchpoint import Channel, EventType, SurveyAnswers
from streams.domain.alerts import (
    DETRACTOR_AFTER_REPEAT_CONTACT,
    ISSUE_OVERDUE,
    LATE_DELIVERY_CONTACT,
    NEGATIVE_MOMENTS_BURST,
    AlertPolicy,
    OpenIssueInfo,
    alert_id,
    evaluate,
    overdue,
)

T0 = datetime(2024, 5, 1, 9, tzinfo=UTC)
POLICY = AlertPolicy(negative_moments_threshold=3, issue_target_s=48 * 3600.0)


def at(days: float) -> datetime:
    return T0 + timedelta(days=days)


def entry(event_id: str, days: float, **fields: Any) -> TimelineEntry:
    base: dict[str, Any] = {
        "customer_id": "c1",
        "event_id": event_id,
        "channel": Channel.WEB,
        "type": EventType.PAGE_VIEW,
        "occurred_at": at(days),
        "received_at": at(days),
        "stage": Stage.PRE_PURCHASE,
    }
    base.update(fields)
    return TimelineEntry(**base)


def contact(event_id: str, days: float, number: int = 1, **fields: Any) -> TimelineEntry:
    return entry(
        event_id,
        days,
        type=EventType.SUPPORT_CONTACT,
        channel=Channel.PHONE,
        stage=Stage.POST_PURCHASE,
        is_contact=True,
        contact_number=number,
        repeat_contact=number > 1,
        moments=(Moment.SUPPORT_CONTACT,),
        **fields,
    )


def survey(event_id: str, days: float, **scores: int) -> TimelineEntry:
    return entry(event_id, days, type=EventType.SURVEY, stage=Stage.POST_PURCHASE, survey=SurveyAnswers(**scores))


def negative(event_id: str, days: float, *moments: Moment) -> TimelineEntry:
    return entry(event_id, days, stage=Stage.POST_PURCHASE, moments=moments or (Moment.COMPLAINT,))


def late_delivery(event_id: str, days: float) -> TimelineEntry:
    return entry(
        event_id, days, type=EventType.LATE_DELIVERY, stage=Stage.POST_PURCHASE, moments=(Moment.LATE_DELIVERY,)
    )


def replay(arrivals: Sequence[TimelineEntry]) -> list[Alert]:
    """Feed entries in arrival order, each evaluated against the event-time-ordered timeline so far."""
    timeline: list[TimelineEntry] = []
    alerts: list[Alert] = []
    for e in arrivals:
        timeline = sorted([*timeline, e], key=lambda x: (x.occurred_at, x.event_id))
        alerts += evaluate(e, timeline, POLICY)
    return alerts


def only(alerts: list[Alert], rule: str) -> list[Alert]:
    return [a for a in alerts if a.rule == rule]


# --- (a) detractor / low CSAT after a repeat contact ---------------------------------------------------


def test_detractor_after_repeat_contact_fires_once() -> None:
    entries = [contact("c1", 0), contact("c2", 1, number=2), entry("v", 2), survey("s", 3, nps=6)]
    alerts = only(replay(entries), DETRACTOR_AFTER_REPEAT_CONTACT)
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert.alert_id == alert_id(DETRACTOR_AFTER_REPEAT_CONTACT, "c1", ["s"])
    assert alert.evidence == ("c2", "s")
    assert alert.severity is Severity.CRITICAL
    assert alert.occurred_at == at(3)
    assert "NPS 6" in alert.message
    # Re-evaluating the same input (a replay after a crash) gives the same alert, not a second one.
    assert evaluate(entries[-1], entries, POLICY) == alerts
    # Later entries do not fire it again.
    assert only(replay([*entries, entry("v2", 4), contact("c3", 4.5, number=3)]), DETRACTOR_AFTER_REPEAT_CONTACT) == [
        alert
    ]


def test_low_csat_after_repeat_contact_fires() -> None:
    alerts = only(replay([contact("c1", 0, number=2), survey("s", 6.9, csat=2, nps=9)]), DETRACTOR_AFTER_REPEAT_CONTACT)
    assert [a.evidence for a in alerts] == [("c1", "s")]
    assert "CSAT 2" in alerts[0].message


def test_late_repeat_contact_completes_the_cause_once() -> None:
    alerts = only(replay([survey("s", 3, nps=2), contact("c2", 1, number=2)]), DETRACTOR_AFTER_REPEAT_CONTACT)
    assert [(a.alert_id, a.evidence) for a in alerts] == [
        (alert_id(DETRACTOR_AFTER_REPEAT_CONTACT, "c1", ["s"]), ("c2", "s"))
    ]
    # A survey that already fired with one repeat contact does not fire again for a late second one.
    alerts = only(
        replay([contact("c2", 1, number=2), survey("s", 3, nps=2), contact("c3", 2, number=3)]),
        DETRACTOR_AFTER_REPEAT_CONTACT,
    )
    assert len(alerts) == 1


@pytest.mark.parametrize(
    "entries",
    [
        [contact("c1", 0, number=2), survey("s", 3, nps=7)],  # passive
        [contact("c1", 0, number=2), survey("s", 3, csat=3)],  # neutral CSAT
        [contact("c1", 0), survey("s", 3, nps=0)],  # a first contact is not a repeat contact
        [contact("c1", 0, number=2), survey("s", 7.01, nps=0)],  # repeat contact more than 7 days before
        [survey("s", 3, nps=0), contact("c1", 3.5, number=2)],  # repeat contact after the survey
    ],
)
def test_detractor_rule_does_not_fire_without_its_cause(entries: list[TimelineEntry]) -> None:
    assert only(replay(entries), DETRACTOR_AFTER_REPEAT_CONTACT) == []


# --- (b) issue open past its target ---------------------------------------------------------------------


def test_overdue_issue_fires_once() -> None:
    issues = {"ISS-1": OpenIssueInfo(first_contact_at=T0, event_ids=("c1", "c2"))}
    assert overdue("c1", issues, T0 + timedelta(hours=47, minutes=59), POLICY) == []
    fired = overdue("c1", issues, T0 + timedelta(hours=48), POLICY)
    assert len(fired) == 1
    alert = fired[0]
    assert alert.rule == ISSUE_OVERDUE and alert.severity is Severity.WARNING
    assert alert.occurred_at == T0 + timedelta(hours=48)  # when it became overdue, whatever the watermark
    assert alert.evidence == ("c1", "c2")
    assert alert.alert_id == alert_id(ISSUE_OVERDUE, "c1", ["ISS-1", T0.isoformat()])
    assert "ISS-1" in alert.message
    # The next watermark, given the previous one, fires nothing new; without it the same alert comes back.
    assert overdue("c1", issues, T0 + timedelta(hours=60), POLICY, since=T0 + timedelta(hours=48)) == []
    assert overdue("c1", issues, T0 + timedelta(hours=60), POLICY) == fired


def test_a_recurring_issue_key_fires_again_for_a_new_episode() -> None:
    first = overdue("c1", {"reason:delivery": OpenIssueInfo(T0)}, at(3), POLICY)
    again = overdue("c1", {"reason:delivery": OpenIssueInfo(at(10))}, at(13), POLICY)
    assert len(first) == len(again) == 1
    assert first[0].alert_id != again[0].alert_id


def test_overdue_does_not_fire_for_young_issues() -> None:
    issues = {
        "old": OpenIssueInfo(first_contact_at=T0 - timedelta(days=3), event_ids=("a",)),
        "new": OpenIssueInfo(first_contact_at=T0, event_ids=("b",)),
    }
    assert [a.evidence for a in overdue("c1", issues, T0 + timedelta(hours=1), POLICY)] == [("a",)]
    assert overdue("c1", {}, T0, POLICY) == []


# --- (c) negative moments within 7 days -----------------------------------------------------------------


def test_negative_moments_burst_fires_once() -> None:
    entries = [
        negative("n1", 0),
        entry("v", 1),
        late_delivery("n2", 2),
        negative("n3", 5, Moment.RETURN),
        negative("n4", 6, Moment.DETRACTOR),  # a fourth in the same burst: no second alert
    ]
    alerts = only(replay(entries), NEGATIVE_MOMENTS_BURST)
    assert len(alerts) == 1
    assert alerts[0].evidence == ("n1", "n2", "n3")
    assert alerts[0].occurred_at == at(5)
    assert alerts[0].alert_id == alert_id(NEGATIVE_MOMENTS_BURST, "c1", ["n1"])
    assert evaluate(entries[3], entries, POLICY)[0] == alerts[0]


def test_negative_moments_of_one_entry_count_separately() -> None:
    entries = [negative("n1", 0), negative("n2", 1, Moment.COMPLAINT, Moment.ISSUE_UNRESOLVED)]
    assert [a.evidence for a in only(replay(entries), NEGATIVE_MOMENTS_BURST)] == [("n1", "n2")]


def test_late_negative_moment_completes_a_burst() -> None:
    alerts = only(replay([negative("n1", 0), negative("n3", 2), negative("n2", 1)]), NEGATIVE_MOMENTS_BURST)
    assert [(a.evidence, a.occurred_at) for a in alerts] == [(("n1", "n2", "n3"), at(2))]


def test_negative_moments_spread_over_more_than_7_days_do_not_fire() -> None:
    entries = [negative("n1", 0), negative("n2", 4), negative("n3", 7.5), survey("s", 7.6, nps=10)]
    assert only(replay(entries), NEGATIVE_MOMENTS_BURST) == []
    # Moments that are not negative do not count.
    support = [contact("c1", 0), contact("c2", 1, number=2), entry("p", 2, moments=(Moment.FIRST_PURCHASE,))]
    assert only(replay(support), NEGATIVE_MOMENTS_BURST) == []


# --- (d) late delivery followed by a contact ------------------------------------------------------------


def test_late_delivery_then_contact_fires_once() -> None:
    entries = [late_delivery("d", 0), entry("v", 1), contact("c1", 5), contact("c2", 6, number=2)]
    alerts = only(replay(entries), LATE_DELIVERY_CONTACT)
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert.evidence == ("d", "c1")
    assert alert.alert_id == alert_id(LATE_DELIVERY_CONTACT, "c1", ["d"])
    assert alert.severity is Severity.INFO
    assert alert.occurred_at == at(5)
    assert evaluate(entries[2], entries[:3], POLICY) == alerts


def test_late_delivery_arriving_after_its_contact_fires_once() -> None:
    alerts = only(replay([contact("c1", 5), contact("c2", 6, number=2), late_delivery("d", 0)]), LATE_DELIVERY_CONTACT)
    assert [a.evidence for a in alerts] == [("d", "c1")]
    # An earlier contact arriving late does not fire a second alert for the same late delivery.
    alerts = only(replay([late_delivery("d", 0), contact("c2", 6), contact("c1", 5)]), LATE_DELIVERY_CONTACT)
    assert [a.evidence for a in alerts] == [("d", "c2")]


@pytest.mark.parametrize(
    "entries",
    [
        [late_delivery("d", 0), contact("c1", 14.01)],  # contact more than 14 days later
        [contact("c1", 0), late_delivery("d", 1)],  # contact before the late delivery
        [entry("d", 0, type=EventType.DELIVERY, stage=Stage.POST_PURCHASE), contact("c1", 1)],  # on time
        [late_delivery("d", 0), survey("s", 1, nps=3)],  # no contact
    ],
)
def test_late_delivery_rule_does_not_fire_without_its_cause(entries: list[TimelineEntry]) -> None:
    assert only(replay(entries), LATE_DELIVERY_CONTACT) == []


def test_plain_touchpoints_raise_nothing() -> None:
    entries = [entry(f"v{i}", i / 10) for i in range(20)]
    assert replay(entries) == []
