"""A touchpoint placed on a customer's timeline, as the domain computes and passes it around.

The fields, and their order, are those of the published record ``schemas.outputs.TimelineEntry`` (the pydantic
model the JSON Schema of the timeline topic comes from), so the record serialised from an ``Entry`` is the same
JSON (``tests/unit/test_timeline_json.py``). A plain dataclass, not the model: building and serialising a
pydantic model per entry cost 7-8 µs an event, the values here are computed, not read from outside.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from schemas.outputs import Moment, Stage
from schemas.touchpoint import Channel, EventType, SurveyAnswers


@dataclass(frozen=True, slots=True)
class Entry:
    """A touchpoint on a timeline with its stage, moments and issue context (``TimelineEntry``'s fields)."""

    #: None for an unattributed touchpoint (it carried no usable identifier).
    customer_id: str | None
    event_id: str
    channel: Channel
    type: EventType
    occurred_at: datetime
    received_at: datetime
    stage: Stage
    moments: tuple[Moment, ...] = ()
    amount: Decimal | None = None
    currency: str | None = None
    issue_key: str | None = None
    is_contact: bool = False
    contact_number: int = 0
    repeat_contact: bool = False
    resolved: bool | None = None
    resolved_at_first_contact: bool | None = None
    channel_switch: bool = False
    transfers: int = 0
    time_to_resolution_s: float | None = None
    resolution_contradicted: bool | None = None
    time_since_last_purchase_s: float | None = None
    survey: SurveyAnswers | None = None
    source_id: str = ""
