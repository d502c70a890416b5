"""The stitching engine: identity stitching and per-customer timelines over a batch of events.

Pure code (no Kafka, no SQL): the worker loads a :class:`StateView` holding the identity rows of every
key the batch carries (:func:`required_keys`) and the state of every customer they point to, calls
:meth:`StitchEngine.apply`, and writes back what the :class:`BatchResult` reports, in one transaction
with its input offsets. The same engine over a full in-memory view is the test oracle (``oracle``).

Per event, in arrival order:

1. its keys (``identity``): blocked values dropped and counted, PII hashed when configured;
2. a duplicate (its event id is in the dedupe set of a customer one of its keys points to, or was applied
   to such a customer) changes nothing and emits nothing; an event whose id was applied to another customer
   is returned as a ``conflict``: the id is the idempotency key, so a second record claiming it is rejected,
   not applied beside the first;
3. an event older than the watermark minus ``allowed_lateness_s`` is returned as ``too_late``;
   otherwise the watermark (the greatest event time accepted) moves up to it;
4. an event with no usable key (nor anonymous source identity) is returned as ``unattributed``;
5. its keys are linked (merging customers, renaming one whose strongest key changed, or refusing links
   over a type limit) and it is added to the customer, in event-time order.

Revisions. Every accepted event is emitted as a TimelineEntry once per batch with its derived fields
as of the end of the batch. An entry emitted before is emitted again when a later-processed event
changes its derived fields: a late contact renumbers the same issue's later contacts, a late earlier
purchase moves the first-purchase moment and the next purchase's time since the last one, and a merge
recomputes both histories' entries at or after the linking event's time minus the allowed lateness.
Entries older than that are final: a merge combines old history (timeline, counters, state) but does
not rewrite old entries, as a stream cannot revise what it has already finalised. ``replaced`` holds
the version a re-emitted entry replaces, so a consumer can subtract it from its metrics.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from config.settings import Settings
from schemas.outputs import CustomerProfile, IdentityChange, TimelineEntry
from schemas.touchpoint import IdentifierType, TouchpointEvent
from streams.domain.customer import EVENT_ID, CustomerState, Derived, Policy, Row, make_row, timeline_entry
from streams.domain.identity import (
    ANONYMOUS_TYPE,
    EventKeys,
    IdentityRules,
    customer_id_for,
    key_strength,
    plan_link,
)


@dataclass
class StateView:
    """The part of the identity graph and customer states a batch needs; mutated in place by apply()."""

    #: Identifier key -> customer id, for every key the batch carries that is known.
    identities: dict[str, str] = field(default_factory=dict)
    #: Customer id -> state, for every customer those keys point to.
    customers: dict[str, CustomerState] = field(default_factory=dict)
    #: Event id -> customer id, for the batch's event ids applied before (dedupe sets forget old ids; this
    #: is the durable record: the worker reads it from the touchpoints table).
    applied: dict[str, str] = field(default_factory=dict)


@dataclass
class BatchResult:
    """Everything a batch changed, for the worker to write back in one transaction."""

    #: Timeline entries to publish/upsert by event_id, in processing order, one per event id.
    entries: list[TimelineEntry] = field(default_factory=list)
    #: For entries re-emitted from an earlier batch: the version they replace (customer id re-pointed).
    replaced: dict[str, TimelineEntry] = field(default_factory=dict)
    #: Ids of the customers whose state changed (write ``view.customers[id].to_dict()``), sorted.
    changed: list[str] = field(default_factory=list)
    #: Ids of stored customers merged away in this batch (delete their state rows).
    removed: list[str] = field(default_factory=list)
    #: Ids of customers that did not exist before this batch: nothing of theirs is stored yet.
    created: set[str] = field(default_factory=set)
    #: Identity rows to upsert: key -> customer id, including every key of a merged customer.
    identities: dict[str, str] = field(default_factory=dict)
    #: Merges in the order they happened (``UPDATE ... SET customer_id=survivor WHERE customer_id=merged``).
    merges: list[IdentityChange] = field(default_factory=list)
    #: Profile of each changed customer, then a ``merged_into`` tombstone for each removed one.
    profiles: list[CustomerProfile] = field(default_factory=list)
    #: Events older than the watermark minus the allowed lateness: dead-letter them as ``too_late``.
    too_late: list[TouchpointEvent] = field(default_factory=list)
    #: Events whose id was already applied to another customer, with that customer's id: dead-letter them.
    conflicts: list[tuple[TouchpointEvent, str]] = field(default_factory=list)
    #: Events with no usable identifier: counted, not an error.
    unattributed: list[TouchpointEvent] = field(default_factory=list)
    #: Event id -> keys it carried that were not linked because of a per-type limit.
    refused: dict[str, list[str]] = field(default_factory=dict)
    #: Events already applied (redeliveries), skipped.
    duplicates: int = 0
    #: Blocked identifier values seen (ignored for stitching).
    blocked: int = 0
    #: The watermark after this batch: the greatest event time accepted so far.
    watermark: datetime | None = None

    @property
    def over_limit(self) -> int:
        """How many identifier links were refused because of a per-type limit."""
        return sum(len(keys) for keys in self.refused.values())


def required_keys(events: Iterable[TouchpointEvent], settings: Settings) -> set[str]:
    """The identifier keys whose identity rows the worker must load before applying ``events``."""
    return IdentityRules(settings).required_keys(events)


class StitchEngine:
    """Applies batches of events to a state view (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rules = IdentityRules(settings)
        self.policy = Policy.from_settings(settings)

    def required_keys(self, events: Iterable[TouchpointEvent]) -> set[str]:
        """The identifier keys whose identity rows the worker must load before applying ``events``."""
        return self.rules.required_keys(events)

    def keys_of(self, events: Iterable[TouchpointEvent]) -> list[EventKeys]:
        """Each event's identifier keys (what ``apply`` stitches by), computed once for the caller and ``apply``."""
        keys_of = self.rules.keys_of
        return [keys_of(event) for event in events]

    def apply(
        self,
        events: Sequence[TouchpointEvent],
        view: StateView,
        watermark: datetime | None,
        keys: Sequence[EventKeys] | None = None,
    ) -> BatchResult:
        """Apply a batch of events in arrival order to ``view``; return what changed.

        ``keys`` are the events' keys from :meth:`keys_of`, when the caller has them already.
        """
        batch = _Batch(self, view, watermark)
        for event, event_keys in zip(events, self.keys_of(events) if keys is None else keys, strict=True):
            batch.add(event, event_keys)
        return batch.finish()


def _final(state: CustomerState) -> CustomerState:
    while state.merged_into is not None:
        state = state.merged_into
    return state


class _Batch:
    """The work of one apply() call."""

    def __init__(self, engine: StitchEngine, view: StateView, watermark: datetime | None) -> None:
        self.rules = engine.rules
        self.policy = engine.policy
        self.view = view
        self.watermark = None if watermark is None else watermark.timestamp()
        self.result = BatchResult()
        #: Event id -> (row, state holding it, derived fields as emitted before, None if new this batch).
        self.dirty: dict[str, tuple[Row, CustomerState, Derived | None]] = {}
        self.touched: set[CustomerState] = set()
        #: Removed customer id -> the state that took it over.
        self.removed: dict[str, CustomerState] = {}

    def _state(self, customer_id: str) -> CustomerState:
        try:
            return self.view.customers[customer_id]
        except KeyError:
            raise KeyError(f"an identity row points to customer {customer_id!r}, whose state is not loaded") from None

    def add(self, event: TouchpointEvent, event_keys: EventKeys) -> None:
        """Apply one event with its keys (steps in the module docstring)."""
        result = self.result
        result.blocked += event_keys.blocked
        keys = event_keys.keys
        identities = self.view.identities
        for key in keys:
            owner = identities.get(key)
            if owner is not None and event.event_id in self._state(owner).seen:
                result.duplicates += 1
                return
        holder = self._holder(event.event_id)
        if holder is not None:
            if any(identities.get(key) == holder for key in keys):
                result.duplicates += 1  # applied before the dedupe set's horizon
            else:
                result.conflicts.append((event, holder))
            return
        t = event.occurred_at.timestamp()
        if self.watermark is not None and t < self.watermark - self.policy.allowed_lateness_s:
            result.too_late.append(event)
            return
        if self.watermark is None or t > self.watermark:
            self.watermark = t
        if not keys:
            result.unattributed.append(event)
            return
        state = self._link(event, keys, t)
        row = make_row(event, t)
        for affected in state.affected_by(row, self.policy):
            self._candidate(state, affected)
        state.add(row, event, self.policy)
        self.dirty[event.event_id] = (row, state, None)
        self.touched.add(state)

    def _holder(self, event_id: str) -> str | None:
        """The id of the customer the event id was applied to, in this batch or before (None if it was not)."""
        held = self.dirty.get(event_id)
        if held is not None:
            return _final(held[1]).customer_id
        customer_id = self.view.applied.get(event_id)
        if customer_id is None:
            return None
        merged = self.removed.get(customer_id)
        return customer_id if merged is None else _final(merged).customer_id

    def _candidate(self, state: CustomerState, row: Row) -> None:
        """Remember a row whose derived fields may change, with their value before the change."""
        if row[EVENT_ID] not in self.dirty:
            self.dirty[row[EVENT_ID]] = (row, state, state.derive(row, self.policy))

    def _link(self, event: TouchpointEvent, keys: tuple[str, ...], t: float) -> CustomerState:
        """Link the event's keys and return the customer it belongs to."""
        view, result = self.view, self.result
        plan = plan_link(keys, view.identities, lambda cid: self._state(cid).identifiers, self.rules.limits)
        if plan.refused:
            result.refused[event.event_id] = plan.refused
        if not plan.new_keys and len(plan.group) == 1:
            return self._state(plan.group[0])  # the usual case: nothing new to link
        states = [self._state(cid) for cid in plan.group]
        strongest = [state.strongest_key() for state in states]
        final_key = min(strongest + plan.new_keys, key=key_strength)
        if final_key in strongest:
            survivor = states[strongest.index(final_key)]
            final_id = survivor.customer_id
        else:
            final_id = customer_id_for(final_key)
            if states:
                survivor = max(states, key=lambda s: len(s.timeline))  # renamed below: move the least
            else:
                survivor = view.customers[final_id] = CustomerState(final_id)
                self.result.created.add(final_id)
        absorbed = [state for state in states if state is not survivor]
        renamed = survivor.customer_id != final_id  # a stronger key joined: the old id merges into the new
        linked = [key for key in keys if key not in plan.refused]
        since = t - self.policy.allowed_lateness_s
        repoint: list[str] = []
        for state in absorbed:
            for side, row in survivor.merge_affected(state, since):
                self._candidate(side, row)
            repoint += state.identifier_keys()
            survivor.absorb(state, self.policy)
        for state in [*absorbed, survivor] if renamed else absorbed:
            del view.customers[state.customer_id]
            self.removed[state.customer_id] = survivor
            result.merges.append(
                IdentityChange(
                    survivor_id=final_id,
                    merged_id=state.customer_id,
                    event_id=event.event_id,
                    identifiers=_evidence(linked),
                    occurred_at=event.occurred_at,
                )
            )
        if renamed:
            self.result.created.add(final_id)
            survivor.customer_id = final_id
            view.customers[final_id] = survivor
            repoint = survivor.identifier_keys()
        for key in repoint:
            view.identities[key] = result.identities[key] = final_id
        for key in plan.new_keys:
            survivor.add_key(key)
            view.identities[key] = result.identities[key] = final_id
        return survivor

    def finish(self) -> BatchResult:
        """Emit entries and profiles, prune the changed states, and return the result."""
        result, policy = self.result, self.policy
        for event_id, (row, holder, before) in self.dirty.items():
            state = _final(holder)
            after = state.derive(row, policy)
            if before is None:
                result.entries.append(timeline_entry(state.customer_id, row, after))
            elif after != before:
                result.entries.append(timeline_entry(state.customer_id, row, after))
                result.replaced[event_id] = timeline_entry(state.customer_id, row, before)
        finals = {state.customer_id: state for state in map(_final, self.touched)}
        profiles = {}
        for customer_id in sorted(finals):
            state = finals[customer_id]
            state.prune(policy)
            profiles[customer_id] = state.profile(policy)
        result.changed = list(profiles)
        result.profiles = list(profiles.values())
        for old_id, holder in self.removed.items():
            if old_id in result.created:
                continue  # never stored: nothing to delete or tombstone
            survivor = _final(holder)
            result.removed.append(old_id)
            result.profiles.append(
                profiles[survivor.customer_id].model_copy(
                    update={"customer_id": old_id, "merged_into": survivor.customer_id}
                )
            )
        result.watermark = None if self.watermark is None else datetime.fromtimestamp(self.watermark, UTC)
        return result


def _evidence(keys: list[str]) -> dict[IdentifierType, str]:
    """The identifiers (as stored) that linked customers, for an IdentityChange."""
    evidence = {}
    for key in keys:
        kind, _, value = key.partition(":")
        if kind != ANONYMOUS_TYPE:
            evidence[IdentifierType(kind)] = value
    return evidence
