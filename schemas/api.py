"""What the read API (``cxstream api``) answers: the JSON documents of its routes, published in /openapi.json."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.outputs import ExperienceDropAlert

_OUT = ConfigDict(frozen=True)


class ApiTouchpoint(BaseModel):
    """One touchpoint on a customer's timeline."""

    model_config = _OUT

    event_id: str
    occurred_at: datetime
    channel: str
    type: str
    stage: str
    moments: str = Field(description="Moments of truth, comma-separated.")
    amount: Decimal | None
    currency: str | None
    issue_id: str | None
    issue_key: str | None
    resolved: bool | None
    repeat_contact: bool
    nps: int | None
    csat: int | None
    ces: int | None


class ApiTimeline(BaseModel):
    """A page of a customer's touchpoints in event-time order."""

    model_config = _OUT

    customer_id: str
    touchpoints: list[ApiTouchpoint]
    next: str | None = Field(description="Cursor of the next page (`?after=`); null on the last page.")


class ApiFigure(BaseModel):
    """One metric figure of one window: a figure of a `cx.metrics` cell record, with its cell's status."""

    model_config = _OUT

    scope: str
    key: str
    metric: str
    window: str
    window_start: datetime
    window_end: datetime
    numerator: float
    denominator: float
    value: float | None
    status: str = Field(description="provisional, or final once the window closed.")
    revision: int


class ApiFigures(BaseModel):
    """A page of metric figures."""

    model_config = _OUT

    figures: list[ApiFigure]
    next: str | None = Field(description="Cursor of the next page (`?after=`); null on the last page.")


class ApiError(BaseModel):
    """Why a request was refused."""

    model_config = _OUT

    error: str


class ApiAlert(BaseModel):
    """An alert raised for a customer."""

    model_config = _OUT

    alert_id: str
    customer_id: str
    rule: str
    severity: str
    occurred_at: datetime
    evidence: list[str] = Field(description="The event ids the alert is about.")
    message: str


class ApiAlerts(BaseModel):
    """A page of alerts."""

    model_config = _OUT

    alerts: list[ApiAlert]
    next: str | None = Field(description="Cursor of the next page (`?after=`); null on the last page.")


class ApiExperienceAlert(ExperienceDropAlert):
    """An experience-drop alert as stored: the published record, and when its figures were last decided."""

    decided_at: datetime = Field(description="When a worker last decided its figures (wall clock).")


class ApiExperienceAlerts(BaseModel):
    """A page of experience-drop alerts."""

    model_config = _OUT

    experience_alerts: list[ApiExperienceAlert]
    next: str | None = Field(description="Cursor of the next page (`?after=`); null on the last page.")


class ApiProfile(BaseModel):
    """One customer as the results database holds it."""

    model_config = _OUT

    customer_id: str
    first_seen: datetime
    last_seen: datetime
    stage: str
    events: int
    purchases: int
    revenue: Decimal
    contacts: int
    returns: int
    open_issues: int
    overdue_at: datetime | None = Field(description="When the earliest open issue passes its target time.")
    engagement: float | None = Field(
        description="Engagement score 0-100 (README: Engagement score); null for a customer not written since the "
        "score exists."
    )
    channels: list[str] = Field(description="The channels of the customer's touchpoints (empty: not written since).")
    traits: dict[str, Any] = Field(default_factory=dict, description="Identify traits, the latest value of each.")
    identifiers: list[str] = Field(description="Identifier keys `type:value` (PII hashed when hashing is on).")
    metrics: list[ApiFigure] = Field(
        default_factory=list,
        description="The customer's own figures (scope customer, every window kept per customer), by window start.",
    )
    latest_alerts: list[ApiAlert] = Field(
        default_factory=list,
        description="The customer's latest alerts, newest first (the /alerts route pages them all).",
    )


class ApiEngagementChannel(BaseModel):
    """The engagement scores of the customers met in one channel (``all``: every customer)."""

    model_config = _OUT

    channel: str
    customers: int = Field(description="Customers with a score met in the channel.")
    p25: float | None = Field(description="25th percentile of their scores (nearest rank); null without customers.")
    p50: float | None = Field(description="Median score.")
    p75: float | None = Field(description="75th percentile.")
    p90: float | None = Field(description="90th percentile.")


class ApiEngagement(BaseModel):
    """The distribution of the engagement score per channel: a customer counts in every channel it was met in."""

    model_config = _OUT

    channels: list[ApiEngagementChannel]


class ApiMerge(BaseModel):
    """A customer merged into another, with the event and identifiers that linked them."""

    model_config = _OUT

    merged_id: str
    survivor_id: str = Field(description="The customer the merged one lives on as now (follows later merges).")
    merged_into: str | None = Field(
        default=None, description="The customer this merge joined it to (null for merges stored before 0009)."
    )
    event_id: str
    identifiers: dict[str, str]
    occurred_at: datetime


class ApiMerges(BaseModel):
    """A page of the merges that ended in a customer."""

    model_config = _OUT

    merges: list[ApiMerge]
    next: str | None = Field(description="Cursor of the next page (`?after=`); null on the last page.")


# --- Segment's Profile API shapes (so an existing client only changes its base URL) ---------------------------------


class SegmentCursor(BaseModel):
    """Segment's paging object."""

    url: str
    has_more: bool
    next: str


class SegmentTraits(BaseModel):
    """``GET .../profiles/{type}:{value}/traits``."""

    traits: dict[str, Any]
    cursor: SegmentCursor


class SegmentExternalId(BaseModel):
    """One identifier of a profile, as Segment lists them."""

    id: str
    type: str
    collection: str = "users"
    source_id: str = "cxstream"
    encoding: str = Field(description="none, or hashed when the value is the salted hash cxstream stores.")
    created_at: datetime


class SegmentEvent(BaseModel):
    """One event of a profile, as Segment lists them."""

    type: str
    event: str
    message_id: str
    timestamp: datetime
    properties: dict[str, Any]


class SegmentList(BaseModel):
    """``GET .../external_ids`` and ``.../events``."""

    data: list[SegmentExternalId] | list[SegmentEvent]
    cursor: SegmentCursor


class ErasureRequest(BaseModel):
    """``POST /v1/erasures``: erase one person (GDPR Art. 17)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ref: str = Field(min_length=1, max_length=1024, description="A customer id, or an identifier as type:value.")
    mode: Literal["suppress_with_delete", "delete_only"] = Field(
        "suppress_with_delete",
        description="suppress_with_delete: the person's events are dropped from now on, replays included; "
        "delete_only: rows removed only.",
    )
    reason: str = Field("", max_length=2000, description="Why (kept in the audit trail).")


class MergeRequest(BaseModel):
    """``POST /v1/merges``: merge two customers stitching did not link (``cxstream merge``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    first: str = Field(min_length=1, max_length=1024, description="A customer id, or an identifier as type:value.")
    second: str = Field(min_length=1, max_length=1024, description="Another customer id or identifier.")
    reason: str = Field("", max_length=2000, description="Why (kept in the audit trail).")


class MergeResult(BaseModel):
    """A merge made by hand: its id, the two customers, and the survivor once a worker applied it."""

    model_config = _OUT

    merge_id: str = Field(description="The merge's id: the subject of its audit_log row, the event_id on cx.identity.")
    customers: list[str]
    survivor: str | None = Field(
        description="The customer both now are; null when no worker applied it within the wait (the next one does)."
    )


class SplitRequest(BaseModel):
    """``POST /v1/splits``: split identifiers off a customer merged by mistake (``cxstream split``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    customer: str = Field(min_length=1, max_length=1024, description="A customer id, or an identifier as type:value.")
    identifiers: list[Annotated[str, Field(min_length=1, max_length=1024)]] = Field(
        min_length=1, max_length=100, description="The identifiers to move to the new customer, as type:value."
    )
    reason: str = Field("", max_length=2000, description="Why (kept in the audit trail).")


class SplitResult(BaseModel):
    """A split made by hand: its id, the customer split, the keys moved, and where both sides are once applied."""

    model_config = _OUT

    split_id: str = Field(description="The split's id: the subject of its audit_log row, the event_id on cx.identity.")
    customer_id: str = Field(description="The customer split.")
    moved: list[str] = Field(description="The identifier keys moved, as stored (hashed when hashing is on).")
    never_link_rules: int = Field(description="Never-link rules the split added (each moved key x each kept key).")
    moved_to: str | None = Field(description="The customer holding the moved identifiers; null until applied.")
    kept_by: str | None = Field(description="The customer holding the rest; null until applied.")


class ErasureResult(BaseModel):
    """What an erasure did (no identifiers: the erased customer id is the only reference kept)."""

    model_config = _OUT

    erasure_id: str = Field(description="The erasure's id: the subject of its audit_log row.")
    mode: str
    customer_id: str
    merged_ids: list[str] = Field(description="Customer ids merged into it earlier, tombstoned on cx.profiles too.")
    identifiers: int
    touchpoints: int
    alerts: int
    merges: int
    metric_cells: int
    suppressed_identifiers: int
    tombstones: int = Field(description="Null records published on cx.profiles and cx.metrics.")
    unpublished_before: int = Field(
        description="Outbox rows committed before the erasure still unpublished when the tombstones went out (0: none)."
    )
    problem: str | None = Field(
        None, description="What failed after the rows were erased (publishing to the broker); null: nothing."
    )
