"""Journey stages of touchpoints and of customers.

A touchpoint's stage follows from its type alone (docs/architecture.md §5):

- pre-purchase: page_view, product_view, search, add_to_cart, identify, store_visit, enquiry;
- purchase: checkout, purchase;
- post-purchase: shipment, delivery, late_delivery, cancellation, return, support_contact, review, survey, usage.

``other`` (a channel-specific kind cxstream does not know) is pre-purchase until the customer has
purchased and post-purchase after, so an unknown touchpoint never claims a purchase stage.

A customer's current stage is decided by this rule:

1. While the customer has an open issue (a support contact not yet resolved), the stage is
   post-purchase: someone waiting for service is in service, whatever they browse meanwhile.
2. Otherwise it is the stage of the customer's latest *journey* touchpoint in event time. Survey
   answers, reviews and ``other`` events are not journey touchpoints: feedback arrives after the fact
   and describes an earlier experience, so it must not move the customer. Browsing after a purchase
   does move the customer back to pre-purchase: a returning customer is shopping again.
3. A customer with no journey touchpoint at all takes the stage of their latest touchpoint.

The latest touchpoint is the maximum of (is journey touchpoint, occurred_at, event_id), which does not
depend on the order events arrive in.
"""

from __future__ import annotations

from schemas.outputs import Stage
from schemas.touchpoint import EventType

PRE_PURCHASE_TYPES: frozenset[EventType] = frozenset(
    {
        EventType.PAGE_VIEW,
        EventType.PRODUCT_VIEW,
        EventType.SEARCH,
        EventType.ADD_TO_CART,
        EventType.IDENTIFY,
        EventType.STORE_VISIT,
        EventType.ENQUIRY,
    }
)
PURCHASE_TYPES: frozenset[EventType] = frozenset({EventType.CHECKOUT, EventType.PURCHASE})
POST_PURCHASE_TYPES: frozenset[EventType] = frozenset(
    {
        EventType.SHIPMENT,
        EventType.DELIVERY,
        EventType.LATE_DELIVERY,
        EventType.CANCELLATION,
        EventType.RETURN,
        EventType.SUPPORT_CONTACT,
        EventType.REVIEW,
        EventType.SURVEY,
        EventType.USAGE,
    }
)

#: Touchpoints that do not move a customer along the journey (see the module docstring).
NON_JOURNEY_TYPES: frozenset[EventType] = frozenset({EventType.SURVEY, EventType.REVIEW, EventType.OTHER})

_STAGE: dict[EventType, Stage] = {
    **{t: Stage.PRE_PURCHASE for t in PRE_PURCHASE_TYPES},
    **{t: Stage.PURCHASE for t in PURCHASE_TYPES},
    **{t: Stage.POST_PURCHASE for t in POST_PURCHASE_TYPES},
}


def stage_of(event_type: EventType, purchased_before: bool = False) -> Stage:
    """Return the journey stage of a touchpoint; ``purchased_before`` only matters for ``other``."""
    stage = _STAGE.get(event_type)
    if stage is not None:
        return stage
    return Stage.POST_PURCHASE if purchased_before else Stage.PRE_PURCHASE


def is_journey_event(event_type: EventType) -> bool:
    """True when a touchpoint of this type moves the customer's current stage."""
    return event_type not in NON_JOURNEY_TYPES


def customer_stage(latest_stage: Stage, has_open_issue: bool) -> Stage:
    """Return a customer's current stage from the stage of its latest touchpoint (rule in the docstring)."""
    return Stage.POST_PURCHASE if has_open_issue else latest_stage
