"""Phone adapter: call-centre call records to canonical touchpoints."""

from __future__ import annotations

from schemas.channels import CallDirection, PhoneRecord
from schemas.touchpoint import Channel, EventType, IdentifierType, TouchpointEvent
from streams.adapters.base import Conversion, custom_candidates, survey_answers

#: Call reasons that make an inbound call a pre-purchase enquiry rather than a service contact.
ENQUIRY_REASONS: frozenset[str] = frozenset({"product_enquiry", "enquiry", "pre_sales"})


def _event_type(record: PhoneRecord) -> EventType:
    # Outbound calls (call-backs, follow-ups) are about an existing case, so they stay service contacts.
    reason = (record.reason or "").strip().lower().replace("-", "_").replace(" ", "_")
    if record.direction is CallDirection.INBOUND and reason in ENQUIRY_REASONS:
        return EventType.ENQUIRY
    return EventType.SUPPORT_CONTACT


def to_touchpoint(record: PhoneRecord, conversion: Conversion) -> TouchpointEvent:
    """Convert a call: SUPPORT_CONTACT, or ENQUIRY for an inbound pre-sales call; survey and issue carried."""
    identifiers = conversion.identifiers(
        [
            (IdentifierType.CRM_ID, "crm_id", record.crm_id),
            (IdentifierType.PHONE, "phone", record.phone),
        ],
        custom_candidates(record.identifiers),
    )
    # The reason is free text, typed by an agent or a source system: the one place a caller's number may hide.
    reason = conversion.text(record.reason)
    attributes: dict[str, object] = {
        "direction": str(record.direction),
        "wait_seconds": record.wait_seconds,
        "duration_seconds": record.duration_seconds,
    }
    if record.queue is not None:
        attributes["queue"] = record.queue
    survey = record.survey
    return conversion.touchpoint(
        Channel.PHONE,
        record,
        _event_type(record),
        identifiers,
        system=record.queue or "call-centre",
        attributes=attributes,
        issue_id=record.issue_id,
        reason=reason,
        resolved=record.resolved,
        transfers=record.transfers,
        survey=survey_answers(nps=survey.nps, csat=survey.csat, ces=survey.ces) if survey else None,
    )
