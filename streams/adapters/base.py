"""What every channel adapter shares: a record's conversion (identifiers, free text, the common event fields),
survey answers, and the column checks of a converted event."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any, Protocol, TypedDict, Unpack

from schemas.limits import IDENTIFIER_VALUE_MAX, ISSUE_KEY_MAX, SOURCE_ID_MAX
from schemas.touchpoint import (
    Channel,
    EventType,
    IdentifierType,
    SourceRef,
    SurveyAnswers,
    TouchpointEvent,
    derive_event_id,
)
from streams.domain.customer import issue_key
from streams.domain.identifiers import IdentifierHashing, InvalidIdentifier, normalise_identifier

# Parsing a phone number costs more than the rest of a record's conversion, and the same customers
# come back: a bounded memo of the pure normaliser pays for itself (failures are not cached).
_normalise = lru_cache(maxsize=65_536)(normalise_identifier)


class SourceRecord(Protocol):
    """What every channel's validated record gives: its deterministic source id and its event time."""

    @property
    def source_id(self) -> str: ...

    @property
    def occurred_at(self) -> datetime: ...


class ChannelFields(TypedDict, total=False):
    """The touchpoint fields that only some channels fill; a channel passes those it has."""

    amount: Decimal | None
    currency: str | None
    issue_id: str | None
    reason: str | None
    resolved: bool | None
    transfers: int
    survey: SurveyAnswers | None


@dataclass(frozen=True, slots=True)
class Conversion:
    """One record's conversion: when and where the record arrived, and the settings it is converted under.

    With ``hashing`` (hashing on), no e-mail address or phone number may leave a converter raw: identifiers of those
    types are hashed by :meth:`identifiers`, the free text a converter copies goes through :meth:`text` (or
    ``hashing.walk``), and :meth:`touchpoint` sets ``hashed_with``.
    """

    received_at: datetime
    source_file: str | None = None
    line: int | None = None
    default_region: str = "GB"
    hashing: IdentifierHashing | None = None

    def identifiers(
        self,
        candidates: Iterable[tuple[IdentifierType, str, str | None]],
        custom: Iterable[tuple[str, str, str]] = (),
    ) -> dict[IdentifierType | str, str]:
        """Normalise ``(type, field path, value)`` candidates, skipping absent ones; with hashing, hash the PII.

        ``custom``: the record's identifiers of custom types (its ``identifiers`` object, Segment's
        ``context.externalIds``), as ``(type, field path, value)``; one of a built-in type is read as that type
        when the record's own field for it is empty.
        Raises InvalidIdentifier whose message starts with the field path, so a dead letter says which field was bad.
        """
        found: dict[IdentifierType | str, str] = {}
        seen: set[str] = set()  # types given a value (found, or left out as blocked)
        for kind, field, value in [*candidates, *((_builtin(name), path, v) for name, path, v in custom)]:
            if kind in seen or value is None:
                continue  # the record's own field for a built-in type comes first
            seen.add(kind)
            try:
                normalised = _normalise(kind, value, self.default_region)
            except InvalidIdentifier as exc:
                raise InvalidIdentifier(f"{field}: {exc}") from exc
            if self.hashing is None:
                found[kind] = normalised
            elif not self.hashing.blocked.blocks(kind, normalised):  # hashed, a blocked value could not be told
                found[kind] = self.hashing.value(kind, normalised)
        return found

    def text(self, text: str | None) -> str | None:
        """Free text as it may be copied into an event: with hashing on, its e-mails and phone numbers hashed."""
        return text if self.hashing is None or text is None else self.hashing.text(text)

    def touchpoint(
        self,
        channel: Channel,
        record: SourceRecord,
        type: EventType,
        identifiers: dict[IdentifierType | str, str],
        *,
        system: str,
        attributes: dict[str, Any],
        **fields: Unpack[ChannelFields],
    ) -> TouchpointEvent:
        """The canonical event of ``record``: what every channel fills alike, and the channel's own ``fields``.

        The event id derives from the channel and the record's source id, so a record sent twice gets the same id.
        """
        source_id = record.source_id
        return TouchpointEvent(
            event_id=derive_event_id(channel, source_id),
            channel=channel,
            type=type,
            occurred_at=record.occurred_at,
            received_at=self.received_at,
            identifiers=identifiers,
            source=SourceRef(system=system, id=source_id, file=self.source_file, line=self.line),
            attributes=attributes,
            hashed_with=self.hashing.fingerprint if self.hashing else None,
            **fields,
        )


#: A channel's pure conversion of a validated source record into the canonical event (``to_touchpoint``).
Converter = Callable[[Any, Conversion], TouchpointEvent]


def custom_candidates(identifiers: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """A record's ``identifiers`` object as custom candidates for :meth:`Conversion.identifiers`."""
    return [(name, f"identifiers.{name}", value) for name, value in identifiers.items()]


def _builtin(name: str) -> IdentifierType | str:
    """A custom identifier's type: the built-in type of that name, if there is one."""
    try:
        return IdentifierType(name)
    except ValueError:
        return name


def survey_answers(*, nps: int | None = None, csat: int | None = None, ces: int | None = None) -> SurveyAnswers | None:
    """Return the survey answers, or None when no score was given."""
    if nps is None and csat is None and ces is None:
        return None
    return SurveyAnswers(nps=nps, csat=csat, ces=ces)


#: What a channel's source id is made of, for the dead letter of one that is too long.
SOURCE_ID_FIELDS: dict[Channel, str] = {
    Channel.STORE: "store_id:kind:receipt_id (or visit_id)",
    Channel.PHONE: "call_id",
    Channel.WEB: "messageId",
    Channel.ECOMMERCE: "marketplace:order_id:status",
}
#: Where a channel's contact reason comes from.
REASON_FIELDS: dict[Channel, str] = {Channel.PHONE: "reason", Channel.WEB: "properties.reason"}


def column_problem(event: TouchpointEvent) -> str | None:
    """Why a converted event would not fit its SQL columns (``schemas.limits``), as a dead-letter detail; else None.

    What one field of a source record holds is bounded by its model; these are the values composed from several
    fields, or changed on the way (a folded reason), checked on the event itself so that nothing is left that
    PostgreSQL would refuse and SQLite store.
    """
    if len(event.source.id) > SOURCE_ID_MAX:
        return (
            f"record: the source id {SOURCE_ID_FIELDS[event.channel]} is {len(event.source.id)} characters; "
            f"at most {SOURCE_ID_MAX} fit"
        )
    for kind, value in event.identifiers.items():
        if len(value) > IDENTIFIER_VALUE_MAX:
            return f"{kind}: the identifier is {len(value)} characters; at most {IDENTIFIER_VALUE_MAX} fit"
    key = issue_key(event)
    if key is not None and len(key) > ISSUE_KEY_MAX:
        # Only a reason can do this (issue ids are bounded by the models): it is the issue of a contact without one.
        field = REASON_FIELDS.get(event.channel, "reason")
        return (
            f"{field}: too long to name an issue ({len(key)} characters with its prefix; at most {ISSUE_KEY_MAX} fit)"
        )
    return None
