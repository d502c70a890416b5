"""Store adapter: POS, till and loyalty-kiosk records to canonical touchpoints."""

from __future__ import annotations

from schemas.channels import StoreKind, StoreRecord
from schemas.touchpoint import Channel, EventType, IdentifierType, TouchpointEvent
from streams.adapters.base import Conversion, custom_candidates, survey_answers

_TYPES = {
    StoreKind.VISIT: EventType.STORE_VISIT,
    StoreKind.SALE: EventType.PURCHASE,
    StoreKind.RETURN: EventType.RETURN,
}


def to_touchpoint(record: StoreRecord, conversion: Conversion) -> TouchpointEvent:
    """Convert a store record: visit → STORE_VISIT, sale → PURCHASE, return → RETURN; feedback csat → survey."""
    identifiers = conversion.identifiers(
        [
            (IdentifierType.LOYALTY_ID, "loyalty_id", record.loyalty_id),
            (IdentifierType.EMAIL, "email", record.email),
            (IdentifierType.PHONE, "phone", record.phone),
        ],
        custom_candidates(record.identifiers),
    )
    # No free text: the attributes are the store's own ids and line items.
    attributes: dict[str, object] = {"store_id": record.store_id, "kind": str(record.kind)}
    if record.visit_id is not None:
        attributes["visit_id"] = record.visit_id
    if record.receipt_id is not None:
        attributes["receipt_id"] = record.receipt_id
    if record.items:
        attributes["items"] = [item.model_dump(mode="json", exclude_none=True) for item in record.items]
    return conversion.touchpoint(
        Channel.STORE,
        record,
        _TYPES[record.kind],
        identifiers,
        system=record.store_id,
        attributes=attributes,
        amount=record.total,
        currency=record.currency,
        survey=survey_answers(csat=record.feedback.csat) if record.feedback else None,
    )
