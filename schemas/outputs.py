"""Records the worker publishes on the downstream topics (timeline, profiles, identity, metrics, alerts)."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.touchpoint import IDENTIFIER_NAMES_SCHEMA, Channel, EventType, IdentifierName, SurveyAnswers


class Stage(StrEnum):
    """Journey stage of a touchpoint."""

    PRE_PURCHASE = "pre_purchase"
    PURCHASE = "purchase"
    POST_PURCHASE = "post_purchase"


class Moment(StrEnum):
    """Moments of truth: touchpoints where an impression forms."""

    FIRST_PURCHASE = "first_purchase"
    COMPLAINT = "complaint"
    SUPPORT_CONTACT = "support_contact"
    ISSUE_RESOLVED = "issue_resolved"
    ISSUE_UNRESOLVED = "issue_unresolved"
    RETURN = "return"
    LATE_DELIVERY = "late_delivery"
    PROMOTER = "promoter"
    PASSIVE = "passive"
    DETRACTOR = "detractor"
    #: A resolution the company recorded that the customer contradicted: contacted again about the same issue, or
    #: answered a survey badly, soon after (not negative by itself for alerting: what contradicted it already is).
    RESOLUTION_CONTRADICTED = "resolution_contradicted"


#: Moments that count as negative impressions (for alerting).
NEGATIVE_MOMENTS: frozenset[Moment] = frozenset(
    {Moment.COMPLAINT, Moment.ISSUE_UNRESOLVED, Moment.RETURN, Moment.LATE_DELIVERY, Moment.DETRACTOR}
)

_OUT = ConfigDict(extra="forbid", frozen=True)


class TimelineEntry(BaseModel):
    """A touchpoint placed on a customer's timeline, with its stage, moments and issue context."""

    model_config = _OUT

    customer_id: str | None = Field(
        description="The customer the touchpoint belongs to; null for an unattributed one (it carried no usable identifier)."
    )
    event_id: str
    channel: Channel
    type: EventType
    occurred_at: AwareDatetime
    received_at: AwareDatetime
    stage: Stage
    moments: tuple[Moment, ...] = ()
    amount: Decimal | None = None
    currency: str | None = None
    issue_key: str | None = Field(
        default=None, description="issue_id, or reason-derived key when the contact had none."
    )
    is_contact: bool = Field(default=False, description="A service/support contact (call, complaint, support request).")
    contact_number: int = Field(
        default=0, description="1 for an issue's first contact, 2 for the next, ...; 0 if none."
    )
    repeat_contact: bool = Field(default=False, description="The issue already had a contact within the repeat window.")
    resolved: bool | None = None
    resolved_at_first_contact: bool | None = None
    channel_switch: bool = Field(default=False, description="This contact is on another channel than the issue's last.")
    transfers: int = 0
    time_to_resolution_s: float | None = None
    resolution_contradicted: bool | None = Field(
        default=None,
        description="For a contact that resolved its issue: whether the customer contradicted the resolution, by "
        "a low answer in the contact's own survey, or by contacting again about the same issue or answering a "
        "survey badly within CXSTREAM_RESOLUTION_CONTRADICTION_WINDOW_S after it (revised when such evidence "
        "arrives late). Null for other entries.",
    )
    time_since_last_purchase_s: float | None = None
    survey: SurveyAnswers | None = None
    source_id: str = ""


#: The engagement score's weights by default, by name (``CXSTREAM_ENGAGEMENT_WEIGHTS`` overrides some or all). The
#: negative kinds are subtracted, so given as positive numbers.
ENGAGEMENT_WEIGHTS: dict[str, float] = {
    "touch": 1.0,
    "purchase": 5.0,
    "positive_survey": 3.0,
    "negative_survey": 3.0,
    "negative_moment": 2.0,
}


class CustomerProfile(BaseModel):
    """Current summary of one customer (compacted topic keyed by customer_id)."""

    model_config = _OUT

    customer_id: str
    first_seen: AwareDatetime
    last_seen: AwareDatetime
    stage: Stage
    identifiers: dict[IdentifierName, list[str]] = Field(
        default_factory=dict, json_schema_extra=IDENTIFIER_NAMES_SCHEMA
    )
    events: int = 0
    purchases: int = 0
    revenue: Decimal = Decimal(0)
    contacts: int = 0
    returns: int = 0
    open_issues: int = 0
    engagement: float = Field(
        default=0.0,
        ge=0,
        le=100,
        description="Engagement score, 0-100 (one decimal): recency, frequency and sentiment of the customer's "
        "touchpoints across channels, exponentially decayed by week (README: Engagement score).",
    )
    channels: dict[Channel, int] = Field(default_factory=dict)
    traits: dict[str, Any] = Field(
        default_factory=dict,
        description="Traits from the customer's identify calls (Segment traits), each the value given latest by event "
        "time; with identifier hashing on, e-mails and phone numbers in them are hashed.",
    )
    groups: list[str] = Field(
        default_factory=list, description="Accounts (company, household) the customer's group calls named: groupId."
    )
    merged_into: str | None = Field(
        default=None, description="Set (tombstone-like) when this customer was merged away."
    )


class IdentityChange(BaseModel):
    """An identity-graph change: a merge of two customers, or a split of one, with its evidence."""

    model_config = _OUT

    kind: Literal["merge", "manual_merge", "split"] = Field(
        default="merge",
        description="merge: identity stitching linked the two (an event carried identifiers of both); manual_merge: "
        "a person merged them by hand (cxstream merge), event_id is then the merge's id; split: a person split "
        "merged_id off survivor_id by hand (cxstream split), with the identifiers it took and the events that "
        "reached the customer only through them; event_id is then the split's id. A split is no merge: a consumer "
        "that aliases merged ids to survivors must skip it.",
    )
    survivor_id: str = Field(
        description="The customer that remains (a split: the one holding the identifiers the split kept)."
    )
    merged_id: str = Field(description="The customer merged into survivor_id (a split: the one split off it).")
    event_id: str = Field(
        description="The event whose identifiers linked the two customers (a manual merge or a split: its id)."
    )
    identifiers: dict[IdentifierName, str] = Field(default_factory=dict, json_schema_extra=IDENTIFIER_NAMES_SCHEMA)
    occurred_at: AwareDatetime


class MetricScope(StrEnum):
    """What a metric figure is about."""

    CUSTOMER = "customer"
    CHANNEL = "channel"
    OVERALL = "overall"


class MetricFigure(BaseModel):
    """One metric of a cell: its figure and the revision it is at."""

    model_config = _OUT

    numerator: float = Field(description="In the metric's own unit (currency, seconds); a count for count metrics.")
    denominator: float = Field(description="1 for count metrics.")
    value: float | None = Field(
        description="The figure in the metric's unit: numerator / denominator, x 100 for shares and scores (NPS, CSAT, rates); null while the denominator is 0."
    )
    revision: int = Field(
        description="How many event versions were added to or withdrawn from the metric's basis (+1 once final)."
    )


class MetricCellUpdate(BaseModel):
    """Every metric of one scope key over one window (a cell), re-emitted whenever one of them changes.

    The record carries all the cell's figures, not only the changed ones, so the last record of a cell (the
    topic is compacted by cell) is the whole cell.
    """

    model_config = _OUT

    scope: MetricScope
    key: str = Field(description="customer_id, channel name, or 'all'.")
    window: str = Field(description="Window name: 1h, 1d, 7d, 30d or all.")
    window_start: AwareDatetime
    window_end: AwareDatetime
    status: Literal["provisional", "final"] = "provisional"
    revision: int = Field(
        description="The sum of the figures' revisions: grows with every change; a consumer keeps the highest."
    )
    figures: dict[str, MetricFigure] = Field(
        description="Metric name -> figure, for every metric the cell has counted something for."
    )


class Severity(StrEnum):
    """How urgent an alert is."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class Alert(BaseModel):
    """An experience-degradation alert; alert_id is deterministic per cause, so it fires once."""

    model_config = _OUT

    alert_id: str
    customer_id: str
    rule: str
    severity: Severity
    occurred_at: AwareDatetime
    evidence: tuple[str, ...] = Field(description="Event ids that caused the alert.")
    message: str = ""


#: Metrics an experience-drop alert can watch (``CXSTREAM_EXPERIENCE_DROP_MARGINS``).
WatchedMetric = Literal["nps", "csat", "ces", "fcr", "confirmed_fcr", "experience_gap", "repeat_contact_rate"]


class ExperienceDropAlert(BaseModel):
    """An alert on the whole: a channel's or the company's figure over a short window worse than its own baseline
    (the windows before it) by at least a margin. Compacted topic keyed by alert_id, which is deterministic per
    scope, key, metric and window: the record of an id with the highest revision is its status."""

    model_config = _OUT

    alert_id: str
    rule: Literal["experience_drop"] = "experience_drop"
    status: Literal["firing", "resolved"] = Field(
        description="firing: the figure is worse than the baseline by the margin; resolved: later events took it "
        "back within the margin (an alert that fired on provisional figures)."
    )
    severity: Severity = Severity.WARNING
    scope: MetricScope = Field(description="channel or overall.")
    key: str = Field(description="Channel name, or 'all'.")
    metric: WatchedMetric
    window: str = Field(description="The short window's name (a metric window, 1d by default).")
    window_start: AwareDatetime
    window_end: AwareDatetime
    baseline_start: AwareDatetime = Field(description="Start of the baseline: the windows before window_start.")
    value: float | None = Field(description="The metric over the short window, in its own unit (as MetricFigure).")
    baseline: float | None = Field(description="The metric over the baseline's summed counters.")
    answers: int = Field(description="The figure's denominator over the short window (answers, issues, contacts).")
    baseline_answers: int = Field(description="The figure's denominator over the baseline.")
    margin: float = Field(description="How much worse than the baseline fires, in the metric's unit.")
    revision: int = Field(
        description="Grows with every decision of the group's workers (the batch's commit sequence): a consumer keeps "
        "the record of the highest revision per alert_id, whichever worker published it first."
    )
    z: float = Field(
        description="How many standard errors of the difference the figure is worse than the baseline (a two-sample "
        "z score; CES with a conservative variance bound)."
    )
    message: str = ""
