"""Source records of the four channels, as the source systems send them, before canonicalisation.

Strict where a wrong value would corrupt results (zone-less timestamps, money, score bounds, enums),
tolerant elsewhere: unknown fields are ignored, except on web records, which keep them because Segment
trackers send ``context``, ``sentAt``, ``integrations`` ... that downstream users may want.
Top-level numbers and booleans are parsed leniently ("4", "true") because CSV cells are strings;
nested survey scores are strict integers.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from schemas.limits import ISSUE_ID_MAX
from schemas.touchpoint import CES, CSAT, NPS, Channel, CustomIdentifierType, compose_id


def _iso_string_only(value: object) -> object:
    # Numbers would be read as Unix epochs in seconds or milliseconds by guesswork: insist on ISO 8601.
    if isinstance(value, str):
        return value
    raise ValueError("expected an ISO 8601 date-time string with a UTC offset")


def _number_to_str(value: object) -> object:
    # POS and ERP systems often send numeric ids; 12 and "12" are the same record.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _upper(value: object) -> object:
    # Upper-case before the pattern check, so that Segment's "usd" passes as USD.
    return value.strip().upper() if isinstance(value, str) else value


def _plain_decimal(value: Decimal) -> Decimal:
    # "1e2" is valid input, but 1E+2 is a poor amount to publish: store it as 100.
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent > 0:
        return value.quantize(Decimal(1))
    return value


#: An event time: an ISO 8601 string that must carry a UTC offset.
Timestamp = Annotated[AwareDatetime, BeforeValidator(_iso_string_only)]

#: A source system's id: a non-empty string (numbers accepted), at most 256 characters.
_IdText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=256)]
Id = Annotated[_IdText, BeforeValidator(_number_to_str, json_schema_input_type=_IdText | int)]

#: The case a contact is about: an id that must fit ``touchpoints.issue_id``.
_IssueIdText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=ISSUE_ID_MAX)]
IssueId = Annotated[_IssueIdText, BeforeValidator(_number_to_str, json_schema_input_type=_IssueIdText | int)]

#: Short free text (reasons, queue names, event names).
Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=256)]

#: A non-negative money amount with at most 4 decimal places: rejects NaN, infinity and float noise
#: such as 0.30000000000000004.
Money = Annotated[
    Decimal, Field(ge=0, max_digits=18, decimal_places=4, allow_inf_nan=False), AfterValidator(_plain_decimal)
]

#: An ISO 4217 currency code; lower case is accepted and upper-cased.
Currency = Annotated[str, BeforeValidator(_upper), StringConstraints(pattern=r"^[A-Z]{3}$")]

#: A quantity: positive, fractional for weighed goods.
Quantity = Annotated[Decimal, Field(gt=0, max_digits=12, decimal_places=3, allow_inf_nan=False)]

#: A duration in seconds: finite and non-negative.
Seconds = Annotated[float, Field(ge=0, le=7 * 86400, allow_inf_nan=False)]

_IGNORE = ConfigDict(extra="ignore", frozen=True)

#: Most custom identifiers one record may carry.
MAX_CUSTOM_IDENTIFIERS = 20


def custom_identifiers() -> dict[str, str]:
    """No custom identifiers (the default of a record's ``identifiers``)."""
    return {}


#: A record's identifiers of types of the deployment's own, by type name (``CXSTREAM_CUSTOM_IDENTIFIER_TYPES``).
CustomIdentifiers = Annotated[
    dict[CustomIdentifierType, Id],
    Field(
        default_factory=custom_identifiers,
        max_length=MAX_CUSTOM_IDENTIFIERS,
        description="Identifiers of custom types, by type name (lower-case letters, digits and _): stitched by a "
        "worker that declares the type in CXSTREAM_CUSTOM_IDENTIFIER_TYPES. A built-in type's name is read as that "
        "type when the record's own field for it is empty.",
    ),
]


class LineItem(BaseModel):
    """One line of a receipt or order."""

    model_config = _IGNORE

    sku: Id
    qty: Quantity = Decimal(1)
    unit_price: Money | None = None


# --- store -------------------------------------------------------------------------------------


class StoreKind(StrEnum):
    """What happened at the store."""

    VISIT = "visit"
    SALE = "sale"
    RETURN = "return"


class StoreFeedback(BaseModel):
    """Feedback given at a till or kiosk."""

    model_config = _IGNORE

    csat: CSAT


class StoreRecord(BaseModel):
    """A POS, till or loyalty-kiosk record: a visit, a sale or a return."""

    model_config = _IGNORE

    receipt_id: Id | None = Field(default=None, description="Receipt number; required for a sale or a return.")
    visit_id: Id | None = Field(default=None, description="Visit id, for a visit without a sale.")
    store_id: Id
    occurred_at: Timestamp
    kind: StoreKind
    loyalty_id: Id | None = None
    email: Label | None = None
    phone: Label | None = None
    identifiers: CustomIdentifiers
    total: Money | None = Field(default=None, description="Amount paid (sale) or refunded (return).")
    currency: Currency | None = None
    items: list[LineItem] = Field(default_factory=list)
    feedback: StoreFeedback | None = None

    @model_validator(mode="after")
    def _consistent(self) -> StoreRecord:
        if self.kind is StoreKind.VISIT:
            if self.receipt_id is None and self.visit_id is None:
                raise ValueError("a visit needs a visit_id (or a receipt_id)")
            if self.total is not None:
                raise ValueError("a visit carries no total; use kind 'sale' or 'return'")
        elif self.receipt_id is None:
            raise ValueError(f"a {self.kind} needs a receipt_id")
        if self.total is not None and self.currency is None:
            raise ValueError("currency is required when total is given")
        return self

    @property
    def source_id(self) -> str:
        """Deterministic id of this record; the kind keeps a return on its sale's receipt apart from the sale.

        ``store_id:kind:receipt`` (``compose_id``: escaped only when the store id holds ``:`` or ``\\``).
        """
        number = self.receipt_id or self.visit_id
        assert number is not None  # guaranteed by the model validator
        return compose_id(self.store_id, str(self.kind), number)


# --- phone -------------------------------------------------------------------------------------


class CallDirection(StrEnum):
    """Who placed the call."""

    INBOUND = "inbound"
    OUTBOUND = "outbound"


class CallSurvey(BaseModel):
    """Post-call survey answers."""

    model_config = _IGNORE

    csat: CSAT | None = None
    ces: CES | None = None
    nps: NPS | None = None


class PhoneRecord(BaseModel):
    """A call-centre call record."""

    model_config = _IGNORE

    call_id: Id
    occurred_at: Timestamp
    phone: Label = Field(description="The customer's number: caller (inbound) or number dialled (outbound).")
    crm_id: Id | None = None
    identifiers: CustomIdentifiers
    direction: CallDirection
    queue: Label | None = None
    wait_seconds: Seconds = 0.0
    duration_seconds: Seconds
    transfers: Annotated[int, Field(ge=0, le=1000)] = 0
    reason: Label | None = None
    issue_id: IssueId | None = None
    resolved: bool | None = None
    survey: CallSurvey | None = None

    @property
    def source_id(self) -> str:
        """Deterministic id of this record."""
        return self.call_id


# --- web (Segment tracking spec) ---------------------------------------------------------------


class SegmentType(StrEnum):
    """Segment call types; ``screen`` is the mobile page view, ``alias`` links a previous id to the user id, ``group``
    names the account (company, household) a user belongs to."""

    PAGE = "page"
    SCREEN = "screen"
    TRACK = "track"
    IDENTIFY = "identify"
    GROUP = "group"
    ALIAS = "alias"


_EVENT_NAME_SEPARATORS = re.compile(r"[\s_\-]+")

#: Folded name of the track event that carries survey answers.
SURVEY_ANSWERED = "survey answered"


def fold_event_name(name: str) -> str:
    """Fold a Segment event name for matching: trackers send "Order Completed", "order_completed", ..."""
    return _EVENT_NAME_SEPARATORS.sub(" ", name).strip().lower()


_ALLOW = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


class WebTraits(BaseModel):
    """Segment traits; only ``email`` is read, the rest is kept."""

    model_config = _ALLOW

    email: Label | None = None


class WebContext(BaseModel):
    """Segment context; ``traits`` and ``externalIds`` are read, the rest is kept."""

    model_config = _ALLOW

    traits: WebTraits | None = None
    external_ids: Any = Field(
        default=None,
        alias="externalIds",
        description="Identifiers of custom types (``[{id, type, collection, encoding}]``): entries of the users "
        "collection whose type can name an identifier type and whose id is a string or a whole number are read "
        "(the first 20), others ignored, never the message rejected for them: Segment libraries send types of "
        "their destinations too.",
    )


class WebProperties(BaseModel):
    """Segment properties; the fields cxstream reads are typed, the rest is kept as sent."""

    model_config = _ALLOW

    revenue: Money | None = None
    total: Money | None = None
    currency: Currency | None = None
    nps: NPS | None = None
    csat: CSAT | None = None
    ces: CES | None = None
    issue_id: IssueId | None = None
    ticket_id: IssueId | None = None
    reason: Label | None = None
    resolved: bool | None = None

    def is_empty_survey(self) -> bool:
        """True when no survey score is given."""
        return self.nps is None and self.csat is None and self.ces is None


class WebRecord(BaseModel):
    """One Segment message (page, screen, track or identify), as any Segment library sends it."""

    model_config = _ALLOW

    type: SegmentType
    message_id: Id = Field(alias="messageId")
    anonymous_id: Id | None = Field(default=None, alias="anonymousId")
    user_id: Id | None = Field(default=None, alias="userId")
    timestamp: Timestamp | None = None
    original_timestamp: Timestamp | None = Field(default=None, alias="originalTimestamp")
    event: Label | None = Field(default=None, description="Event name of a track call.")
    name: Label | None = Field(default=None, description="Page or screen name.")
    previous_id: Id | None = Field(default=None, alias="previousId", description="The id an alias call links from.")
    group_id: Id | None = Field(default=None, alias="groupId", description="The account a group call names.")
    properties: WebProperties = Field(default_factory=WebProperties)
    traits: WebTraits | None = None
    context: WebContext | None = None

    @model_validator(mode="after")
    def _consistent(self) -> WebRecord:
        if self.anonymous_id is None and self.user_id is None:
            raise ValueError("either anonymousId or userId is required")
        if self.timestamp is None and self.original_timestamp is None:
            raise ValueError("timestamp (or originalTimestamp) is required")
        if self.type is SegmentType.ALIAS and (self.previous_id is None or self.user_id is None):
            raise ValueError("an alias call needs previousId and userId")
        if self.type is SegmentType.GROUP and self.group_id is None:
            raise ValueError("a group call needs a groupId")
        if self.type is SegmentType.TRACK:
            if self.event is None:
                raise ValueError("a track call needs an event name")
            if fold_event_name(self.event) == SURVEY_ANSWERED and self.properties.is_empty_survey():
                raise ValueError("a Survey Answered event needs properties.nps, .csat or .ces")
        return self

    @property
    def occurred_at(self) -> datetime:
        """When it happened on the device: ``timestamp``, else ``originalTimestamp``."""
        occurred = self.timestamp or self.original_timestamp
        assert occurred is not None  # guaranteed by the model validator
        return occurred

    def email_trait(self) -> tuple[str, str] | None:
        """The person's e-mail trait with the path it came from: ``traits`` first, then ``context.traits``.

        A group call's ``traits`` describe the account, not the person: its e-mail is not the user's.
        """
        if self.type is not SegmentType.GROUP and self.traits is not None and self.traits.email is not None:
            return "traits.email", self.traits.email
        if self.context is not None and self.context.traits is not None and self.context.traits.email is not None:
            return "context.traits.email", self.context.traits.email
        return None

    @property
    def source_id(self) -> str:
        """Deterministic id of this record: Segment's messageId."""
        return self.message_id


# --- third-party e-commerce --------------------------------------------------------------------


class OrderStatus(StrEnum):
    """Order status reported by a marketplace; ``reviewed`` carries a review posted after the last status."""

    PLACED = "placed"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    DELIVERED_LATE = "delivered_late"
    RETURNED = "returned"
    CANCELLED = "cancelled"
    REVIEWED = "reviewed"


class Review(BaseModel):
    """A buyer's review of an order."""

    model_config = _IGNORE

    rating: CSAT
    text: Annotated[str, StringConstraints(max_length=10_000)] | None = None


class EcommerceRecord(BaseModel):
    """A marketplace order feed or webhook record: one status change of one order."""

    model_config = _IGNORE

    marketplace: Annotated[str, StringConstraints(strip_whitespace=True, to_lower=True, min_length=1, max_length=64)]
    order_id: Id
    buyer_id: Id
    buyer_email: Label | None = None
    identifiers: CustomIdentifiers
    occurred_at: Timestamp
    status: OrderStatus
    total: Money
    currency: Currency
    items: list[LineItem] = Field(default_factory=list)
    review: Review | None = None

    @model_validator(mode="after")
    def _consistent(self) -> EcommerceRecord:
        if self.status is OrderStatus.REVIEWED and self.review is None:
            raise ValueError("status 'reviewed' needs a review")
        return self

    @property
    def source_id(self) -> str:
        """Deterministic id of this record: one event per order and status.

        ``marketplace:order_id:status`` (``compose_id``: escaped only when the marketplace or the order id holds
        ``:`` or ``\\``).
        """
        return compose_id(self.marketplace, self.order_id, str(self.status))

    @property
    def buyer_key(self) -> str:
        """The buyer's identifier value, ``marketplace:buyer_id``: a buyer id is only unique within its marketplace."""
        return compose_id(self.marketplace, self.buyer_id)


#: The source-record model of each channel.
CHANNEL_MODELS: dict[Channel, type[BaseModel]] = {
    Channel.STORE: StoreRecord,
    Channel.PHONE: PhoneRecord,
    Channel.WEB: WebRecord,
    Channel.ECOMMERCE: EcommerceRecord,
}
