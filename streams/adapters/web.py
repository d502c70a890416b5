"""Web adapter: Segment tracking-spec messages to canonical touchpoints."""

from __future__ import annotations

import re

from schemas.channels import MAX_CUSTOM_IDENTIFIERS, SURVEY_ANSWERED, SegmentType, WebRecord, fold_event_name
from schemas.limits import IDENTIFIER_VALUE_MAX
from schemas.touchpoint import CUSTOM_TYPE_PATTERN, Channel, EventType, IdentifierType, TouchpointEvent
from streams.adapters.base import Conversion, survey_answers

#: Segment e-commerce spec event names (and cxstream's own), keyed by their folded form (see ``fold_event_name``).
TRACK_EVENTS: dict[str, EventType] = {
    "product viewed": EventType.PRODUCT_VIEW,
    "product list viewed": EventType.PAGE_VIEW,
    "products searched": EventType.SEARCH,
    "product list filtered": EventType.SEARCH,
    "product added": EventType.ADD_TO_CART,
    "checkout started": EventType.CHECKOUT,
    "order completed": EventType.PURCHASE,
    "order refunded": EventType.RETURN,
    "order cancelled": EventType.CANCELLATION,
    "product reviewed": EventType.REVIEW,
    SURVEY_ANSWERED: EventType.SURVEY,
    "support ticket created": EventType.SUPPORT_CONTACT,
    "complaint submitted": EventType.SUPPORT_CONTACT,
    "contact form submitted": EventType.SUPPORT_CONTACT,
    "live chat started": EventType.SUPPORT_CONTACT,
}

#: An unknown track event naming a support subject and a contact action is a support contact
#: ("Support Request Sent", "Ticket Opened"); "Support Article Viewed" is not.
_SUPPORT_SUBJECT = re.compile(r"\b(support|complaint|ticket|case)\b")
_CONTACT_ACTION = re.compile(r"\b(created|submitted|opened|raised|requested|sent|started|filed|logged)\b")
_COMPLAINT_WORDS = re.compile(r"\bcomplain(t|ts|ed)?\b")

#: Attribute paths of issue ids, left as they are when free text is hashed.
_ISSUE_IDS = frozenset({"properties.issue_id", "properties.ticket_id"})

#: Track events whose touchpoint moves money (amount = properties.revenue, else properties.total).
_MONEY_TYPES = frozenset({EventType.PURCHASE, EventType.RETURN})


def track_event_type(name: str) -> EventType:
    """Map a Segment track event name to an event type; unknown names are OTHER."""
    folded = fold_event_name(name)
    known = TRACK_EVENTS.get(folded)
    if known is not None:
        return known
    if _SUPPORT_SUBJECT.search(folded) and _CONTACT_ACTION.search(folded):
        return EventType.SUPPORT_CONTACT
    return EventType.OTHER


def _event_type(record: WebRecord) -> EventType:
    if record.type in (SegmentType.IDENTIFY, SegmentType.ALIAS, SegmentType.GROUP):
        return EventType.IDENTIFY
    if record.type is SegmentType.TRACK:
        assert record.event is not None  # guaranteed by the model validator
        return track_event_type(record.event)
    return EventType.PAGE_VIEW


def _external_ids(record: WebRecord) -> list[tuple[str, str, str]]:
    """Segment's ``context.externalIds`` as custom identifier candidates: those whose type may name one (others, such
    as a destination's own spelling, are not identifiers cxstream could be told to stitch by)."""
    entries = None if record.context is None else record.context.external_ids
    if not isinstance(entries, list):
        return []
    found: list[tuple[str, str, str]] = []
    for n, entry in enumerate(entries):
        if len(found) == MAX_CUSTOM_IDENTIFIERS:
            break
        if not isinstance(entry, dict) or entry.get("collection", "users") != "users":
            continue  # an account's id ("accounts", a group's) names every user of the account: never a person
        kind, value = entry.get("type"), entry.get("id")
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if (
            not isinstance(kind, str)
            or not isinstance(value, str)
            or not 0 < len(value.strip()) <= IDENTIFIER_VALUE_MAX
        ):
            continue
        kind = kind.strip().lower()
        if re.fullmatch(CUSTOM_TYPE_PATTERN, kind):
            found.append((kind, f"context.externalIds[{n}]", value.strip()))
    return found


def to_touchpoint(record: WebRecord, conversion: Conversion) -> TouchpointEvent:
    """Convert a Segment message: page/screen → PAGE_VIEW, identify/alias/group → IDENTIFY, track by spec event name."""
    email_field, email = record.email_trait() or ("traits.email", None)
    # analytics.js aliases from the anonymous id when no user was identified yet (then previousId is the message's
    # anonymousId): that is the link an alias makes. A previousId that is an earlier user id links nothing: one
    # customer holds one web user id by default, and the alias is kept as an attribute.
    aliased_anonymous = record.anonymous_id in (None, record.previous_id)
    identifiers = conversion.identifiers(
        [
            (IdentifierType.WEB_ANONYMOUS_ID, "anonymousId", record.anonymous_id),
            (IdentifierType.WEB_USER_ID, "userId", record.user_id),
            (IdentifierType.EMAIL, email_field, email),
            (IdentifierType.WEB_ANONYMOUS_ID, "previousId", record.previous_id if aliased_anonymous else None),
        ],
        _external_ids(record),
    )
    kind = _event_type(record)
    props = record.properties
    # Copied: the event and page names and the properties, kept whole because trackers put anything there (an
    # "email" property, a phone number in a form field), and an identify call's traits. Not copied: context
    # (context.traits holds the e-mail), sentAt, integrations. With hashing on, every string copied is passed through hashing.text.
    attributes: dict[str, object] = {"segment_type": str(record.type)}
    if record.event is not None:
        attributes["event"] = record.event
    if record.name is not None:
        attributes["name"] = record.name
    if record.type is SegmentType.IDENTIFY and record.traits is not None:
        # Kept on the customer's profile, latest by event time per trait (a group call's traits are the account's).
        traits = record.traits.model_dump(mode="json", exclude_none=True)
        if traits:
            attributes["traits"] = traits
    if record.previous_id is not None and not aliased_anonymous:
        # An earlier user id: hashed as user ids are when CXSTREAM_HASHED_IDENTIFIER_TYPES names them.
        previous = record.previous_id
        attributes["previous_id"] = (
            previous
            if conversion.hashing is None
            else conversion.hashing.value(IdentifierType.WEB_USER_ID, previous.strip())
        )
    if record.group_id is not None:
        # An account, not a person: kept on the touchpoint, never a stitching identifier (a company's users
        # would all become one customer).
        attributes["group_id"] = record.group_id
    properties = props.model_dump(mode="json", exclude_none=True)
    if properties:
        attributes["properties"] = properties
    if conversion.hashing is not None:
        # Issue ids stay as sent: they are ids, stored as the touchpoint's issue_id (and equal to the event's).
        attributes = conversion.hashing.walk(attributes, keep=_ISSUE_IDS.__contains__)
    reason = conversion.text(props.reason)
    rating = (props.model_extra or {}).get("rating")
    if kind is EventType.REVIEW and isinstance(rating, int | float) and not isinstance(rating, bool):
        # Segment's Product Reviewed gives no scale, so the rating is not a CSAT answer; the timeline reads it here.
        attributes["rating"] = rating
    if record.event is not None and _COMPLAINT_WORDS.search(fold_event_name(record.event)):
        # The timeline flags complaints; a complaint form is one even when it names no reason.
        attributes["complaint"] = True
        reason = reason or "complaint"
    money = kind in _MONEY_TYPES
    support = kind is EventType.SUPPORT_CONTACT
    return conversion.touchpoint(
        Channel.WEB,
        record,
        kind,
        identifiers,
        system="web",
        attributes=attributes,
        amount=(props.revenue if props.revenue is not None else props.total) if money else None,
        currency=props.currency if money else None,
        issue_id=(props.issue_id or props.ticket_id) if support else None,
        reason=reason if support else None,
        resolved=props.resolved if support else None,
        survey=survey_answers(nps=props.nps, csat=props.csat, ces=props.ces),
    )
