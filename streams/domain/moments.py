"""Moments of truth: the touchpoints where an impression forms (docs/architecture.md §5).

Most moments follow from the touchpoint alone (:func:`event_moments`):

- ``support_contact``: every support contact; ``issue_resolved`` / ``issue_unresolved`` when the
  contact says whether it resolved its issue;
- ``complaint``: a support contact whose reason reads like a complaint (:data:`COMPLAINT_WORDS`, or the
  attribute ``complaint: true``), or a review rated 2 or less (attribute ``rating`` on a 1-5 scale,
  else the review's CSAT answer);
- ``return``, ``late_delivery``: touchpoints of those types;
- ``promoter`` / ``passive`` / ``detractor``: an NPS answer of 9-10 / 7-8 / 0-6.

``first_purchase`` depends on the customer's history (their earliest purchase in event time), so the
customer state decides it and adds it with :func:`with_first_purchase`.
"""

from __future__ import annotations

import re

from schemas.outputs import Moment
from schemas.touchpoint import EventType, TouchpointEvent

#: Words that make a contact reason a complaint (matched as whole words, lower-case).
COMPLAINT_WORDS: frozenset[str] = frozenset(
    {
        "complaint",
        "complain",
        "complained",
        "complaining",
        "broken",
        "damaged",
        "defective",
        "faulty",
        "missing",
        "wrong",
        "late",
        "delayed",
        "never",
        "rude",
        "poor",
        "unhappy",
        "dissatisfied",
        "disappointed",
        "refund",
        "overcharged",
        "escalation",
    }
)

#: Highest review rating (1-5) that counts as a complaint.
COMPLAINT_RATING = 2

_WORD = re.compile(r"[a-z]+")
#: Types that can be a moment by themselves (any type can also carry an NPS answer).
_MOMENT_TYPES = frozenset({EventType.SUPPORT_CONTACT, EventType.RETURN, EventType.LATE_DELIVERY, EventType.REVIEW})
_ORDER: dict[Moment, int] = {m: i for i, m in enumerate(Moment)}


def reason_is_complaint(reason: str | None) -> bool:
    """True when a contact reason contains a complaint word."""
    if not reason:
        return False
    return not COMPLAINT_WORDS.isdisjoint(_WORD.findall(reason.lower()))


def review_rating(event: TouchpointEvent) -> float | None:
    """The 1-5 rating of a review: attribute ``rating`` if numeric, else the CSAT answer, else None."""
    rating = event.attributes.get("rating")
    if isinstance(rating, int | float) and not isinstance(rating, bool):
        return float(rating)
    if event.survey is not None and event.survey.csat is not None:
        return float(event.survey.csat)
    return None


def is_complaint(event: TouchpointEvent) -> bool:
    """True when a touchpoint is a complaint: a complaining support contact or a badly rated review."""
    if event.type is EventType.SUPPORT_CONTACT:
        return event.attributes.get("complaint") is True or reason_is_complaint(event.reason)
    if event.type is EventType.REVIEW:
        rating = review_rating(event)
        return rating is not None and rating <= COMPLAINT_RATING
    return False


def nps_moment(score: int) -> Moment:
    """Return promoter (9-10), passive (7-8) or detractor (0-6) for an NPS answer."""
    if score >= 9:
        return Moment.PROMOTER
    if score >= 7:
        return Moment.PASSIVE
    return Moment.DETRACTOR


def event_moments(event: TouchpointEvent) -> tuple[Moment, ...]:
    """Return the moments of truth a touchpoint is by itself (all but first_purchase), in Moment order."""
    if event.type not in _MOMENT_TYPES and event.survey is None:
        return ()
    found: list[Moment] = []
    if event.type is EventType.SUPPORT_CONTACT:
        found.append(Moment.SUPPORT_CONTACT)
        if event.resolved is True:
            found.append(Moment.ISSUE_RESOLVED)
        elif event.resolved is False:
            found.append(Moment.ISSUE_UNRESOLVED)
    elif event.type is EventType.RETURN:
        found.append(Moment.RETURN)
    elif event.type is EventType.LATE_DELIVERY:
        found.append(Moment.LATE_DELIVERY)
    if is_complaint(event):
        found.append(Moment.COMPLAINT)
    if event.survey is not None and event.survey.nps is not None:
        found.append(nps_moment(event.survey.nps))
    found.sort(key=_ORDER.__getitem__)
    return tuple(found)


def with_contradiction(moments: tuple[Moment, ...]) -> tuple[Moment, ...]:
    """Add resolution_contradicted to a resolving contact's moments (it is the last moment in Moment order)."""
    return (*moments, Moment.RESOLUTION_CONTRADICTED)


def with_first_purchase(moments: tuple[Moment, ...]) -> tuple[Moment, ...]:
    """Add first_purchase to a touchpoint's moments, keeping Moment order (it is the first moment)."""
    return (Moment.FIRST_PURCHASE, *moments)
