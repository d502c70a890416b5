"""Per-customer state: one record per customer, a bounded summary of the customer's history.

A :class:`CustomerState` holds facts about the customer's events; every per-entry field that depends on other
events (issue context, first purchase, time since the last purchase, the stage of an ``other`` event) is derived
from those facts by :meth:`CustomerState.derive`. The full history lives in the touchpoints table; the state
keeps the recent part of it, and a batch that needs more reads it back (:meth:`CustomerState.restore`).

Issues. A support contact is about the issue ``issue_id``, or, without one, about
``reason:<normalised reason>``. An issue's context for a contact looks back over the same issue's
contacts within its lookback: ``issue_memory_s`` for an issue id, ``repeat_contact_window_s`` for a reason
key. Within it, the contact number counts those contacts, a repeat contact has a previous one within the
repeat window, a channel switch changes channel from the previous one, and a resolving contact's time to
resolution runs from the first one. An issue is open when its latest contact did not resolve it and is within
the lookback of the customer's latest event (older unresolved issues are abandoned).

Retention. What the state keeps is a function of the set of the customer's events, never of their arrival
order, so the same events in any order and any batch split give equal states (``to_dict()`` included):

- *facts* (``issues``: contacts per issue; ``purchase_times``) from ``facts_from`` on, plus the latest purchase
  before it (the previous purchase of the next one); ``first_purchase``, ``anchor`` and the counters cover
  everything;
- *history*: the entries later events can change (contacts, purchases, ``other``) or alert rules read (surveys,
  moments of truth), from ``history_from`` on; other entries (page views, visits...) never change after they
  are made and are not kept;
- *engagement* week counts (``engagement``): every event's tally in the weeks within
  ``EngagementPolicy.horizon_weeks`` of the latest event's week; integers, so their sums do not depend on the order
  they are added in, and no event is ever read back for them.

After each batch (:meth:`prune`) both boundaries are the customer's latest event time minus ``CustomerPolicy.keep_s``
(the longest lookback of any derivation or alert rule, plus ``grace_s``), and ``history_from`` rises further
when more than ``timeline_limit`` entries would be kept. An event up to ``grace_s`` older than the customer's
latest is therefore applied from the state alone; an older one needs facts and history from before the
boundaries, which the worker reads from the touchpoints table first (``stitching.Stitcher.history_needs``).
"""

from __future__ import annotations

import heapq
import math
import re
from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from operator import itemgetter
from typing import Any, NamedTuple

from schemas.outputs import Moment, Stage
from schemas.touchpoint import Channel, EventType, SurveyAnswers, TouchpointEvent
from streams.domain.engagement import EngagementPolicy, add_tally, merge_buckets, prune_buckets, score, tally, week_of
from streams.domain.entry import Entry
from streams.domain.identity import ANONYMOUS_TYPE, DEFAULT_RANKS, Ranks
from streams.domain.moments import event_moments, with_contradiction, with_first_purchase
from streams.domain.profile import Profile
from streams.domain.stages import customer_stage, is_journey_event, stage_of

#: A timeline entry as stored: a list, so a state row is compact JSON and loads without conversion.
Row = list[Any]
#: Positions in a :data:`Row`.
T, EVENT_ID, CHANNEL, TYPE, RECEIVED, AMOUNT, CURRENCY, ISSUE, RESOLVED, TRANSFERS, SURVEY, SOURCE, MOMENTS = range(13)

#: Prefix of issue keys derived from a contact reason (contacts without an issue id).
REASON_PREFIX = "reason:"
#: Version of the ``to_dict`` layout (1: a recent timeline of every entry and a dedupe set; 2: facts and history
#: with their completeness boundaries).
STATE_VERSION = 2

#: Most identify traits a customer keeps (and groups: accounts it belongs to); names beyond are not kept.
MAX_TRAITS = 100

#: Event types whose entries later events can change (contacts, purchases, ``other``; see ``derive``).
REVISABLE_TYPES: frozenset[str] = frozenset(
    {EventType.SUPPORT_CONTACT.value, EventType.PURCHASE.value, EventType.OTHER.value}
)

_ROW_KEY = itemgetter(T, EVENT_ID)
#: Contacts are ``[t, event_id, channel, resolved]`` and purchases ``[t, event_id]``: sorted by the pair.
_PAIR = itemgetter(0, 1)
_SPACES = re.compile(r"\s+")
_AMOUNT_QUANTUM = Decimal("0.0001")
_TYPES: dict[str, EventType] = {t.value: t for t in EventType}
_MOMENTS: dict[str, Moment] = {m.value: m for m in Moment}
_STAGES: dict[str, Stage] = {s.value: s for s in Stage}
#: Per event type: (is a journey event, its stage as stored in the anchor).
_ANCHOR_OF: dict[str, tuple[bool, str]] = {t.value: (is_journey_event(t), stage_of(t).value) for t in EventType}
_CHANNELS: dict[str, Channel] = {c.value: c for c in Channel}
_PURCHASE = EventType.PURCHASE.value
_CONTACT = EventType.SUPPORT_CONTACT.value
_FIRST_PURCHASE = Moment.FIRST_PURCHASE.value
_CONTRADICTED = Moment.RESOLUTION_CONTRADICTED.value
#: Moments derived from other events: not stored in a row (``row_of`` drops them from the published ones).
_DERIVED_MOMENTS = frozenset({_FIRST_PURCHASE, _CONTRADICTED})
_NEVER = -math.inf


def issue_key(event: TouchpointEvent) -> str | None:
    """The issue a touchpoint is about: its issue id, or for a contact without one its reason."""
    if event.issue_id:
        return event.issue_id
    if event.type is not EventType.SUPPORT_CONTACT:
        return None
    reason = _SPACES.sub(" ", (event.reason or "").strip().lower())
    return REASON_PREFIX + (reason or "unspecified")


def canonical_amount(amount: Decimal) -> str:
    """An amount as entries carry it: at most four decimals (as SQL stores it), without trailing zeros.

    One spelling per value, so an entry rebuilt from the touchpoints table (``row_of``) equals the one made from
    the event ("12.50" and "12.5000" are both "12.5").
    """
    try:
        return format(amount.quantize(_AMOUNT_QUANTUM).normalize(), "f")
    except InvalidOperation:  # beyond the precision of a decimal context: no database column holds it either
        return str(amount)


def make_row(event: TouchpointEvent, t: float) -> Row:
    """The stored timeline entry of an event occurring at ``t`` (its facts; derived fields come on output)."""
    survey = event.survey
    return [
        t,
        event.event_id,
        str(event.channel),
        str(event.type),
        event.received_at.timestamp(),
        None if event.amount is None else canonical_amount(event.amount),
        event.currency,
        issue_key(event),
        event.resolved,
        event.transfers,
        None if survey is None or survey.is_empty() else [survey.nps, survey.csat, survey.ces],
        event.source.id,
        [str(m) for m in event_moments(event)],
    ]


class StoredEntry(NamedTuple):
    """A touchpoint as the touchpoints table holds it: what :func:`row_of` rebuilds a :data:`Row` from."""

    occurred_at: datetime
    event_id: str
    channel: str
    type: str
    received_at: datetime
    amount: Decimal | None
    currency: str | None
    issue_key: str | None
    resolved: bool | None
    transfers: int
    nps: int | None
    csat: int | None
    ces: int | None
    source_id: str
    #: The entry's moments as published, comma-separated (``first_purchase`` is derived and dropped here).
    moments: str


def identify_details(event: TouchpointEvent) -> dict[str, Any] | None:
    """What a customer state keeps of an identify call beyond its row: its traits and group id (None: not an
    identify call, or one with neither). Stored with its touchpoint, so a state can be rebuilt from the table."""
    if event.type is not EventType.IDENTIFY:
        return None
    attributes = event.attributes
    details: dict[str, Any] = {name: attributes[name] for name in ("traits", "group_id") if name in attributes}
    return details or None


def row_of(stored: StoredEntry) -> Row:
    """The :data:`Row` of a stored touchpoint: equal to the one :func:`make_row` made from its event."""
    survey = (
        None
        if stored.nps is None and stored.csat is None and stored.ces is None
        else [stored.nps, stored.csat, stored.ces]
    )
    return [
        stored.occurred_at.timestamp(),
        stored.event_id,
        stored.channel,
        stored.type,
        stored.received_at.timestamp(),
        None if stored.amount is None else canonical_amount(stored.amount),
        stored.currency,
        stored.issue_key,
        stored.resolved,
        stored.transfers,
        survey,
        stored.source_id,
        [m for m in stored.moments.split(",") if m and m not in _DERIVED_MOMENTS],
    ]


def is_kept(row: Row) -> bool:
    """True for entries a state's history keeps: later events can change them, or alert rules read them."""
    return row[TYPE] in REVISABLE_TYPES or bool(row[MOMENTS]) or row[SURVEY] is not None


@dataclass(frozen=True, slots=True)
class CustomerPolicy:
    """What the customer state reads: its lookbacks, retention and size (built by ``streams.policies``)."""

    #: Most kept entries of a customer's history (see Retention).
    timeline_limit: int
    #: A contact about an issue contacted within this window is a repeat contact, seconds.
    repeat_window_s: float
    #: How long contacts about one issue id count as one issue, seconds (raised to ``repeat_window_s`` if shorter).
    issue_memory_s: float
    #: How late an event may be, relative to its customer's latest, and still be applied from the state alone.
    grace_s: float
    #: How far around an entry alert rules look (``alerts.AlertPolicy.longest_window_s``).
    alert_span_s: float
    #: A recorded resolution is contradicted by a contact about the same issue, or a low survey score, within
    #: this many seconds after it (0: never).
    contradiction_window_s: float = 0.0
    #: Survey answers that contradict a resolution: NPS at most, CSAT at most, CES at most (1-7, higher is easier).
    low_scores: LowScores = field(default_factory=lambda: LowScores(6, 2, 3))
    #: The engagement score's parameters (``streams.domain.engagement``).
    engagement: EngagementPolicy = field(default_factory=EngagementPolicy)

    def __post_init__(self) -> None:
        # An issue id is remembered at least as long as a repeat contact is.
        object.__setattr__(self, "issue_memory_s", max(self.issue_memory_s, self.repeat_window_s))

    def lookback(self, issue: str) -> float:
        """How far back a contact's context looks for contacts about the same issue, seconds."""
        return self.repeat_window_s if issue.startswith(REASON_PREFIX) else self.issue_memory_s

    @property
    def span_s(self) -> float:
        """How far from an entry anything derived from it, or read with it, reaches (any lookback, any alert rule)."""
        return max(self.issue_memory_s, self.repeat_window_s, self.alert_span_s, self.contradiction_window_s)

    @property
    def keep_s(self) -> float:
        """How far back from a customer's latest event its state keeps facts and history (see Retention)."""
        return self.span_s + self.grace_s

    def history_needed(self, row: Row) -> float | None:
        """From what event time on a customer's facts and history must be complete to apply ``row``.

        None when the entry needs nothing (a page view: no derived field, no alert rule reads it).
        """
        return row[T] - self.span_s if is_kept(row) else None


class LowScores(NamedTuple):
    """Survey answers low enough to contradict a recorded resolution (each bound included)."""

    nps_max: int
    csat_max: int
    ces_max: int

    def contradict(self, survey: list[Any] | None) -> bool:
        """True when a row's survey ``[nps, csat, ces]`` holds a low answer."""
        if survey is None:
            return False
        nps, csat, ces = survey
        return (
            (nps is not None and nps <= self.nps_max)
            or (csat is not None and csat <= self.csat_max)
            or (ces is not None and ces <= self.ces_max)
        )


class ContactContext(NamedTuple):
    """A contact's place in its issue (see the module docstring)."""

    number: int
    repeat: bool
    channel_switch: bool
    resolved_at_first_contact: bool | None
    time_to_resolution_s: float | None
    #: For a resolving contact: whether the customer contradicted it (None: not a resolving contact).
    contradicted: bool | None = None


class Derived(NamedTuple):
    """The fields of a timeline entry that depend on the customer's other events."""

    stage: Stage
    first_purchase: bool
    time_since_last_purchase_s: float | None
    contact: ContactContext | None


def standalone(row: Row) -> Derived:
    """Derived fields of an entry that belongs to no known customer: it has no history, nor a first purchase."""
    kind = row[TYPE]
    if kind == _CONTACT:
        resolved = row[RESOLVED] is True
        context = ContactContext(
            1, False, False, True if resolved else None, 0.0 if resolved else None, False if resolved else None
        )
        return Derived(Stage.POST_PURCHASE, False, None, context)
    return Derived(stage_of(_TYPES[kind]), False, None, None)


@dataclass(frozen=True, slots=True)
class OpenIssue:
    """An issue whose latest contact did not resolve it."""

    key: str
    first_contact_at: float
    last_contact_at: float
    contacts: int
    last_channel: str


def timeline_entry(customer_id: str | None, row: Row, derived: Derived) -> Entry:
    """The timeline entry of a stored row with its derived fields (no customer: unattributed)."""
    stored = row[MOMENTS]
    moments = tuple(_MOMENTS[m] for m in stored) if stored else ()
    if derived.first_purchase:
        moments = with_first_purchase(moments)
    context = derived.contact
    if context is not None and context.contradicted:
        moments = with_contradiction(moments)
    survey = row[SURVEY]
    amount = row[AMOUNT]
    if amount is not None and not isinstance(amount, Decimal):
        amount = Decimal(amount)  # a row read back from the stored state JSON holds its amount as a string
    return Entry(
        customer_id=customer_id,
        event_id=row[EVENT_ID],
        channel=_CHANNELS[row[CHANNEL]],
        type=_TYPES[row[TYPE]],
        occurred_at=datetime.fromtimestamp(row[T], UTC),
        received_at=datetime.fromtimestamp(row[RECEIVED], UTC),
        stage=derived.stage,
        moments=moments,
        amount=amount,
        currency=row[CURRENCY],
        issue_key=row[ISSUE],
        is_contact=row[TYPE] == EventType.SUPPORT_CONTACT,
        contact_number=context.number if context else 0,
        repeat_contact=context.repeat if context else False,
        resolved=row[RESOLVED],
        resolved_at_first_contact=context.resolved_at_first_contact if context else None,
        channel_switch=context.channel_switch if context else False,
        transfers=row[TRANSFERS],
        time_to_resolution_s=context.time_to_resolution_s if context else None,
        resolution_contradicted=context.contradicted if context else None,
        time_since_last_purchase_s=derived.time_since_last_purchase_s,
        survey=None if survey is None else SurveyAnswers(nps=survey[0], csat=survey[1], ces=survey[2]),
        source_id=row[SOURCE],
    )


class CustomerState:
    """Everything cxstream remembers about one customer; stored as one JSON row (``to_dict``)."""

    __slots__ = (
        "anchor",
        "channels",
        "contacts",
        "customer_id",
        "engagement",
        "events",
        "facts_from",
        "first_purchase",
        "first_seen",
        "groups",
        "history",
        "history_from",
        "identifiers",
        "issues",
        "last_seen",
        "merged_into",
        "purchase_times",
        "purchases",
        "returns",
        "revenue",
        "traits",
    )

    def __init__(self, customer_id: str) -> None:
        self.customer_id = customer_id
        #: Identifier values held, by key type, each list sorted (the keys are ``type:value``).
        self.identifiers: dict[str, list[str]] = {}
        #: Entries that later events can change or alert rules read (``is_kept``), in event-time order: every
        #: such entry at or after ``history_from``.
        self.history: list[Row] = []
        self.history_from = _NEVER
        #: Contacts ``[t, event_id, channel, resolved]`` by issue key, sorted: every contact at or after
        #: ``facts_from``.
        self.issues: dict[str, list[list[Any]]] = {}
        #: Purchase times ``[t, event_id]``, sorted: every purchase at or after ``facts_from`` and the latest
        #: before it.
        self.purchase_times: list[list[Any]] = []
        self.facts_from = _NEVER
        #: The earliest purchase ever, ``(t, event_id)``.
        self.first_purchase: tuple[float, str] | None = None
        #: The latest touchpoint: ``(is journey event, t, event_id, stage)``; decides the current stage.
        self.anchor: tuple[bool, float, str, str] | None = None
        self.events = 0
        self.purchases = 0
        self.revenue = Decimal(0)
        self.contacts = 0
        self.returns = 0
        self.channels: dict[str, int] = {}
        #: Engagement counts by week, ``[week, touches, purchases, positive surveys, negative surveys, negative
        #: moments]`` sorted by week: every event's tally (``engagement.tally``) of the weeks within the horizon of
        #: the latest event (older weeks are pruned, and their late events only counted until the batch ends).
        self.engagement: list[list[int]] = []
        #: Traits the customer's identify calls gave, by name: ``[value, t, event_id]`` of the latest by event time
        #: (ties by event id), so that any arrival order gives the same traits.
        self.traits: dict[str, list[Any]] = {}
        #: Accounts (Segment group ids) the customer's group calls named, sorted.
        self.groups: list[str] = []
        self.first_seen = 0.0
        self.last_seen = 0.0
        #: Set (in memory only) on a state absorbed by another during a batch.
        self.merged_into: CustomerState | None = None

    # --- identifiers ---------------------------------------------------------------------------

    def identifier_keys(self) -> list[str]:
        """Every identifier key the customer holds."""
        return [f"{kind}:{value}" for kind, values in self.identifiers.items() for value in values]

    def add_key(self, key: str) -> None:
        """Record that the customer holds ``key``."""
        kind, _, value = key.partition(":")
        values = self.identifiers.setdefault(kind, [])
        if value not in values:
            insort(values, value)

    def strongest_key(self, rank: Ranks = DEFAULT_RANKS) -> str:
        """The customer's strongest identifier key (its id is derived from it)."""
        kind = min(self.identifiers, key=rank.__getitem__)
        return f"{kind}:{self.identifiers[kind][0]}"

    # --- events --------------------------------------------------------------------------------

    @property
    def complete_from(self) -> float:
        """The event time from which both facts and history are complete."""
        return max(self.facts_from, self.history_from)

    def find(self, t: float, event_id: str) -> Row | None:
        """The history row of an event, or None when it is not (or no longer) kept."""
        history = self.history
        i = bisect_left(history, (t, event_id), key=_ROW_KEY)
        if i < len(history) and history[i][EVENT_ID] == event_id:
            return history[i]
        return None

    def affected_by(self, row: Row, policy: CustomerPolicy) -> list[Row]:
        """Rows whose derived fields may change when ``row`` is added; call before :meth:`add`."""
        t, event_id, kind = row[T], row[EVENT_ID], row[TYPE]
        pair = (t, event_id)
        found: list[Row | None] = []
        window = policy.contradiction_window_s
        if kind == _CONTACT:
            contacts = self.issues.get(row[ISSUE])
            if contacts and _PAIR(contacts[-1]) > pair:
                horizon = t + policy.lookback(row[ISSUE])
                for contact in contacts[bisect_left(contacts, pair, key=_PAIR) :]:
                    if contact[0] > horizon:
                        break
                    found.append(self.find(contact[0], contact[1]))
            if contacts and window > 0:
                # Resolutions of the same issue just before it: this contact may contradict them.
                i = bisect_left(contacts, pair, key=_PAIR)
                for contact in reversed(contacts[bisect_left(contacts, (t - window,), 0, i, key=_PAIR) : i]):
                    if contact[3] is True:
                        found.append(self.find(contact[0], contact[1]))
        if window > 0 and policy.low_scores.contradict(row[SURVEY]):
            # Resolutions of any issue just before a low answer: it may contradict them.
            history = self.history
            start = bisect_left(history, (t - window,), key=_ROW_KEY)
            stop = bisect_left(history, pair, key=_ROW_KEY)
            found.extend(r for r in history[start:stop] if r[TYPE] == _CONTACT and r[RESOLVED] is True)
        if kind == _PURCHASE:
            times = self.purchase_times
            i = bisect_left(times, pair, key=_PAIR)
            if i < len(times):
                found.append(self.find(times[i][0], times[i][1]))
            if self.first_purchase is None or pair < self.first_purchase:
                found.extend(self._others_between(pair, self.first_purchase))
        return [r for r in found if r is not None]

    def _others_between(self, low: tuple[float, str], high: tuple[float, str] | None) -> list[Row]:
        """``other`` rows after ``low`` and before ``high`` (None: no bound)."""
        history = self.history
        start = bisect_left(history, low, key=_ROW_KEY)
        stop = len(history) if high is None else bisect_left(history, high, key=_ROW_KEY)
        return [r for r in history[start:stop] if r[TYPE] == EventType.OTHER]

    def add(self, row: Row, identify: Mapping[str, Any] | None) -> None:
        """Add an accepted event (not applied before): its row, and for an identify call what
        :func:`identify_details` keeps of it."""
        t, event_id, kind = row[T], row[EVENT_ID], row[TYPE]
        if is_kept(row):
            history = self.history
            if not history or _ROW_KEY(history[-1]) < (t, event_id):
                history.append(row)
            else:
                history.insert(bisect_left(history, (t, event_id), key=_ROW_KEY), row)
        if self.events == 0:
            self.first_seen = self.last_seen = t
        else:
            self.first_seen = min(self.first_seen, t)
            self.last_seen = max(self.last_seen, t)
        self.events += 1
        self.channels[row[CHANNEL]] = self.channels.get(row[CHANNEL], 0) + 1
        counts = tally(kind, row[SURVEY], row[MOMENTS])
        if counts is not None:
            add_tally(self.engagement, week_of(t), counts)
        if kind == _PURCHASE:
            self.purchases += 1
            if row[AMOUNT] is not None:
                # As the row holds it (canonical_amount), so a state rebuilt from the table sums the same digits.
                self.revenue += Decimal(row[AMOUNT])
            insort(self.purchase_times, [t, event_id], key=_PAIR)
            if self.first_purchase is None or (t, event_id) < self.first_purchase:
                self.first_purchase = (t, event_id)
        elif kind == _CONTACT:
            self.contacts += 1
            insort(self.issues.setdefault(row[ISSUE], []), [t, event_id, row[CHANNEL], row[RESOLVED]], key=_PAIR)
        elif kind == EventType.RETURN:
            self.returns += 1
        elif kind == EventType.IDENTIFY and identify:
            given = identify.get("traits")
            if isinstance(given, dict):
                self.take_traits({name: [value, t, event_id] for name, value in given.items()})
            group = identify.get("group_id")
            if isinstance(group, str) and group not in self.groups and len(self.groups) < MAX_TRAITS:
                insort(self.groups, group)
        journey, stage = _ANCHOR_OF[kind]
        anchor = (journey, t, event_id, stage)
        if self.anchor is None or anchor > self.anchor:
            self.anchor = anchor

    def restore(self, rows: Iterable[Row], previous_purchase: tuple[float, str] | None, since: float) -> None:
        """Put back what retention dropped, from the touchpoints table: make facts and history complete from ``since``.

        ``rows`` are the customer's kept entries (``is_kept``) from ``since`` up to ``complete_from``, in any
        order; ``previous_purchase`` is its latest purchase before ``since``. What the state holds already is
        not added twice.
        """
        if since >= self.complete_from:
            return
        history_ids = {row[EVENT_ID] for row in self.history if row[T] < self.history_from}
        # Every purchase held, not only those before facts_from: when only history is restored (facts_from <= since
        # < history_from), the previous purchase may be one the facts hold already.
        fact_ids = {p[1] for p in self.purchase_times}
        for contacts in self.issues.values():
            fact_ids.update(c[1] for c in contacts if c[0] < self.facts_from)
        for row in rows:
            t, event_id = row[T], row[EVENT_ID]
            if since <= t < self.history_from and event_id not in history_ids:
                insort(self.history, row, key=_ROW_KEY)
                history_ids.add(event_id)
            if since <= t < self.facts_from and event_id not in fact_ids:
                fact_ids.add(event_id)
                if row[TYPE] == _PURCHASE:
                    insort(self.purchase_times, [t, event_id], key=_PAIR)
                elif row[TYPE] == _CONTACT:
                    contact = [t, event_id, row[CHANNEL], row[RESOLVED]]
                    insort(self.issues.setdefault(row[ISSUE], []), contact, key=_PAIR)
        if previous_purchase is not None and previous_purchase[1] not in fact_ids:
            insort(self.purchase_times, list(previous_purchase), key=_PAIR)
        self.history_from = min(self.history_from, since)
        self.facts_from = min(self.facts_from, since)

    # --- merges --------------------------------------------------------------------------------

    def merge_affected(self, other: CustomerState, policy: CustomerPolicy) -> list[tuple[CustomerState, Row]]:
        """Rows of either state whose derived fields may change when the two merge.

        Only rows whose fields the merged facts can derive are candidates: the worker made the states complete
        from early enough that no other row can change (``stitching.Stitcher.history_needs``).
        """
        facts_from = max(self.facts_from, other.facts_from)
        found: list[tuple[CustomerState, Row | None]] = []
        sides = (self, other)
        for key in self.issues.keys() & other.issues.keys():
            derivable = facts_from + policy.lookback(key)
            for side in sides:
                for contact in side.issues[key]:
                    if contact[0] >= derivable:
                        found.append((side, side.find(contact[0], contact[1])))
        if policy.contradiction_window_s > 0:
            # Either side's events may contradict the other's resolutions.
            complete = max(self.complete_from, other.complete_from)
            for side in sides:
                history = side.history
                found.extend(
                    (side, r)
                    for r in history[bisect_left(history, (complete,), key=_ROW_KEY) :]
                    if r[TYPE] == _CONTACT and r[RESOLVED] is True
                )
        if self.purchase_times and other.purchase_times:
            for side in sides:
                for t, event_id in side.purchase_times:
                    if t >= facts_from:
                        found.append((side, side.find(t, event_id)))
        firsts = [p for p in (self.first_purchase, other.first_purchase) if p is not None]
        if firsts:
            first = min(firsts)
            for side in sides:
                if side.first_purchase is None or first < side.first_purchase:
                    found.extend((side, r) for r in side._others_between(first, side.first_purchase))
        return [(side, r) for side, r in found if r is not None]

    def take_traits(self, traits: dict[str, list[Any]]) -> None:
        """Keep, per trait, the value given latest by event time (``[value, t, event_id]``); at most
        :data:`MAX_TRAITS` names (the state is rewritten with every event: a client must not grow it at will)."""
        mine = self.traits
        for name, given in traits.items():
            held = mine.get(name)
            if held is None:
                if len(mine) < MAX_TRAITS:
                    mine[name] = given
            elif (held[1], held[2]) < (given[1], given[2]):
                mine[name] = given

    def absorb(self, other: CustomerState) -> None:
        """Take over everything ``other`` holds: identifiers, facts, history, counters, traits."""
        self.take_traits(other.traits)
        self.groups = sorted(set(self.groups).union(other.groups))[:MAX_TRAITS]
        for kind, values in other.identifiers.items():
            mine = self.identifiers.get(kind)
            self.identifiers[kind] = sorted(set(values).union(mine)) if mine else list(values)
        self.history = list(heapq.merge(self.history, other.history, key=_ROW_KEY))
        for key, contacts in other.issues.items():
            mine_contacts = self.issues.get(key)
            self.issues[key] = list(heapq.merge(mine_contacts, contacts, key=_PAIR)) if mine_contacts else contacts
        self.purchase_times = list(heapq.merge(self.purchase_times, other.purchase_times, key=_PAIR))
        # Each side is complete from its own boundary: together, from the later one.
        self.history_from = max(self.history_from, other.history_from)
        self.facts_from = max(self.facts_from, other.facts_from)
        firsts = [p for p in (self.first_purchase, other.first_purchase) if p is not None]
        self.first_purchase = min(firsts) if firsts else None
        anchors = [a for a in (self.anchor, other.anchor) if a is not None]
        self.anchor = max(anchors) if anchors else None
        if not self.events:
            self.first_seen, self.last_seen = other.first_seen, other.last_seen
        elif other.events:
            self.first_seen = min(self.first_seen, other.first_seen)
            self.last_seen = max(self.last_seen, other.last_seen)
        self.events += other.events
        self.purchases += other.purchases
        self.revenue += other.revenue
        self.contacts += other.contacts
        self.returns += other.returns
        for channel, n in other.channels.items():
            self.channels[channel] = self.channels.get(channel, 0) + n
        self.engagement = merge_buckets(self.engagement, other.engagement)
        other.merged_into = self

    def prune(self, policy: CustomerPolicy) -> None:
        """Forget what no event up to ``policy.grace_s`` late can need (see Retention in the module docstring).

        The boundaries come out the same whatever the state held beyond what it must (restored rows, both sides
        of a merge): only what lies at or after the current boundaries is counted, and they only move up.
        """
        horizon = self.last_seen - policy.keep_s
        facts_from = max(horizon, self.facts_from)
        for key in list(self.issues):
            contacts = self.issues[key]
            i = bisect_left(contacts, (facts_from,), key=_PAIR)
            if i == len(contacts):
                del self.issues[key]
            elif i:
                del contacts[:i]
        # Keep the latest purchase before the boundary too: it is the previous purchase of the next one.
        i = bisect_left(self.purchase_times, (facts_from,), key=_PAIR)
        if i > 1:
            del self.purchase_times[: i - 1]
        self.facts_from = facts_from
        history = self.history
        history_from = max(horizon, self.history_from)
        start = bisect_left(history, (self.history_from,), key=_ROW_KEY)
        if len(history) - start > policy.timeline_limit:
            # Past the limit, keep only entries later than the newest one that does not fit (none of a tie).
            newest_left_out = history[-policy.timeline_limit - 1][T]
            history_from = max(history_from, math.nextafter(newest_left_out, math.inf))
        i = bisect_left(history, (history_from,), key=_ROW_KEY)
        if i:
            del history[:i]
        self.history_from = history_from
        prune_buckets(self.engagement, week_of(self.last_seen), policy.engagement)

    # --- derived -------------------------------------------------------------------------------

    def derive(self, row: Row, policy: CustomerPolicy) -> Derived:
        """The fields of ``row``'s timeline entry that depend on the customer's other events."""
        kind = row[TYPE]
        first = self.first_purchase
        if kind == _PURCHASE:
            times = self.purchase_times
            i = bisect_left(times, (row[T], row[EVENT_ID]), key=_PAIR)
            since = row[T] - times[i - 1][0] if i else None
            is_first = first is not None and first[1] == row[EVENT_ID]
            return Derived(Stage.PURCHASE, is_first, since, None)
        if kind == _CONTACT:
            return Derived(Stage.POST_PURCHASE, False, None, self._contact_context(row, policy))
        if kind == EventType.OTHER:
            purchased = first is not None and first < (row[T], row[EVENT_ID])
            return Derived(stage_of(EventType.OTHER, purchased), False, None, None)
        return Derived(stage_of(_TYPES[kind]), False, None, None)

    def _contact_context(self, row: Row, policy: CustomerPolicy) -> ContactContext | None:
        contacts = self.issues.get(row[ISSUE], [])
        t, event_id = row[T], row[EVENT_ID]
        i = bisect_left(contacts, (t, event_id), key=_PAIR)
        if i == len(contacts) or contacts[i][1] != event_id:
            return None  # before the facts kept: the worker restores them before it derives such a row
        j = bisect_left(contacts, (t - policy.lookback(row[ISSUE]),), 0, i, key=_PAIR)
        number = i - j + 1
        previous = contacts[i - 1] if i > j else None
        resolved = row[RESOLVED] is True
        return ContactContext(
            number=number,
            repeat=previous is not None and t - previous[0] <= policy.repeat_window_s,
            channel_switch=previous is not None and previous[2] != row[CHANNEL],
            resolved_at_first_contact=(number == 1) if resolved else None,
            time_to_resolution_s=t - contacts[j][0] if resolved else None,
            contradicted=self._contradicted(row, contacts, i, policy) if resolved else None,
        )

    def _contradicted(self, row: Row, contacts: list[list[Any]], i: int, policy: CustomerPolicy) -> bool:
        """Whether the resolving contact ``row`` (``contacts[i]`` of its issue) was contradicted: a low answer in its
        own survey (a call's post-call survey), or a contact about the same issue or a low survey answer within the
        contradiction window after it."""
        window = policy.contradiction_window_s
        if window <= 0:
            return False
        history, low = self.history, policy.low_scores
        if low.contradict(row[SURVEY]):
            return True
        horizon = row[T] + window
        if i + 1 < len(contacts) and contacts[i + 1][0] <= horizon:
            return True
        for later in history[bisect_left(history, (row[T], row[EVENT_ID]), key=_ROW_KEY) + 1 :]:
            if later[T] > horizon:
                break
            if low.contradict(later[SURVEY]):
                return True
        return False

    def open_issues(self, policy: CustomerPolicy) -> list[OpenIssue]:
        """Issues whose latest contact did not resolve them, within their lookback of the latest event."""
        found = []
        for key, contacts in self.issues.items():
            last = contacts[-1]
            lookback = policy.lookback(key)
            if last[3] is True or last[0] < self.last_seen - lookback:
                continue
            j = bisect_left(contacts, (last[0] - lookback,), key=_PAIR)
            found.append(OpenIssue(key, contacts[j][0], last[0], len(contacts) - j, last[2]))
        return found

    def stage(self, policy: CustomerPolicy) -> Stage:
        """The customer's current journey stage (rule in ``stages``)."""
        return self._stage(bool(self.open_issues(policy)))

    def _stage(self, has_open_issue: bool) -> Stage:
        latest = Stage.PRE_PURCHASE if self.anchor is None else _STAGES[self.anchor[3]]
        return customer_stage(latest, has_open_issue)

    @property
    def last_purchase_at(self) -> float | None:
        """Event time of the latest purchase (retention always keeps it)."""
        return self.purchase_times[-1][0] if self.purchase_times else None

    def profile(self, policy: CustomerPolicy) -> Profile:
        """The customer's published profile."""
        open_issues = len(self.open_issues(policy))
        return Profile(
            customer_id=self.customer_id,
            first_seen=datetime.fromtimestamp(self.first_seen, UTC),
            last_seen=datetime.fromtimestamp(self.last_seen, UTC),
            stage=self._stage(open_issues > 0),
            identifiers={kind: list(values) for kind, values in self.identifiers.items() if kind != ANONYMOUS_TYPE},
            events=self.events,
            purchases=self.purchases,
            revenue=self.revenue,
            contacts=self.contacts,
            returns=self.returns,
            open_issues=open_issues,
            engagement=self.engagement_score(policy),
            channels=dict(self.channels),
            traits={name: given[0] for name, given in sorted(self.traits.items())},
            groups=list(self.groups),
        )

    def engagement_score(self, policy: CustomerPolicy) -> float:
        """The customer's engagement score, in [0, 100] (``streams.domain.engagement``)."""
        return score(self.engagement, week_of(self.last_seen), policy.engagement)

    # --- storage -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able row of this state (layout version :data:`STATE_VERSION`).

        It shares the state's lists and dicts, so serialise it straight away rather than keep it.
        """
        return {
            "v": STATE_VERSION,
            "id": self.customer_id,
            "ids": self.identifiers,
            "history": self.history,
            "history_from": _bound(self.history_from),
            "issues": self.issues,
            "purchase_times": self.purchase_times,
            "facts_from": _bound(self.facts_from),
            "first_purchase": None if self.first_purchase is None else list(self.first_purchase),
            "anchor": None if self.anchor is None else list(self.anchor),
            "counts": {
                "events": self.events,
                "purchases": self.purchases,
                "revenue": str(self.revenue),
                "contacts": self.contacts,
                "returns": self.returns,
            },
            "channels": self.channels,
            "engagement": self.engagement,
            "traits": self.traits,
            "groups": self.groups,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CustomerState:
        """Rebuild a state from its ``to_dict`` row (which it then owns: nothing is copied).

        A layout-1 row (before history was read back from SQL) is taken as complete only from its latest
        event on: what an older event needs is restored from the touchpoints table.
        """
        version = data.get("v")
        if version not in (1, STATE_VERSION):
            raise ValueError(f"customer state layout {version!r} is not {STATE_VERSION}")
        state = cls(data["id"])
        state.identifiers = data["ids"]
        state.issues = data["issues"]
        state.purchase_times = data["purchase_times"]
        first, anchor = data["first_purchase"], data["anchor"]
        state.first_purchase = None if first is None else (first[0], first[1])
        state.anchor = None if anchor is None else (anchor[0], anchor[1], anchor[2], anchor[3])
        counts = data["counts"]
        state.events = counts["events"]
        state.purchases = counts["purchases"]
        state.revenue = Decimal(counts["revenue"])
        state.contacts = counts["contacts"]
        state.returns = counts["returns"]
        state.channels = data["channels"]
        # Rows written before traits and groups were kept have none.
        state.traits = data.get("traits", {})
        state.groups = data.get("groups", [])
        # Rows written before the engagement score have no week counts: their score counts later events only.
        state.engagement = data.get("engagement", [])
        state.first_seen = data["first_seen"]
        state.last_seen = data["last_seen"]
        if version == 1:
            state.history = [row for row in data["timeline"] if is_kept(row)]
            state.history_from = state.facts_from = state.last_seen
        else:
            state.history = data["history"]
            state.history_from = _unbound(data["history_from"])
            state.facts_from = _unbound(data["facts_from"])
        return state


def _bound(value: float) -> float | None:
    # JSON has no infinity: None stands for "from the beginning".
    return None if value == _NEVER else value


def _unbound(value: float | None) -> float:
    return _NEVER if value is None else value
