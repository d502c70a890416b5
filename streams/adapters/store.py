"""Store adapter: POS, till and loyalty-kiosk records to canonical touchpoints."""

from __future__ import annotations

from datetime import datetime

from schemas.channels import StoreKind, StoreRecord
from schemas.touchpoint import Channel, EventType, IdentifierType, SourceRef, TouchpointEvent, derive_event_id
from streams.adapters.base import collect_identifiers, survey_answers
from streams.domain.identifiers import IdentifierHashing

_TYPES = {
    StoreKind.VISIT: EventType.STORE_VISIT,
    StoreKind.SALE: EventType.PURCHASE,
    StoreKind.RETURN: EventType.RETURN,
}


def to_touchpoint(
    record: StoreRecord,
    *,
    received_at: datetime,
    source_file: str | None = None,
    line: int | None = None,
    default_region: str = "GB",
    hashing: IdentifierHashing | None = None,
) -> TouchpointEvent:
    """Convert a store record: visit → STORE_VISIT, sale → PURCHASE, return → RETURN; feedback csat → survey."""
    identifiers = collect_identifiers(
        [
            (IdentifierType.LOYALTY_ID, "loyalty_id", record.loyalty_id),
            (IdentifierType.EMAIL, "email", record.email),
            (IdentifierType.PHONE, "phone", record.phone),
        ],
        default_region,
        hashing,
    )
    # No free text: the attributes are the store's own ids and line items.
    attributes: dict[str, object] = {"store_id": record.store_id, "kind": str(record.kind)}
    if record.visit_id is not None:
        attributes["visit_id"] = record.visit_id
    if record.receipt_id is not None:
        attributes["receipt_id"] = record.receipt_id
    if record.items:
        attributes["items"] = [item.model_dump(mode="json", exclude_none=True) for item in record.items]
    source_id = record.source_id
    return TouchpointEvent(
        event_id=derive_event_id(Channel.STORE, source_id),
        channel=Channel.STORE,
        type=_TYPES[record.kind],
        occurred_at=record.occurred_at,
        received_at=received_at,
        identifiers=identifiers,
        amount=record.total,
        currency=record.currency,
        survey=survey_answers(csat=record.feedback.csat) if record.feedback else None,
        source=SourceRef(system=record.store_id, id=source_id, file=source_file, line=line),
        attributes=attributes,
        hashed_with=hashing.fingerprint if hashing else None,
    )
