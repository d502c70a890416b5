"""Phone adapter: call-centre call records to canonical touchpoints."""

from __future__ import annotations

from datetime import datetime

from schemas.channels import CallDirection, PhoneRecord
from schemas.touchpoint import Channel, EventType, IdentifierType, SourceRef, TouchpointEvent, derive_event_id
from streams.adapters.base import collect_identifiers, survey_answers
from streams.domain.identifiers import IdentifierHashing

#: Call reasons that make an inbound call a pre-purchase enquiry rather than a service contact.
ENQUIRY_REASONS: frozenset[str] = frozenset({"product_enquiry", "enquiry", "pre_sales"})


def _event_type(record: PhoneRecord) -> EventType:
    # Outbound calls (call-backs, follow-ups) are about an existing case, so they stay service contacts.
    reason = (record.reason or "").strip().lower().replace("-", "_").replace(" ", "_")
    if record.direction is CallDirection.INBOUND and reason in ENQUIRY_REASONS:
        return EventType.ENQUIRY
    return EventType.SUPPORT_CONTACT


def to_touchpoint(
    record: PhoneRecord,
    *,
    received_at: datetime,
    source_file: str | None = None,
    line: int | None = None,
    default_region: str = "GB",
    hashing: IdentifierHashing | None = None,
) -> TouchpointEvent:
    """Convert a call: SUPPORT_CONTACT, or ENQUIRY for an inbound pre-sales call; survey and issue carried."""
    identifiers = collect_identifiers(
        [
            (IdentifierType.CRM_ID, "crm_id", record.crm_id),
            (IdentifierType.PHONE, "phone", record.phone),
        ],
        default_region,
        hashing,
    )
    # The reason is free text, typed by an agent or a source system: the one place a caller's number may hide.
    reason = record.reason if hashing is None or record.reason is None else hashing.text(record.reason)
    attributes: dict[str, object] = {
        "direction": str(record.direction),
        "wait_seconds": record.wait_seconds,
        "duration_seconds": record.duration_seconds,
    }
    if record.queue is not None:
        attributes["queue"] = record.queue
    survey = record.survey
    return TouchpointEvent(
        event_id=derive_event_id(Channel.PHONE, record.source_id),
        channel=Channel.PHONE,
        type=_event_type(record),
        occurred_at=record.occurred_at,
        received_at=received_at,
        identifiers=identifiers,
        issue_id=record.issue_id,
        reason=reason,
        resolved=record.resolved,
        transfers=record.transfers,
        survey=survey_answers(nps=survey.nps, csat=survey.csat, ces=survey.ces) if survey else None,
        source=SourceRef(system=record.queue or "call-centre", id=record.source_id, file=source_file, line=line),
        attributes=attributes,
        hashed_with=hashing.fingerprint if hashing else None,
    )
