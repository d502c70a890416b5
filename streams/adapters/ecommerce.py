"""E-commerce adapter: third-party marketplace order records to canonical touchpoints."""

from __future__ import annotations

from schemas.channels import EcommerceRecord, OrderStatus
from schemas.touchpoint import Channel, EventType, IdentifierType, TouchpointEvent
from streams.adapters.base import Conversion, custom_candidates, survey_answers

_TYPES = {
    OrderStatus.PLACED: EventType.PURCHASE,
    OrderStatus.SHIPPED: EventType.SHIPMENT,
    OrderStatus.DELIVERED: EventType.DELIVERY,
    OrderStatus.DELIVERED_LATE: EventType.LATE_DELIVERY,
    OrderStatus.RETURNED: EventType.RETURN,
    OrderStatus.CANCELLED: EventType.CANCELLATION,
    OrderStatus.REVIEWED: EventType.REVIEW,
}

#: Statuses whose touchpoint moves money; the others carry the order total in attributes only,
#: so that summing ``amount`` over purchases never counts an order twice.
_MONEY_STATUSES = frozenset({OrderStatus.PLACED, OrderStatus.RETURNED})


def to_touchpoint(record: EcommerceRecord, conversion: Conversion) -> TouchpointEvent:
    """Convert an order status record; a review rides on it as attributes.review and survey.csat = rating."""
    identifiers = conversion.identifiers(
        [
            (IdentifierType.MARKETPLACE_BUYER_ID, "buyer_id", record.buyer_key),
            (IdentifierType.EMAIL, "buyer_email", record.buyer_email),
        ],
        custom_candidates(record.identifiers),
    )
    # buyer_email is an identifier only, never an attribute: with hashing on it leaves as a salted hash or not at all.
    attributes: dict[str, object] = {
        "marketplace": record.marketplace,
        "order_id": record.order_id,
        "status": str(record.status),
        "order_total": str(record.total),
    }
    if record.items:
        attributes["items"] = [item.model_dump(mode="json", exclude_none=True) for item in record.items]
    if record.review is not None:
        review = record.review.model_dump(mode="json", exclude_none=True)
        if "text" in review:
            review["text"] = conversion.text(review["text"])  # buyers sign reviews with their e-mail or number
        attributes["review"] = review
    money = record.status in _MONEY_STATUSES
    return conversion.touchpoint(
        Channel.ECOMMERCE,
        record,
        _TYPES[record.status],
        identifiers,
        system=record.marketplace,
        attributes=attributes,
        amount=record.total if money else None,
        currency=record.currency,
        survey=survey_answers(csat=record.review.rating) if record.review else None,
    )
