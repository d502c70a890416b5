"""Identity graph rules: which identifier keys an event carries, and which customers an event links.

Identifiers are stored as keys ``type:value`` (:func:`identifier_key`); with hashing on
(``IdentityPolicy.hashing``), the value of a PII type (email, phone) is its salted hash, so the raw value is never
stored anywhere. An event the adapter hashed already (``hashed_with``, the salt's fingerprint) is stored as it
comes, never hashed twice, so a raw event and a hashed one of the same person give the same keys. PII hashed with
another salt than the worker's (``cxstream publish`` run with other settings) cannot be matched with anything: it
is dropped from stitching and counted as blocked, rather than stored under keys no other event of that person will
ever have.
Blocked values (``IdentityPolicy.blocked``: shared devices, placeholder e-mails) are dropped
before stitching and counted.

A customer is a connected component of the graph whose edges are "these keys appeared on one event".
Its id is ``"c-" + sha256(key)[:20]`` of the component's strongest key (:func:`key_strength`: the
type's rank in ``IdentityPolicy.priority`` — ``CXSTREAM_IDENTIFIER_PRIORITY``, by default the declaration order of ``IdentifierType`` —, then
the key), so ids do not depend on the order events arrive in.

Per-type limits (``IdentityPolicy.limits``) refuse a link that would give a customer more keys of
a type than allowed, the merge bound (``IdentityPolicy.merge_max_touchpoints``) one that would combine customers
holding more touchpoints together than it allows, and never-link rules (:class:`KeptApart`, set by hand: ``cxstream never-link``) refuse one
that would put two keys a rule keeps apart in one customer: the event goes to the customer of its strongest key
and the refused keys stay where they were (:func:`plan_link`). They guard against wrong merges (the bound also
against reading a huge history back into memory: a till's "house" loyalty card scanned for everyone), but when they
bite the result depends on arrival order (whichever link came first wins: a device two people share stays with
the first of them seen on it), as does which of two records claiming one event id is applied (see
``stitching``); nothing else here does.

An event with no usable identifier may still carry an anonymous source identity: the attribute
``anonymous_id`` (a session or device id the source assigns without knowing the person). It becomes
the key ``anonymous:<channel>:<source system>:<id>`` (parts joined by ``compose_id``): its own customer,
never linked to others, because no event carries both it and a real identifier.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from schemas.touchpoint import IdentifierType, TouchpointEvent, compose_id
from streams.domain.identifiers import (
    BlockedPatterns,
    IdentifierHashing,
    InvalidIdentifier,
    hash_identifier,
    hashed_types,
    identifier_key,
    normalise_identifier,
    salt_fingerprint,
)

#: Key type of anonymous source identities (not an IdentifierType: it is never linked).
ANONYMOUS_TYPE = "anonymous"
#: Event attribute holding an anonymous source identity.
ANONYMOUS_ATTRIBUTE = "anonymous_id"

#: Key type -> strength rank: lower is stronger.
Ranks = Mapping[str, int]


class _Ranks(dict[str, int]):
    """Ranks by key type; a type not ranked (a custom type no longer declared) ranks just above anonymous ids."""

    def __missing__(self, kind: str) -> int:
        return self[ANONYMOUS_TYPE] - 1 if kind != ANONYMOUS_TYPE else len(self)


def ranks(priority: Iterable[str]) -> dict[str, int]:
    """Each key type's rank in ``priority`` (strongest first; ``CXSTREAM_IDENTIFIER_PRIORITY``), anonymous last."""
    order = [str(kind) for kind in priority]
    # Steps of 2 leave room for types not ranked, between the last one ranked and anonymous ids.
    return _Ranks({kind: 2 * rank for rank, kind in enumerate(order)} | {ANONYMOUS_TYPE: 2 * len(order) + 1})


#: The ranks in the default order (``IdentifierType``'s declaration order), anonymous identities last.
DEFAULT_RANKS: dict[str, int] = ranks(IdentifierType)
#: A salted hash as adapters write it (HMAC-SHA256, hex).
_HASH = re.compile(r"[0-9a-f]{64}")
#: Most hashed PII keys remembered, so a busy customer's e-mail is not re-hashed on every event.
_HASH_CACHE_SIZE = 100_000


def key_type(key: str) -> str:
    """The type part of a ``type:value`` key."""
    return key.partition(":")[0]


def key_strength(key: str, rank: Ranks = DEFAULT_RANKS) -> tuple[int, str]:
    """Sort key of identifier keys, strongest first: the type's rank, then the key itself."""
    return rank[key.partition(":")[0]], key


def customer_id_for(key: str) -> str:
    """The customer id of a component whose strongest key is ``key``."""
    return "c-" + hashlib.sha256(key.encode()).hexdigest()[:20]


def anonymous_key(event: TouchpointEvent) -> str | None:
    """The key of an event's anonymous source identity, or None when it has none."""
    value = event.attributes.get(ANONYMOUS_ATTRIBUTE)
    if not isinstance(value, str) or not value.strip():
        return None
    return f"{ANONYMOUS_TYPE}:{compose_id(event.channel, event.source.system, value.strip())}"


class EventKeys(NamedTuple):
    """The identifier keys an event is stitched by, strongest first, and how many were blocked."""

    keys: tuple[str, ...]
    blocked: int = 0


@dataclass(frozen=True, slots=True)
class IdentityPolicy:
    """What identity stitching reads (built by ``streams.policies``)."""

    #: How PII identifiers are stored: their salted hash (None: as they are).
    hashing: IdentifierHashing | None
    #: Most identifiers of a type one customer may hold (types not listed: no limit).
    limits: Mapping[str, int]
    #: Identifiers never used for stitching, as ``type:value``.
    blocked: tuple[str, ...]
    #: Identifier values never used for stitching, by pattern (searched before hashing).
    blocked_patterns: BlockedPatterns
    #: Region of phone numbers written without a country code (blocked phone numbers are read with it).
    default_region: str
    #: Identifier types, strongest first (every type).
    priority: tuple[str, ...] = tuple(IdentifierType)
    #: Custom identifier types declared (``CXSTREAM_CUSTOM_IDENTIFIER_TYPES``): events' others are not stitched by.
    custom_types: frozenset[str] = frozenset()
    #: Most touchpoints (``CustomerState.events``) the customers a link combines may hold together: a merge reads
    #: their history back into memory (``Stitcher.history_needs``). None: no bound.
    merge_max_touchpoints: int | None = None


class IdentityRules:
    """Turns an event's identifiers into stored keys: hashing, blocked values, per-type limits."""

    def __init__(self, policy: IdentityPolicy) -> None:
        self._hashing = policy.hashing
        #: The fingerprint of this worker's salt (None: hashing is off here): an event hashed with the same salt is
        #: usable, whatever types its adapter hashed (``hashed_with`` names them).
        self._salt = None if policy.hashing is None else salt_fingerprint(policy.hashing.salt)
        #: The types stored hashed here (none with hashing off).
        self._hashed_types = frozenset[str]() if policy.hashing is None else policy.hashing.types
        #: Per ``hashed_with`` seen: whether its salt is this worker's, and the types it hashed.
        self._marks: dict[str, tuple[bool, frozenset[str]]] = {}
        self._hashed: dict[tuple[str, str], str] = {}
        #: Most keys of a type one customer may hold, by key type.
        self.limits: dict[str, int] = {str(t): n for t, n in policy.limits.items()}
        #: Most touchpoints the customers one link combines may hold together (None: no bound).
        self.merge_bound = policy.merge_max_touchpoints
        self._blocked = frozenset(self._blocked_key(item, policy.default_region) for item in policy.blocked)
        self._patterns = policy.blocked_patterns
        self._custom = policy.custom_types
        #: Strength rank of each key type under the configured priority.
        self.rank = ranks(policy.priority)

    def strength(self, key: str) -> tuple[int, str]:
        """Sort key of identifier keys under the configured priority, strongest first."""
        return key_strength(key, self.rank)

    def _blocked_key(self, item: str, region: str) -> str:
        kind, _, value = item.partition(":")
        try:
            identifier_type = IdentifierType(kind)
        except ValueError:
            return f"{kind}:{value.strip()}"  # a custom type: stored as given, trimmed
        try:
            value = normalise_identifier(identifier_type, value, region)
        except InvalidIdentifier:
            value = value.strip()  # a placeholder need not be well-formed to be blocked
        return self.stored_key(identifier_type, value)

    def stored_key(self, kind: str, value: str) -> str:
        """The key under which an (already normalised) identifier is stored: hashed when it is PII."""
        if kind not in self._hashed_types or self._hashing is None:
            return identifier_key(kind, value)
        cache_key = (kind, value)
        key = self._hashed.get(cache_key)
        if key is None:
            if len(self._hashed) >= _HASH_CACHE_SIZE:
                self._hashed.clear()
            key = self._hashed[cache_key] = identifier_key(kind, hash_identifier(kind, value, self._hashing.salt))
        return key

    def _mark(self, hashed_with: str) -> tuple[bool, frozenset[str]]:
        """Whether an event's ``hashed_with`` names this worker's salt, and the types it says were hashed."""
        found = self._marks.get(hashed_with)
        if found is None:
            if len(self._marks) >= 64:  # a few marks in practice; a flood of forged ones must not grow this
                self._marks.clear()
            salt, types = hashed_types(hashed_with)
            found = self._marks[hashed_with] = (salt == self._salt, types)
        return found

    def keys_of(self, event: TouchpointEvent) -> EventKeys:
        """Return the usable keys of an event, strongest first, falling back to its anonymous identity."""
        keys: list[str] = []
        blocked = 0
        patterns, custom, here = self._patterns, self._custom, self._hashed_types
        same_salt, hashed = False, frozenset[str]()  # the types the adapter hashed: none for a raw event
        if event.hashed_with is not None:
            same_salt, hashed = self._mark(event.hashed_with)
        for kind, value in event.identifiers.items():
            if not isinstance(kind, IdentifierType):
                value = value.strip()
                if kind not in custom or not value:
                    blocked += 1  # a custom type this worker does not declare (or an empty value): not stitched by
                    continue
            if kind not in hashed:
                if patterns and patterns.blocks(kind, value):
                    blocked += 1  # (a hashed value cannot be matched: the adapter that hashed it left those out)
                    continue
                key = self.stored_key(kind, value)
            elif same_salt and kind in here and _HASH.fullmatch(value):
                key = identifier_key(kind, value)  # hashed by the adapter with this salt: stored as it is
            else:
                # Hashed with another salt, or of a type stored raw here (hashing off, or not in the list): it can
                # match nothing. A raw value under the mark (the event schema checks e-mail and phone only) neither.
                blocked += 1
                continue
            if key in self._blocked:
                blocked += 1
            else:
                keys.append(key)
        if not keys:
            anonymous = anonymous_key(event)
            if anonymous is not None and anonymous not in self._blocked:
                keys.append(anonymous)
        elif len(keys) > 1:
            keys.sort(key=self.strength)
        return EventKeys(tuple(keys), blocked)


class KeptApart:
    """Never-link rules: pairs of identifier keys (as stored) that must never end up in one customer."""

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        partners: dict[str, set[str]] = {}
        for a, b in pairs:
            partners.setdefault(a, set()).add(b)
            partners.setdefault(b, set()).add(a)
        #: Key -> the keys a rule keeps apart from it.
        self.partners: dict[str, frozenset[str]] = {key: frozenset(keys) for key, keys in partners.items()}

    def __bool__(self) -> bool:
        return bool(self.partners)

    def __len__(self) -> int:
        return sum(len(keys) for keys in self.partners.values()) // 2

    def marked(self, keys: Iterable[str]) -> set[str]:
        """Those of ``keys`` some rule names."""
        partners = self.partners
        return {key for key in keys if key in partners}

    def clash(self, held: set[str], joining: Iterable[str]) -> bool:
        """True when a key of ``joining`` is kept apart from one of ``held`` (both as :meth:`marked` returns)."""
        return any(not self.partners[key].isdisjoint(held) for key in joining)


#: No never-link rules.
NO_RULES = KeptApart()


class MergeBound(NamedTuple):
    """Most touchpoints the customers one link combines may hold together, and each customer's count."""

    most: int
    size: Callable[[str], int]


class LinkPlan(NamedTuple):
    """What an event links: existing customers to combine, keys new to the graph, keys refused by a type limit,
    keys a never-link rule keeps out and keys refused because their customer would make the merge too large."""

    group: list[str]
    new_keys: list[str]
    refused: list[str]
    apart: list[str]
    too_large: list[str]


def plan_link(
    keys: Sequence[str],
    identities: Mapping[str, str],
    holdings: Callable[[str], Mapping[str, Sequence[str]]],
    limits: Mapping[str, int],
    apart: KeptApart = NO_RULES,
    bound: MergeBound | None = None,
) -> LinkPlan:
    """Plan the links an event makes, strongest key first, refusing any that would break a type limit, the merge
    bound or a never-link rule.

    ``keys`` are the event's keys strongest first, ``identities`` maps keys to customer ids and
    ``holdings(customer_id)`` gives a customer's identifier values by type. The strongest key is always taken; each
    further key joins (with its customer's keys) only if the combined customer stays within ``limits`` and
    ``bound`` and holds no two keys ``apart`` keeps apart.
    """
    plan = LinkPlan([], [], [], [], [])
    touchpoints: int | None = None  # of plan.group's customers together; counted when first needed
    counts: dict[str, int] | None = None  # keys by limited type linked so far; computed when first needed
    marked: set[str] | None = None  # keys named by a never-link rule linked so far; computed when first needed
    for index, key in enumerate(keys):
        owner = identities.get(key)
        if owner is not None and owner in plan.group:
            continue
        if index:
            if counts is None:
                counts = _type_counts(plan, holdings, limits)
            if owner is None:
                kind = key_type(key)
                adds = {kind: 1} if kind in limits else {}
            else:
                held = holdings(owner)
                adds = {kind: len(held.get(kind, ())) for kind in limits}
            if any(counts[kind] + n > limits[kind] for kind, n in adds.items()):
                plan.refused.append(key)
                continue
            if bound is not None and owner is not None and plan.group:
                if touchpoints is None:
                    touchpoints = sum(map(bound.size, plan.group))
                if touchpoints + bound.size(owner) > bound.most:
                    plan.too_large.append(key)
                    continue
            if apart:
                if marked is None:
                    marked = apart.marked(_linked_keys(plan, holdings))
                joining = apart.marked([key] if owner is None else _all_keys(holdings(owner)))
                if apart.clash(marked, joining):
                    plan.apart.append(key)
                    continue
                marked |= joining
            for kind, n in adds.items():
                counts[kind] += n
        if owner is None:
            plan.new_keys.append(key)
        else:
            plan.group.append(owner)
            if touchpoints is not None and bound is not None:
                touchpoints += bound.size(owner)
    return plan


def _all_keys(held: Mapping[str, Sequence[str]]) -> Iterator[str]:
    """The keys of a customer's identifiers by type (values without their type, as ``CustomerState`` holds them)."""
    for kind, values in held.items():
        for value in values:
            yield f"{kind}:{value}"


def _linked_keys(plan: LinkPlan, holdings: Callable[[str], Mapping[str, Sequence[str]]]) -> Iterator[str]:
    """Every key the customers and new keys of ``plan`` hold together."""
    for owner in plan.group:
        yield from _all_keys(holdings(owner))
    yield from plan.new_keys


def _type_counts(
    plan: LinkPlan, holdings: Callable[[str], Mapping[str, Sequence[str]]], limits: Mapping[str, int]
) -> dict[str, int]:
    """How many keys of each limited type the customers and keys of ``plan`` hold together."""
    counts = dict.fromkeys(limits, 0)
    for owner in plan.group:
        held = holdings(owner)
        for kind in limits:
            counts[kind] += len(held.get(kind, ()))
    for key in plan.new_keys:
        kind = key_type(key)
        if kind in counts:
            counts[kind] += 1
    return counts


class Repointing(NamedTuple):
    """Where a batch's merges, applied in order, leave things (:func:`repoint`)."""

    #: Each merge's survivor once the batch's later merges are applied too: where its merged customer lives on.
    survivors: list[str]
    #: Merged customer id -> the customer that customer's earlier rows end on (ids that end where they were left
    #: out).
    moved: dict[str, str]


def repoint(merges: Sequence[tuple[str, str]]) -> Repointing:
    """What applying ``merges`` — (merged id, survivor id) pairs, in the order they happened — one after the other
    leaves, computed at once: a batch may merge ``a`` into ``b`` and then ``b`` into ``c``, and ``a``'s rows and
    merge record must then end on ``c``, as they would had each merge re-pointed the rows of those before it.

    Exactly the sequential result whatever the pairs (an id merged twice, a cycle), in one backward pass: the
    mapping of the merges after the i-th is known when the i-th is read.
    """
    later: dict[str, str] = {}
    survivors: list[str] = []
    for merged_id, survivor_id in reversed(merges):
        final = later.get(survivor_id, survivor_id)
        survivors.append(final)
        later[merged_id] = final  # the i-th merge, then those after it: rows still on merged_id end on final
    survivors.reverse()
    return Repointing(survivors, {merged: final for merged, final in later.items() if merged != final})


#: Prefix of the placeholder ids :func:`one_by_one` moves a cycle's rows through: customer ids begin with ``c-``.
PLACEHOLDER = "~"


def one_by_one(moved: Mapping[str, str]) -> list[tuple[str, str]]:
    """``moved`` (``Repointing.moved``) as (from, to) pairs a sink can apply one after the other, each an indexed
    ``UPDATE … WHERE customer_id = from``, ending as if every row had moved at once.

    Rows are moved out of an id before rows are moved into it, else they would move twice; ids whose rows swap (a
    cycle, which only customers formed again could give) go through a placeholder id first.
    """
    remaining = dict(moved)
    waiting: dict[str, set[str]] = {}  # id -> the keys whose rows move into it, held until its own rows left
    for key, target in remaining.items():
        if target in remaining:
            waiting.setdefault(target, set()).add(key)
    ready = sorted(key for key, target in remaining.items() if target not in remaining)
    pairs: list[tuple[str, str]] = []
    while remaining:
        if not ready:  # only cycles (and ids moving into them) are left: free an id of a cycle
            seen, key = set(), next(iter(remaining))
            while key not in seen:
                seen.add(key)
                key = remaining[key]
            placeholder, target = PLACEHOLDER + key, remaining.pop(key)
            pairs.append((key, placeholder))
            waiting[target].discard(key)
            waiting[target].add(placeholder)
            remaining[placeholder] = target
            ready.extend(sorted(waiting.pop(key, ())))
            continue
        key = ready.pop()
        pairs.append((key, remaining.pop(key)))
        ready.extend(sorted(waiting.pop(key, ())))
    return pairs
