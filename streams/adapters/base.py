"""What every channel adapter shares: the converter signature, identifiers and survey answers."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol

from schemas.limits import IDENTIFIER_VALUE_MAX, ISSUE_KEY_MAX, SOURCE_ID_MAX
from schemas.touchpoint import Channel, IdentifierType, SurveyAnswers, TouchpointEvent
from streams.domain.customer import issue_key
from streams.domain.identifiers import IdentifierHashing, InvalidIdentifier, normalise_identifier


class Converter(Protocol):
    """A channel's pure conversion of a validated source record into the canonical event.

    With ``hashing`` (hashing on), no e-mail address or phone number may leave it raw: identifiers of those types
    are hashed by ``collect_identifiers``, and the converter passes the free text it copies through
    ``hashing.text`` (or ``walk``) and sets ``hashed_with``.
    """

    def __call__(
        self,
        record: Any,
        *,
        received_at: datetime,
        source_file: str | None = None,
        line: int | None = None,
        default_region: str = "GB",
        hashing: IdentifierHashing | None = None,
    ) -> TouchpointEvent: ...


# Parsing a phone number costs more than the rest of a record's conversion, and the same customers
# come back: a bounded memo of the pure normaliser pays for itself (failures are not cached).
_normalise = lru_cache(maxsize=65_536)(normalise_identifier)


def collect_identifiers(
    candidates: Iterable[tuple[IdentifierType, str, str | None]],
    default_region: str,
    hashing: IdentifierHashing | None = None,
) -> dict[IdentifierType, str]:
    """Normalise ``(type, field path, value)`` candidates, skipping absent ones; with ``hashing``, hash the PII.

    Raises InvalidIdentifier whose message starts with the field path, so a dead letter says which field was bad.
    """
    found: dict[IdentifierType, str] = {}
    for kind, field, value in candidates:
        if value is None:
            continue
        try:
            normalised = _normalise(kind, value, default_region)
        except InvalidIdentifier as exc:
            raise InvalidIdentifier(f"{field}: {exc}") from exc
        found[kind] = normalised if hashing is None else hashing.value(kind, normalised)
    return found


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
