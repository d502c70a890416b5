"""Experience-degradation alert rules over a customer's timeline.

Each rule names its cause (the event ids that make the alert) and derives ``alert_id`` from the rule, the
customer and the cause, so evaluating the same timeline again, or replaying it after a crash, gives the same
alert and the sink upserts it instead of adding a second one.

``evaluate`` returns the alerts whose cause includes the new entry. When entries arrive in event-time order
that is the alert the entry completes; a late entry can also complete a cause together with entries that
occurred after it, so those are checked too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from schemas.outputs import NEGATIVE_MOMENTS, Alert, Moment, Severity
from schemas.touchpoint import EventType
from streams.domain.entry import Entry

DETRACTOR_AFTER_REPEAT_CONTACT = "detractor_after_repeat_contact"
ISSUE_OVERDUE = "issue_overdue"
NEGATIVE_MOMENTS_BURST = "negative_moments"
LATE_DELIVERY_CONTACT = "late_delivery_contact"

#: Severity of each rule's alerts.
RULE_SEVERITY: dict[str, Severity] = {
    DETRACTOR_AFTER_REPEAT_CONTACT: Severity.CRITICAL,
    ISSUE_OVERDUE: Severity.WARNING,
    NEGATIVE_MOMENTS_BURST: Severity.WARNING,
    LATE_DELIVERY_CONTACT: Severity.INFO,
}

#: The rules read only entries of these types, entries with a survey answer and entries with a negative moment:
#: whoever builds the recent timeline for ``evaluate`` may leave every other entry out.
READ_TYPES: frozenset[EventType] = frozenset({EventType.SUPPORT_CONTACT, EventType.LATE_DELIVERY})

_DAY = 86400.0
# Enum members as module constants: class attribute lookup of a member costs more than the test itself, and
# these run over every timeline entry.
_LATE_DELIVERY_TYPE = EventType.LATE_DELIVERY
_LATE_DELIVERY_MOMENT = Moment.LATE_DELIVERY


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    """Thresholds of the alert rules: the burst size and the issue target are settings, the rest fixed defaults."""

    #: Negative moments within ``negative_moments_window_s`` that raise an alert.
    negative_moments_threshold: int
    #: An issue open longer than this after its first contact raises an alert, seconds.
    issue_target_s: float
    nps_detractor_max: int = 6
    csat_low_max: int = 2
    repeat_contact_lookback_s: float = 7 * _DAY
    negative_moments_window_s: float = 7 * _DAY
    late_delivery_contact_s: float = 14 * _DAY

    @property
    def longest_window_s(self) -> float:
        """How far before or after an entry any rule looks: the history an entry's alerts need around it."""
        return max(self.repeat_contact_lookback_s, self.negative_moments_window_s, self.late_delivery_contact_s)


@dataclass(frozen=True, slots=True)
class OpenIssueInfo:
    """An issue with at least one contact and no resolution yet, as the overdue rule needs it."""

    first_contact_at: datetime
    event_ids: tuple[str, ...] = ()
    """The issue's contacts, for the alert's evidence (may be empty)."""


def alert_id(rule: str, customer_id: str, cause: Iterable[str]) -> str:
    """Deterministic alert id from the rule, the customer and the event ids of the cause."""
    digest = hashlib.sha256("\x1f".join((rule, customer_id, *cause)).encode()).hexdigest()
    return f"{rule}-{digest[:24]}"


def _order(entry: Entry) -> tuple[datetime, str]:
    # event_id breaks ties between entries of the same instant, so "before" is a total order.
    return entry.occurred_at, entry.event_id


def _alert(
    rule: str, customer_id: str | None, cause: Sequence[str], evidence: Sequence[str], at: datetime, message: str
) -> Alert:
    assert customer_id is not None, "alert rules read one customer's timeline (evaluate skips unattributed entries)"
    return Alert(
        alert_id=alert_id(rule, customer_id, cause),
        customer_id=customer_id,
        rule=rule,
        severity=RULE_SEVERITY[rule],
        occurred_at=at,
        evidence=tuple(dict.fromkeys(evidence)),
        message=message,
    )


def _low_score(entry: Entry, policy: AlertPolicy) -> str | None:
    survey = entry.survey
    if survey is None:
        return None
    if survey.nps is not None and survey.nps <= policy.nps_detractor_max:
        return f"NPS {survey.nps}"
    if survey.csat is not None and survey.csat <= policy.csat_low_max:
        return f"CSAT {survey.csat}"
    return None


def _is_repeat_contact(entry: Entry) -> bool:
    return entry.is_contact and entry.repeat_contact


def _is_late_delivery(entry: Entry) -> bool:
    return entry.type is _LATE_DELIVERY_TYPE or _LATE_DELIVERY_MOMENT in entry.moments


def _negative_weight(entry: Entry) -> int:
    return sum(1 for moment in entry.moments if moment in NEGATIVE_MOMENTS)


def _ordered(entries: Iterable[Entry]) -> list[Entry]:
    # Each rule sorts only the few entries it looks at, rather than trusting or re-sorting the whole timeline.
    return sorted(entries, key=_order)


def _within(earlier: Entry, later: Entry, seconds: float) -> bool:
    """``earlier`` is at or before ``later`` (in timeline order) and at most ``seconds`` before it."""
    return _order(earlier) <= _order(later) and (later.occurred_at - earlier.occurred_at).total_seconds() <= seconds


def _detractor_after_repeat_contact(entry: Entry, timeline: Sequence[Entry], policy: AlertPolicy) -> list[Alert]:
    """(a) A low NPS (<= 6) or CSAT (<= 2) answer with a repeat contact in the 7 days up to it; cause: the survey."""
    lookback = policy.repeat_contact_lookback_s
    repeats = _ordered(c for c in timeline if _is_repeat_contact(c))

    def repeats_before(survey: Entry) -> list[Entry]:
        return [c for c in repeats if _within(c, survey, lookback)]

    def alert(survey: Entry, contact: Entry, score: str) -> Alert:
        return _alert(
            DETRACTOR_AFTER_REPEAT_CONTACT,
            survey.customer_id,
            (survey.event_id,),
            (contact.event_id, survey.event_id),
            survey.occurred_at,
            f"{score} on {survey.channel} from customer {survey.customer_id} after a repeat contact "
            f"on {contact.channel} at {contact.occurred_at.isoformat()}",
        )

    out = []
    score = _low_score(entry, policy)
    if score is not None:
        contacts = repeats_before(entry)
        if contacts:
            out.append(alert(entry, contacts[-1], score))
    if _is_repeat_contact(entry):
        # A late repeat contact completes the cause of low scores after it that had no repeat contact yet;
        # a score that already had one fired then and must not fire again.
        for survey in _ordered(e for e in timeline if e.survey is not None and e is not entry):
            score = _low_score(survey, policy)
            if score is None or not _within(entry, survey, lookback):
                continue
            if [c.event_id for c in repeats_before(survey)] == [entry.event_id]:
                out.append(alert(survey, entry, score))
    return out


def _negative_moments(entry: Entry, timeline: Sequence[Entry], policy: AlertPolicy) -> list[Alert]:
    """(c) The count of negative moments in the 7 days up to an entry reaches the threshold at that entry.

    Cause: the negative entries of that window; the id comes from the earliest of them, so two crossings of
    one burst (possible only when a late entry reshapes it) share one alert.
    """
    if not _negative_weight(entry):
        return []
    span, threshold = policy.negative_moments_window_s, policy.negative_moments_threshold
    negatives = _ordered(e for e in timeline if _negative_weight(e))
    out = []
    for last in negatives:
        if not _within(entry, last, span):
            continue
        window = [e for e in negatives if _within(e, last, span)]
        total = sum(_negative_weight(e) for e in window)
        if total - _negative_weight(last) < threshold <= total:
            out.append(
                _alert(
                    NEGATIVE_MOMENTS_BURST,
                    last.customer_id,
                    (window[0].event_id,),
                    [e.event_id for e in window],
                    last.occurred_at,
                    f"{total} negative moments for customer {last.customer_id} within "
                    f"{span / _DAY:g} days up to {last.occurred_at.isoformat()}",
                )
            )
    return out


def _late_delivery_contact(entry: Entry, timeline: Sequence[Entry], policy: AlertPolicy) -> list[Alert]:
    """(d) A late delivery followed by a service contact within 14 days; cause: the late delivery."""
    span = policy.late_delivery_contact_s
    contacts = _ordered(c for c in timeline if c.is_contact)

    def contacts_after(late: Entry) -> list[Entry]:
        return [c for c in contacts if c is not late and _within(late, c, span)]

    def alert(late: Entry, contact: Entry) -> Alert:
        hours = (contact.occurred_at - late.occurred_at).total_seconds() / 3600
        return _alert(
            LATE_DELIVERY_CONTACT,
            late.customer_id,
            (late.event_id,),
            (late.event_id, contact.event_id),
            contact.occurred_at,
            f"Customer {late.customer_id} contacted us on {contact.channel} {hours:.0f} h after a late delivery",
        )

    out = []
    if _is_late_delivery(entry):
        following = contacts_after(entry)
        if following:
            out.append(alert(entry, following[0]))
    if entry.is_contact:
        # Only the first contact after a late delivery fires; a late-arriving earlier contact does not fire
        # again for a delivery whose alert already named a later one.
        for late in _ordered(e for e in timeline if e is not entry and _is_late_delivery(e)):
            if not _within(late, entry, span):
                continue
            if [c.event_id for c in contacts_after(late)] == [entry.event_id]:
                out.append(alert(late, entry))
    return out


def evaluate(entry: Entry, recent: Sequence[Entry], policy: AlertPolicy) -> list[Alert]:
    """Alerts whose cause includes ``entry``, given the customer's event-time-ordered recent timeline."""
    if entry.customer_id is None:
        return []  # an unattributed touchpoint belongs to nobody's timeline
    survey_rule = _low_score(entry, policy) is not None or _is_repeat_contact(entry)
    burst_rule = _negative_weight(entry) > 0
    delivery_rule = entry.is_contact or _is_late_delivery(entry)
    if not (survey_rule or burst_rule or delivery_rule):
        return []  # most touchpoints (views, visits, purchases) can be part of no cause
    # The rules compare entries by identity: put ``entry`` itself in the timeline, wherever it came from.
    timeline = [e for e in recent if e.event_id != entry.event_id]
    timeline.append(entry)
    out = []
    if survey_rule:
        out += _detractor_after_repeat_contact(entry, timeline, policy)
    if burst_rule:
        out += _negative_moments(entry, timeline, policy)
    if delivery_rule:
        out += _late_delivery_contact(entry, timeline, policy)
    return out


def overdue(
    customer_id: str,
    open_issues: Mapping[str, OpenIssueInfo],
    watermark: datetime,
    policy: AlertPolicy,
    since: datetime | None = None,
) -> list[Alert]:
    """(b) Alerts for open issues whose first contact is more than ``policy.issue_target_s`` before ``watermark``.

    With ``since`` (the watermark of the previous call) only issues that became overdue after it are returned,
    so each fires once; without it every overdue issue is returned again, under the same alert id.
    """
    target = timedelta(seconds=policy.issue_target_s)
    out = []
    for issue_key in sorted(open_issues):
        issue = open_issues[issue_key]
        due = issue.first_contact_at + target
        if due > watermark or (since is not None and due <= since):
            continue
        out.append(
            _alert(
                ISSUE_OVERDUE,
                customer_id,
                # The issue key alone would merge a recurring reason key's episodes into one alert.
                (issue_key, issue.first_contact_at.isoformat()),
                issue.event_ids,
                due,
                f"Issue {issue_key} of customer {customer_id} still open {target.total_seconds() / 3600:g} h "
                f"after its first contact at {issue.first_contact_at.isoformat()}",
            )
        )
    return out
