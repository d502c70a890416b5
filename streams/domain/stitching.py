"""The stitcher: identity stitching and per-customer timelines over a batch of events.

Pure code (no Kafka, no SQL): the worker loads a :class:`StateView` holding the identity rows of every
key the batch carries (:meth:`Stitcher.required_keys`), the state of every customer they point to and
which of the batch's event ids were applied before; it restores from the touchpoints table the history that
:meth:`Stitcher.history_needs` asks for; then it calls :meth:`Stitcher.apply`, evaluates alerts on the
full states, calls :meth:`Stitcher.close`, and writes back what the :class:`BatchResult` reports, in one
transaction with its input offsets. The same stitcher over a full in-memory view is the test oracle (``oracle``).

Per event, in arrival order:

1. its keys (``identity``): blocked values dropped and counted, PII hashed when configured;
2. a duplicate (its event id was applied before, in this batch or an earlier one, to the customer its keys
   point to) changes nothing and emits nothing; an event whose id was applied to another customer is returned
   as a ``conflict``: the id is the idempotency key, so a second record claiming it is rejected, not applied
   beside the first;
3. only with an age bound (``reject_before``, opt-in): an older event is returned as ``too_late``;
4. an event with no usable key (nor anonymous source identity) is applied to no customer: its entry is emitted
   with ``customer_id`` None (an ``unattributed`` touchpoint still counts in channel and overall metrics);
5. its keys are linked (merging customers, renaming one whose strongest key changed, or refusing links
   over a type limit) and it is added to the customer, in event-time order, whatever its age.

Revisions. Every accepted event is emitted as a timeline Entry once per batch with its derived fields
as of the end of the batch. An entry emitted before is emitted again when a later-processed event
changes its derived fields: a late contact renumbers the same issue's later contacts, a late earlier
purchase moves the first-purchase moment and the next purchase's time since the last one, and a merge
recomputes both histories' entries. ``replaced`` holds the version a re-emitted entry replaces, so a consumer
can subtract it from its metrics. The end result is the same whatever the arrival order and batch split.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, Protocol

from schemas.outputs import IdentityChange
from schemas.touchpoint import EventType, TouchpointEvent
from streams.domain.customer import (
    EVENT_ID,
    REVISABLE_TYPES,
    CustomerPolicy,
    CustomerState,
    Derived,
    Row,
    T,
    identify_details,
    make_row,
    standalone,
    timeline_entry,
)
from streams.domain.entry import Entry
from streams.domain.identity import (
    ANONYMOUS_TYPE,
    NO_RULES,
    EventKeys,
    IdentityPolicy,
    IdentityRules,
    KeptApart,
    MergeBound,
    customer_id_for,
    plan_link,
)
from streams.domain.profile import Profile

#: Event types that are a moment of truth by themselves, or may be (see ``moments``): their entries are kept.
_MAYBE_MOMENTS = frozenset({EventType.SUPPORT_CONTACT, EventType.RETURN, EventType.LATE_DELIVERY, EventType.REVIEW})
_REVISABLE = frozenset(EventType(t) for t in REVISABLE_TYPES)

#: What ``StateView.applied`` holds for an event applied to no customer (unattributed).
NO_CUSTOMER = ""


class ManualLink(NamedTuple):
    """A merge made by hand (``cxstream merge``): two identifier keys whose customers become one at ``at``.

    Applied like an event that carries both keys but is no touchpoint, after the batch's events, with the
    never-link rules in force and no per-type limit (the person merging knows what the limits guard against).
    """

    link_id: str
    keys: tuple[str, str]
    at: datetime


class StoredEvent(NamedTuple):
    """An applied event as the touchpoints table holds it: enough to apply it again (``Split``)."""

    row: Row
    #: The keys it was stitched by (``EventKeys.keys``), strongest first.
    keys: tuple[str, ...]
    #: What the state keeps of an identify call (``customer.identify_details``).
    identify: Mapping[str, Any] | None


class Split(NamedTuple):
    """A customer split by hand (``cxstream split``): its events stitched again from nothing, in event-time order,
    under the never-link rules in force (which keep the identifiers moved apart from the ones left), then the
    merges made by hand that linked its identifiers.

    Applied before the batch's events. Every event of the customer must be in ``events`` and every manual merge
    among its keys in ``links``: a split is the customer's part of the oracle's replay under the same rules.
    """

    split_id: str
    customer_id: str
    #: The identifier keys asked to move (the evidence published with the split).
    moved: tuple[str, ...]
    at: datetime
    events: Sequence[StoredEvent]
    links: Sequence[ManualLink] = ()


@dataclass
class StateView:
    """The part of the identity graph and customer states a batch needs; mutated in place by apply()."""

    #: Identifier key -> customer id, for every key the batch carries that is known.
    identities: dict[str, str] = field(default_factory=dict)
    #: Customer id -> state, for every customer those keys point to.
    customers: dict[str, CustomerState] = field(default_factory=dict)
    #: Event id -> customer id (``NO_CUSTOMER`` if unattributed), for the batch's event ids applied before:
    #: the durable dedupe record, which the worker reads from the touchpoints table. ``apply`` adds its own.
    applied: dict[str, str] = field(default_factory=dict)


@dataclass
class BatchResult:
    """Everything a batch changed, for the worker to write back in one transaction."""

    #: Timeline entries to publish/upsert by event_id, in processing order, one per event id.
    entries: list[Entry] = field(default_factory=list)
    #: For entries re-emitted from an earlier batch: the version they replace, under the customer id it now counts
    #: under (a merge's survivor), or, for a split's, the id split (which a merge later in the batch may fold into
    #: another customer: ``MetricAggregator.add_batch``).
    replaced: dict[str, Entry] = field(default_factory=dict)
    #: Ids of the customers whose state changed (write ``view.customers[id].to_dict()``), sorted.
    changed: list[str] = field(default_factory=list)
    #: Ids of stored customers merged away in this batch (delete their state rows), with where each went.
    removed: dict[str, str] = field(default_factory=dict)
    #: Ids of customers that did not exist before this batch: nothing of theirs is stored yet.
    created: set[str] = field(default_factory=set)
    #: Identity rows to upsert: key -> customer id, including every key of a merged customer.
    identities: dict[str, str] = field(default_factory=dict)
    #: Identity rows to delete: keys of a split customer that no customer holds after it (a key only ever seen
    #: beside a key now kept apart from it, on events that go to that key's customer), sorted.
    forgotten: list[str] = field(default_factory=list)
    #: Merges in the order they happened (``UPDATE ... SET customer_id=survivor WHERE customer_id=merged``).
    merges: list[IdentityChange] = field(default_factory=list)
    #: Splits made by hand, one record per customer a split customer's events now belong to (but its own).
    splits: list[IdentityChange] = field(default_factory=list)
    #: Customers merged into a split customer before, that its re-stitch formed again and merged once more: that
    #: merge (not published: the re-stitch's merges are no news) and the customer each lives on now. Their stored
    #: merge records are replaced by these, evidence and all.
    relinked: list[tuple[IdentityChange, str]] = field(default_factory=list)
    #: Customers a split formed again that live at the end of the batch, every side (the kept one too): a merge
    #: record saying one of them was merged away is history now.
    reformed: set[str] = field(default_factory=set)
    #: Profile of each changed customer, then a ``merged_into`` tombstone for each removed one (``close``).
    profiles: list[Profile] = field(default_factory=list)
    #: Events older than the age bound, when one is set: dead-letter them as ``too_late``.
    too_late: list[TouchpointEvent] = field(default_factory=list)
    #: Events whose id was already applied to another customer, with that customer's id: dead-letter them.
    conflicts: list[tuple[TouchpointEvent, str]] = field(default_factory=list)
    #: Events with no usable identifier: applied to no customer (their entries have ``customer_id`` None).
    unattributed: list[TouchpointEvent] = field(default_factory=list)
    #: Event id -> keys it carried that were not linked because of a per-type limit.
    refused: dict[str, list[str]] = field(default_factory=dict)
    #: Event id -> keys it carried that were not linked because a never-link rule keeps them apart.
    kept_apart: dict[str, list[str]] = field(default_factory=dict)
    #: Event (or merge made by hand) id -> keys it carried that were not linked because their customer and the
    #: event's would hold more touchpoints together than the merge bound (``IdentityPolicy.merge_max_touchpoints``).
    too_large: dict[str, list[str]] = field(default_factory=dict)
    #: Customers that came to hold more touchpoints than the merge bound in this batch: merged with nobody from
    #: now on. Usually an identifier many people share made them (a house loyalty card), which should be blocked.
    outgrown: list[str] = field(default_factory=list)
    #: Events already applied (redeliveries), skipped.
    duplicates: int = 0
    #: Blocked identifier values seen (ignored for stitching).
    blocked: int = 0

    @property
    def over_limit(self) -> int:
        """How many identifier links were refused because of a per-type limit."""
        return sum(len(keys) for keys in self.refused.values())

    @property
    def apart(self) -> int:
        """How many identifier links were refused because a never-link rule keeps the keys apart."""
        return sum(len(keys) for keys in self.kept_apart.values())

    @property
    def over_bound(self) -> int:
        """How many identifier links were refused because the merge would be over the bound on touchpoints."""
        return sum(len(keys) for keys in self.too_large.values())


class StitchPolicies(Protocol):
    """The policies stitching reads (``streams.policies.Policies`` holds them, built from the settings)."""

    @property
    def identity(self) -> IdentityPolicy: ...

    @property
    def customer(self) -> CustomerPolicy: ...


class Stitcher:
    """Applies batches of events to a state view (see the module docstring)."""

    def __init__(self, policies: StitchPolicies) -> None:
        self.rules = IdentityRules(policies.identity)
        self.policy = policies.customer
        #: The never-link rules in force (set by hand and stored; the worker replaces them when they change).
        self.apart: KeptApart = NO_RULES

    def required_keys(self, events: Iterable[TouchpointEvent]) -> set[str]:
        """The identifier keys whose identity rows the worker must load before applying ``events``."""
        return {key for event_keys in self.keys_of(events) for key in event_keys.keys}

    def keys_of(self, events: Iterable[TouchpointEvent]) -> list[EventKeys]:
        """Each event's identifier keys (what ``apply`` stitches by), computed once for the caller and ``apply``."""
        keys_of = self.rules.keys_of
        return [keys_of(event) for event in events]

    def history_needs(
        self,
        events: Sequence[TouchpointEvent],
        keys: Sequence[EventKeys],
        view: StateView,
        links: Sequence[ManualLink] = (),
        splits: Sequence[Split] = (),
    ) -> dict[str, float]:
        """Customers of the view whose facts and history must be restored before ``apply``, and from when.

        An entry that later events can change, or that alert rules read, needs its customer's facts and history
        from ``CustomerPolicy.span_s`` before it (``CustomerPolicy.history_needed``). Customers the batch may merge
        need more: a merge can change any entry of either side from the younger side's first event on, so every
        customer linked, through the batch's keys, to an older one needs its history from the second-earliest
        ``first_seen`` of the group, minus the span. A customer over the merge bound
        (``IdentityPolicy.merge_max_touchpoints``) is merged with no other (``plan_link`` refuses it), so it needs
        only what the events that may go to it need: a "house" identifier shared by everyone does not bring its
        whole history back. Customers complete from early enough are left out: in a live stream, with events no
        later than ``CustomerPolicy.grace_s``, nobody is. ``links`` and ``splits`` are the batch's, as ``apply``
        gets them.
        """
        span = self.policy.span_s
        identities = view.identities
        bound = self.rules.merge_bound
        # Counts only grow within a batch, so a customer over the bound before it is refused every merge in it;
        # unless the batch splits it, into pieces that may be under the bound.
        split_ids = {split.customer_id for split in splits}
        solo = (
            set()
            if bound is None
            else {
                customer_id
                for customer_id, state in view.customers.items()
                if state.events > bound and customer_id not in split_ids
            }
        )

        # Nodes are identifier keys and stored customers ("\0" + id). Only an event carrying several keys that are
        # not all one stored customer's can link customers: only those are unioned (the live usual case has few).
        parent: dict[str, str] = {}

        def find(node: str) -> str:
            root = node
            while (up := parent.get(root, root)) != root:
                root = up
            while node != root:
                parent[node], node = root, parent.get(node, node)
            return root

        def union(a: str, b: str) -> None:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[rb] = ra

        needs: dict[str, float] = {}  # node -> earliest event time needed from

        def note(node: str, since: float) -> None:
            if since < needs.get(node, since + 1):
                needs[node] = since

        def linking(keys_: Sequence[str]) -> list[str]:
            # A customer over the bound keeps its keys for the whole batch and links with nobody: its keys connect
            # nothing (shoppers who scan a house card are not one merge group).
            return [key for key in keys_ if identities.get(key) not in solo] if solo else list(keys_)

        for link in links:
            linked = linking(link.keys)
            for key in linked:
                union(linked[0], key)
                owner = identities.get(key)
                if owner is not None:
                    union(key, "\0" + owner)
        # Keys new to the view, or a split customer's -> the customers over the bound that an event of the batch
        # may have given them to (any such customer among its keys': type limits and never-link rules decide which,
        # if any, takes them).
        joined: dict[str, set[str]] = {}
        for event, event_keys in zip(events, keys, strict=True):
            keys_ = event_keys.keys
            if not keys_:
                continue
            owners = [identities.get(key) for key in keys_]
            # Customers over the bound the event may go to: they need what it needs, nothing more.
            alone: set[str] = set()
            if solo:
                # A key the batch's split customer held may be free once it is split (a key it forgets), and is
                # taken as new to the graph here.
                for key, owner in zip(keys_, owners, strict=True):
                    if owner is not None and owner in solo:
                        alone.add(owner)
                    elif (owner is None or owner in split_ids) and key in joined:
                        alone |= joined[key]
                if alone:
                    for key, owner in zip(keys_, owners, strict=True):
                        if owner is None or owner in split_ids:
                            joined.setdefault(key, set()).update(alone)
                    keys_ = tuple(linking(keys_))
                    owners = [identities.get(key) for key in keys_]
            node = None
            if len(keys_) > 1 and (len(distinct := set(owners)) > 1 or None in distinct):
                for key, owner in zip(keys_, owners, strict=True):
                    union(keys_[0], key)
                    if owner is not None:
                        union(key, "\0" + owner)
                node = keys_[0]
            elif keys_:
                owner = owners[0]
                node = keys_[0] if owner is None else "\0" + owner
            if _may_be_kept(event):
                earliest = event.occurred_at.timestamp() - span
                if node is not None:
                    note(node, earliest)
                for owner in alone:
                    note("\0" + owner, earliest)
        members: dict[str, set[str]] = {}
        for customer_id in set(identities.values()):
            members.setdefault(find("\0" + customer_id), set()).add(customer_id)
        depth: dict[str, float] = {}
        for node, need in needs.items():
            root = find(node)
            depth[root] = min(depth.get(root, need), need)
        for root, customer_ids in members.items():
            if len(customer_ids) > 1:
                # A merge may change any entry of either side from the younger side's first event on.
                seen = sorted(view.customers[cid].first_seen for cid in customer_ids)
                depth[root] = min(depth.get(root, seen[1] - span), seen[1] - span)
        out: dict[str, float] = {}
        for root, customer_ids in members.items():
            since = depth.get(root)
            if since is None:
                continue
            for customer_id in customer_ids:
                if since < view.customers[customer_id].complete_from:
                    out[customer_id] = since
        return out

    def apply(
        self,
        events: Sequence[TouchpointEvent],
        view: StateView,
        keys: Sequence[EventKeys] | None = None,
        *,
        reject_before: float | None = None,
        links: Sequence[ManualLink] = (),
        splits: Sequence[Split] = (),
    ) -> BatchResult:
        """Apply the splits made by hand ``splits``, then a batch of events in arrival order to ``view``, then the
        merges made by hand ``links``; return what changed (then call ``close``).

        ``keys`` are the events' keys from :meth:`keys_of`, when the caller has them already;
        ``reject_before`` (epoch seconds) is the opt-in age bound: older events are returned as ``too_late``.
        """
        batch = _Batch(self, view, reject_before)
        for split in splits:
            batch.split(split)
        for event, event_keys in zip(events, self.keys_of(events) if keys is None else keys, strict=True):
            batch.add(event, event_keys)
        for link in links:
            batch.link(link)
        return batch.finish()

    def close(self, view: StateView, result: BatchResult) -> None:
        """End a batch: prune every state of the view to what it keeps, and profile the changed customers.

        Separate from ``apply`` so that alert rules can read the states with everything the batch restored.
        """
        policy = self.policy
        for state in view.customers.values():
            state.prune(policy)
        profiles = {customer_id: view.customers[customer_id].profile(policy) for customer_id in result.changed}
        result.profiles = list(profiles.values())
        for old_id, survivor_id in result.removed.items():
            result.profiles.append(replace(profiles[survivor_id], customer_id=old_id, merged_into=survivor_id))


def _may_be_kept(event: TouchpointEvent) -> bool:
    """True unless the event's entry is certainly not kept in history (``customer.is_kept``), judged cheaply."""
    return event.type in _REVISABLE or event.type in _MAYBE_MOMENTS or event.survey is not None


def _final(state: CustomerState) -> CustomerState:
    while state.merged_into is not None:
        state = state.merged_into
    return state


class _Batch:
    """The work of one apply() call."""

    def __init__(self, stitcher: Stitcher, view: StateView, reject_before: float | None) -> None:
        self.rules = stitcher.rules
        self.apart = stitcher.apart
        most = stitcher.rules.merge_bound
        #: The merge bound as ``plan_link`` takes it (None: no bound), built once a batch.
        self.bound = None if most is None else MergeBound(most, lambda cid: self._state(cid).events)
        self.policy = stitcher.policy
        self.view = view
        self.reject_before = reject_before
        self.result = BatchResult()
        #: Event id -> (row, state holding it, derived fields as emitted before, None if new this batch).
        self.dirty: dict[str, tuple[Row, CustomerState, Derived | None]] = {}
        #: Event ids applied to no customer in this batch.
        self.unattributed: set[str] = set()
        self.touched: set[CustomerState] = set()
        #: Each loaded customer's touchpoints before the batch, under a merge bound (to tell who outgrew it).
        self.sizes = {} if self.bound is None else {state: state.events for state in view.customers.values()}
        #: Removed customer id -> the state that took it over.
        self.removed: dict[str, CustomerState] = {}
        #: Customer id formed again and merged by a split's re-stitch -> that merge and the state that took it over.
        self.relinked: dict[str, tuple[IdentityChange, CustomerState]] = {}
        #: Customers a split formed (their ids new to the batch): those alive at the end are ``reformed``.
        self.reformed: set[CustomerState] = set()
        #: Event id -> its entry as emitted before a split re-applied it (re-emitted only if it changed).
        self.previous: dict[str, Entry] = {}
        #: Keys split customers held (those no customer holds at the end are ``forgotten``).
        self.unlinked: set[str] = set()

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
        holder = self._holder(event.event_id)
        if holder is not None:
            if holder == NO_CUSTOMER:
                duplicate = not keys
            else:
                identities = self.view.identities
                duplicate = any(identities.get(key) == holder for key in keys)
            if duplicate:
                result.duplicates += 1
            else:
                result.conflicts.append((event, holder))
            return
        t = event.occurred_at.timestamp()
        if self.reject_before is not None and t < self.reject_before:
            result.too_late.append(event)
            return
        row = make_row(event, t)
        if not keys:
            result.unattributed.append(event)
            result.entries.append(timeline_entry(None, row, standalone(row)))
            self.unattributed.add(event.event_id)
            return
        state = self._link(event.event_id, event.occurred_at, keys, self.rules.limits)
        for affected in state.affected_by(row, self.policy):
            self._candidate(state, affected)
        state.add(row, identify_details(event))
        self.dirty[event.event_id] = (row, state, None)
        self.touched.add(state)

    def split(self, split: Split) -> None:
        """Apply a split made by hand: take the customer out of the view and apply its events again, from nothing
        and in event-time order, under the rules in force, then its merges made by hand (see ``Split``).

        Only the customer's own keys are linked again: a key an event carried that another customer holds, or
        nobody (a link refused when the event was applied), stays out, so a split changes no other customer. The
        links this forms again are no news: only customers that did not exist before the split are reported (a
        ``split`` record each, naming the customer that holds the kept keys as the one split), not the merges,
        refusals and creations of its re-stitching. If no customer keeps the old id (its key moved, or the
        identifier priority changed since), the old id is removed as if merged into the kept side. A customer gone
        meanwhile (erased) is left alone.
        """
        view, result = self.view, self.result
        old = view.customers.pop(split.customer_id, None)
        if old is None:
            return
        own = set(old.identifier_keys())
        fallback = (old.strongest_key(self.rules.rank),)
        for key in own:
            if view.identities.get(key) == split.customer_id:
                del view.identities[key]
                self.unlinked.add(key)
        ordered = sorted(split.events, key=lambda stored: (stored.row[T], stored.row[EVENT_ID]))
        # The entries as emitted before: derived from the customer as it was, rebuilt whole (derived fields are a
        # function of a customer's events, whatever order and batches they came in).
        whole = CustomerState(split.customer_id)
        for stored in ordered:
            whole.add(stored.row, stored.identify)
        previous, policy = self.previous, self.policy
        for stored in ordered:
            previous[stored.row[EVENT_ID]] = timeline_entry(
                split.customer_id, stored.row, whole.derive(stored.row, policy)
            )
        merges, created = len(result.merges), set()
        refused, apart, too_large = dict(result.refused), dict(result.kept_apart), dict(result.too_large)
        created.update(result.created)
        formed: set[CustomerState] = set()
        limits = self.rules.limits
        for stored in ordered:
            row = stored.row
            event_id = row[EVENT_ID]
            view.applied.pop(event_id, None)
            # Events stored before their keys were (migration 0018) stay with the customer's strongest key.
            keys = tuple(key for key in stored.keys if key in own) or fallback
            # No merge bound: the customer's whole history is in memory already.
            state = self._link(event_id, _utc(row[T]), keys, limits, bounded=False)
            state.add(row, stored.identify)
            self.dirty[event_id] = (row, state, None)
            formed.add(state)
        for link in split.links:
            # Its own merges by hand only: one naming another customer's key was refused when it was applied (the
            # sink finds every applied merge naming one of its keys), and a split changes no other customer.
            if own.issuperset(link.keys):
                self.link(link, bounded=False)  # applied before: the customer's own history is in memory already
        new = result.created - created - {split.customer_id}
        restitched = {m.merged_id: m for m in result.merges[merges:] if m.merged_id in new}
        self.relinked.update(
            (customer_id, (restitched[customer_id], self.removed[customer_id]))
            for customer_id in new
            if customer_id in self.removed and customer_id in restitched
        )
        result.created = created | new
        result.merges[merges:] = [m for m in result.merges[merges:] if m.merged_id not in new | {split.customer_id}]
        result.refused, result.kept_apart, result.too_large = refused, apart, too_large
        customers = sorted({_final(state) for state in formed}, key=lambda state: state.customer_id)
        self.reformed.update(state for state in customers if state.customer_id in new)
        if not customers:
            return
        moved = set(split.moved)
        kept = sorted((key for key in own - moved if key in view.identities), key=self.rules.strength)
        survivor = view.customers[view.identities[kept[0]]] if kept else customers[0]
        if split.customer_id not in view.customers and split.customer_id not in self.removed:
            self.removed[split.customer_id] = survivor
        for state in customers:
            self.touched.add(state)
            if state is not survivor:
                result.splits.append(
                    IdentityChange(
                        kind="split",
                        survivor_id=survivor.customer_id,
                        merged_id=state.customer_id,
                        event_id=split.split_id,
                        identifiers=_evidence([key for key in state.identifier_keys() if key in moved]),
                        occurred_at=split.at,
                    )
                )

    def _holder(self, event_id: str) -> str | None:
        """The id of the customer the event id was applied to, in this batch or before (None if it was not)."""
        held = self.dirty.get(event_id)
        if held is not None:
            return _final(held[1]).customer_id
        if event_id in self.unattributed:
            return NO_CUSTOMER
        customer_id = self.view.applied.get(event_id)
        if customer_id is None or customer_id == NO_CUSTOMER:
            return customer_id
        merged = self.removed.get(customer_id)
        return customer_id if merged is None else _final(merged).customer_id

    def _candidate(self, state: CustomerState, row: Row) -> None:
        """Remember a row whose derived fields may change, with their value before the change."""
        if row[EVENT_ID] not in self.dirty:
            self.dirty[row[EVENT_ID]] = (row, state, state.derive(row, self.policy))

    def link(self, link: ManualLink, *, bounded: bool = True) -> None:
        """Apply a merge made by hand: link its keys as an event carrying both would, with no type limit.

        A key no customer holds (erased meanwhile) links nothing; a link a never-link rule or the merge bound
        refuses is reported (``kept_apart``, ``too_large``) and changes nothing. ``bounded`` false: no merge bound
        (a split applying its customer's merges again, with its whole history in memory).
        """
        known = [key for key in link.keys if key in self.view.identities]
        if len(known) == 2:
            keys = tuple(sorted(known, key=self.rules.strength))
            self.touched.add(self._link(link.link_id, link.at, keys, {}, kind="manual_merge", bounded=bounded))

    def _link(
        self,
        event_id: str,
        occurred_at: datetime,
        keys: tuple[str, ...],
        limits: Mapping[str, int],
        kind: Literal["merge", "manual_merge"] = "merge",
        *,
        bounded: bool = True,
    ) -> CustomerState:
        """Link an event's keys (or a merge's made by hand: ``kind``) and return the customer they belong to; under
        the merge bound unless ``bounded`` is false."""
        view, result = self.view, self.result
        plan = plan_link(
            keys,
            view.identities,
            lambda cid: self._state(cid).identifiers,
            limits,
            self.apart,
            self.bound if bounded else None,
        )
        if plan.refused:
            result.refused[event_id] = plan.refused
        if plan.apart:
            result.kept_apart[event_id] = plan.apart
        if plan.too_large:
            result.too_large[event_id] = plan.too_large
        if not plan.new_keys and len(plan.group) == 1:
            return self._state(plan.group[0])  # the usual case: nothing new to link
        states = [self._state(cid) for cid in plan.group]
        rank = self.rules.rank
        strongest = [state.strongest_key(rank) for state in states]
        final_key = min(strongest + plan.new_keys, key=self.rules.strength)
        if final_key in strongest:
            survivor = states[strongest.index(final_key)]
            final_id = survivor.customer_id
        else:
            final_id = customer_id_for(final_key)
            if states:
                survivor = max(states, key=lambda s: len(s.history))  # renamed below: move the least
            else:
                survivor = view.customers[final_id] = CustomerState(final_id)
                self.result.created.add(final_id)
        absorbed = [state for state in states if state is not survivor]
        renamed = survivor.customer_id != final_id  # a stronger key joined: the old id merges into the new
        linked = [
            key for key in keys if key not in plan.refused and key not in plan.apart and key not in plan.too_large
        ]
        repoint: list[str] = []
        for state in absorbed:
            for side, row in survivor.merge_affected(state, self.policy):
                self._candidate(side, row)
            repoint += state.identifier_keys()
            survivor.absorb(state)
        for state in [*absorbed, survivor] if renamed else absorbed:
            del view.customers[state.customer_id]
            self.removed[state.customer_id] = survivor
            result.merges.append(
                IdentityChange(
                    kind=kind,
                    survivor_id=final_id,
                    merged_id=state.customer_id,
                    event_id=event_id,
                    identifiers=_evidence(linked),
                    occurred_at=occurred_at,
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
        """Emit the entries whose derived fields are new or changed, and list the changed and removed customers."""
        result, policy = self.result, self.policy
        previous = self.previous
        for event_id, (row, holder, before) in self.dirty.items():
            state = _final(holder)
            after = state.derive(row, policy)
            prior = previous.get(event_id) if previous else None
            if prior is not None:
                entry = timeline_entry(state.customer_id, row, after)
                if entry != prior:
                    result.entries.append(entry)
                    result.replaced[event_id] = prior
            elif before is None:
                result.entries.append(timeline_entry(state.customer_id, row, after))
            elif after != before:
                result.entries.append(timeline_entry(state.customer_id, row, after))
                result.replaced[event_id] = timeline_entry(state.customer_id, row, before)
        finals = {_final(state) for state in self.touched}
        result.changed = sorted(state.customer_id for state in finals)
        if self.bound is not None:
            bound, sizes = self.bound.most, self.sizes
            result.outgrown = sorted(
                state.customer_id for state in finals if state.events > bound >= sizes.get(state, 0)
            )
        result.forgotten = sorted(key for key in self.unlinked if key not in self.view.identities)
        result.relinked = [
            (change, _final(holder).customer_id) for _, (change, holder) in sorted(self.relinked.items())
        ]
        result.reformed = {_final(state).customer_id for state in self.reformed} - self.removed.keys()
        for old_id, holder in self.removed.items():
            if old_id not in result.created:  # one created in this batch was never stored: nothing to remove
                result.removed[old_id] = _final(holder).customer_id
        # The view's durable record of applied ids follows, as the touchpoints table does in the worker.
        applied = self.view.applied
        if self.removed:
            for event_id, customer_id in applied.items():
                if customer_id in self.removed:
                    applied[event_id] = _final(self.removed[customer_id]).customer_id
        for event_id, (_, holder, _) in self.dirty.items():
            applied[event_id] = _final(holder).customer_id
        applied.update(dict.fromkeys(self.unattributed, NO_CUSTOMER))
        return result


def _evidence(keys: list[str]) -> dict[str, str]:
    """The identifiers (as stored) that linked customers, for an IdentityChange."""
    evidence = {}
    for key in keys:
        kind, _, value = key.partition(":")
        if kind != ANONYMOUS_TYPE:
            evidence[kind] = value
    return evidence


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)
