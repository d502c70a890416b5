"""What the read API (``cxstream api``) answers: the JSON documents of its routes, published in /openapi.json."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_OUT = ConfigDict(frozen=True)


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
    traits: dict[str, Any] = Field(default_factory=dict, description="Identify traits, the latest value of each.")
    identifiers: list[str] = Field(description="Identifier keys `type:value` (PII hashed when hashing is on).")


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
    """One metric figure of one window, as on `cx.metrics`."""

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
