"""The canonical touchpoint event: what every channel adapter produces and the worker consumes."""

from __future__ import annotations

import hashlib
import re
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, ConfigDict, Field, StringConstraints, TypeAdapter, model_validator
from pydantic.dataclasses import dataclass
from pydantic.json_schema import JsonSchemaMode

#: A salted identifier hash: 64 lower-case hex digits (HMAC-SHA256).
_HASHED = re.compile(r"[0-9a-f]{64}")


class Channel(StrEnum):
    """Where the company met the customer."""

    STORE = "store"
    PHONE = "phone"
    WEB = "web"
    ECOMMERCE = "ecommerce"


class IdentifierType(StrEnum):
    """Typed customer identifiers; the order of declaration is their strength (strongest first)."""

    CRM_ID = "crm_id"
    LOYALTY_ID = "loyalty_id"
    EMAIL = "email"
    PHONE = "phone"
    WEB_USER_ID = "web_user_id"
    MARKETPLACE_BUYER_ID = "marketplace_buyer_id"
    WEB_ANONYMOUS_ID = "web_anonymous_id"


#: Strength rank of each identifier type: lower is stronger.
IDENTIFIER_RANK: dict[IdentifierType, int] = {t: i for i, t in enumerate(IdentifierType)}

#: The spelling of a custom identifier type's name (declared in ``CXSTREAM_CUSTOM_IDENTIFIER_TYPES``).
CUSTOM_TYPE_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
#: A custom identifier type: a name a deployment declares for an identifier of its own (a membership number).
CustomIdentifierType = Annotated[str, StringConstraints(pattern=CUSTOM_TYPE_PATTERN)]
#: An identifier type: one of :class:`IdentifierType`, or a custom one. Left to right, so a built-in name is always
#: the enum member (code compares them with ``is``).
IdentifierName = Annotated[IdentifierType | CustomIdentifierType, Field(union_mode="left_to_right")]
#: The JSON Schema of a map keyed by identifier type (pydantic cannot state a union of keys itself).
IDENTIFIER_NAMES_SCHEMA: dict[str, Any] = {
    "propertyNames": {
        "pattern": CUSTOM_TYPE_PATTERN,
        "description": "An identifier type: "
        + ", ".join(t.value for t in IdentifierType)
        + ", or a custom type (CXSTREAM_CUSTOM_IDENTIFIER_TYPES).",
    }
}


class EventType(StrEnum):
    """Channel-independent kind of touchpoint; the journey stage is derived from it."""

    PAGE_VIEW = "page_view"
    PRODUCT_VIEW = "product_view"
    SEARCH = "search"
    ADD_TO_CART = "add_to_cart"
    CHECKOUT = "checkout"
    IDENTIFY = "identify"
    STORE_VISIT = "store_visit"
    ENQUIRY = "enquiry"
    PURCHASE = "purchase"
    SHIPMENT = "shipment"
    DELIVERY = "delivery"
    LATE_DELIVERY = "late_delivery"
    CANCELLATION = "cancellation"
    RETURN = "return"
    SUPPORT_CONTACT = "support_contact"
    REVIEW = "review"
    SURVEY = "survey"
    USAGE = "usage"
    OTHER = "other"


NPS = Annotated[int, Field(ge=0, le=10, strict=True)]
CSAT = Annotated[int, Field(ge=1, le=5, strict=True)]
CES = Annotated[int, Field(ge=1, le=7, strict=True)]


@dataclass(frozen=True, slots=True, kw_only=True, config=ConfigDict(extra="forbid"))
class SurveyAnswers:
    """Survey scores given with a touchpoint; each scale is bounded (NPS 0-10, CSAT 1-5, CES 1-7)."""

    nps: NPS | None = None
    csat: CSAT | None = None
    ces: CES | None = None

    def is_empty(self) -> bool:
        """True when no score was given."""
        return self.nps is None and self.csat is None and self.ces is None


@dataclass(frozen=True, slots=True, kw_only=True, config=ConfigDict(extra="forbid"))
class SourceRef:
    """Where a touchpoint came from, for tracing it back to the source system."""

    system: str = Field(description="Source system within the channel: store id, call queue, marketplace, site.")
    id: str = Field(description="The source's own record id (receipt, call, messageId, order id + status).")
    file: str | None = None
    line: int | None = None


# A pydantic dataclass with slots, not a BaseModel: a batch holds thousands of events at once, and a BaseModel
# instance keeps a __dict__ and a set of the fields given per model. 20,000 of the benchmark's events: 3,254 ->
# 1,718 bytes each, validated from JSON in 5.6 -> 4.5 µs. The model_* methods below keep BaseModel's interface.
@dataclass(frozen=True, slots=True, kw_only=True, config=ConfigDict(extra="ignore"))
class TouchpointEvent:
    """One validated customer touchpoint in canonical form, whatever the channel."""

    event_id: str = Field(description="Deterministic id derived from channel + source id: the idempotency key.")
    channel: Channel
    type: EventType
    occurred_at: AwareDatetime
    received_at: AwareDatetime
    identifiers: dict[IdentifierName, str] = Field(
        default_factory=dict,
        description="Normalised identifiers the channel knows the person by: built-in types, or custom ones "
        "(stitched by a worker that declares them in CXSTREAM_CUSTOM_IDENTIFIER_TYPES).",
        json_schema_extra=IDENTIFIER_NAMES_SCHEMA,
    )
    amount: Decimal | None = Field(default=None, description="Money value of the touchpoint (order total).")
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] | None = None
    issue_id: str | None = Field(default=None, description="The case a service contact is about.")
    reason: str | None = Field(default=None, description="Contact reason; groups contacts when there is no issue id.")
    resolved: bool | None = Field(default=None, description="Whether a service contact resolved its issue.")
    transfers: Annotated[int, Field(ge=0)] = 0
    survey: SurveyAnswers | None = None
    source: SourceRef
    attributes: dict[str, Any] = Field(default_factory=dict, description="Free channel-specific attributes.")
    hashed_with: str | None = Field(
        default=None,
        description="Set when the adapter hashed the personal data: the fingerprint of the salt it used, then '+' "
        "and the types it hashed besides email and phone, if any. The identifiers of the hashed types (email and phone, and "
        "those CXSTREAM_HASHED_IDENTIFIER_TYPES adds) are then salted hashes (64 hex digits), stored as they are, "
        "and e-mails and phone numbers in free text are replaced by their keys. None: identifiers as the source "
        "gave them (normalised).",
    )

    @model_validator(mode="after")
    def _hashed_identifiers(self) -> TouchpointEvent:
        # A raw value under a hashed marker would be stored as if it were a hash: raw PII in the identities table.
        if self.hashed_with is not None:
            for kind in (IdentifierType.EMAIL, IdentifierType.PHONE):
                value = self.identifiers.get(kind)
                if value is not None and not _HASHED.fullmatch(value):
                    raise ValueError(f"identifiers.{kind}: not a salted hash, although hashed_with is set")
        return self

    @classmethod
    def model_validate_json(cls, data: str | bytes) -> TouchpointEvent:
        """The event a JSON document holds, validated (``pydantic.ValidationError`` if it is not one)."""
        return _EVENT.validate_json(data)

    @classmethod
    def model_validate(cls, data: Any) -> TouchpointEvent:
        """The event a Python object (a dict, as from JSON) holds, validated."""
        return _EVENT.validate_python(data)

    @classmethod
    def model_json_schema(cls, mode: JsonSchemaMode = "validation") -> dict[str, Any]:
        """The JSON Schema of the event (``schemas.jsonschema``)."""
        return _EVENT.json_schema(mode=mode)

    def model_dump_json(self) -> str:
        """The event as JSON, as it is published (``Decimal`` as a string)."""
        return _EVENT.dump_json(self).decode()

    def model_copy(self, *, update: dict[str, Any] | None = None) -> TouchpointEvent:
        """A copy with the ``update`` fields replaced, not validated again (as ``BaseModel.model_copy``)."""
        copy = object.__new__(TouchpointEvent)
        for name in TouchpointEvent.__dataclass_fields__:
            object.__setattr__(copy, name, getattr(self, name))
        for name, value in (update or {}).items():
            if name not in TouchpointEvent.__dataclass_fields__:
                raise TypeError(f"TouchpointEvent has no field {name!r}")
            object.__setattr__(copy, name, value)
        return copy

    def model_dump(self, mode: Literal["python", "json"] = "python") -> dict[str, Any]:
        """The event as a dict (``mode="json"``: as JSON would give it)."""
        dumped: dict[str, Any] = _EVENT.dump_python(self, mode=mode)
        return dumped


_EVENT = TypeAdapter(TouchpointEvent)


#: Joins the parts of a composed id: a store record's ``store_id:kind:receipt``, a marketplace buyer's
#: ``marketplace:buyer_id``.
ID_SEPARATOR = ":"
#: Escapes the separator and itself inside the parts of a composed id, when the id has to be escaped at all.
ID_ESCAPE = "\\"


def _escape_part(part: str) -> str:
    return part.replace(ID_ESCAPE, ID_ESCAPE * 2).replace(ID_SEPARATOR, ID_ESCAPE + ID_SEPARATOR)


def compose_id(*parts: str) -> str:
    """Join the parts of a composed id with ``:`` so that different parts always give different ids.

    Ids written before this was injective joined the parts as they are, and databases hold them as idempotency
    keys, so they are kept wherever they were unambiguous: when no part but the last holds ``:`` or ``\\``, the
    parts are joined as they are (the last part may hold anything: splitting at the first colons reads it back).
    Otherwise every part is escaped (``\\`` → ``\\\\``, ``:`` → ``\\:``). The two forms never meet: up to its
    n-1th colon (n parts), a joined id holds no ``\\``, and an escaped one always does (the first part that
    needed escaping puts one there). So it is injective for a fixed number of parts, which every caller has.
    """
    if all(ID_SEPARATOR not in part and ID_ESCAPE not in part for part in parts[:-1]):
        return ID_SEPARATOR.join(parts)
    return ID_SEPARATOR.join(map(_escape_part, parts))


def derive_event_id(channel: Channel | str, source_id: str) -> str:
    """Return the deterministic event id for a source record: the same record always gets the same id."""
    digest = hashlib.sha256(f"{channel}\x1f{source_id}".encode()).hexdigest()
    return f"{channel}-{digest[:24]}"
