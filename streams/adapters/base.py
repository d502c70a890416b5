"""What every channel adapter shares: the converter signature, identifiers and survey answers."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol

from schemas.touchpoint import IdentifierType, SurveyAnswers, TouchpointEvent
from streams.domain.identifiers import InvalidIdentifier, normalise_identifier


class Converter(Protocol):
    """A channel's pure conversion of a validated source record into the canonical event."""

    def __call__(
        self,
        record: Any,
        *,
        received_at: datetime,
        source_file: str | None = None,
        line: int | None = None,
        default_region: str = "GB",
    ) -> TouchpointEvent: ...


# Parsing a phone number costs more than the rest of a record's conversion, and the same customers
# come back: a bounded memo of the pure normaliser pays for itself (failures are not cached).
_normalise = lru_cache(maxsize=65_536)(normalise_identifier)


def collect_identifiers(
    candidates: Iterable[tuple[IdentifierType, str, str | None]], default_region: str
) -> dict[IdentifierType, str]:
    """Normalise ``(type, field path, value)`` candidates, skipping absent ones.

    Raises InvalidIdentifier whose message starts with the field path, so a dead letter says which field was bad.
    """
    found: dict[IdentifierType, str] = {}
    for kind, field, value in candidates:
        if value is None:
            continue
        try:
            found[kind] = _normalise(kind, value, default_region)
        except InvalidIdentifier as exc:
            raise InvalidIdentifier(f"{field}: {exc}") from exc
    return found


def survey_answers(*, nps: int | None = None, csat: int | None = None, ces: int | None = None) -> SurveyAnswers | None:
    """Return the survey answers, or None when no score was given."""
    if nps is None and csat is None and ces is None:
        return None
    return SurveyAnswers(nps=nps, csat=csat, ces=ces)
