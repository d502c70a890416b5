"""Never-link rules set by hand: ``cxstream never-link A B`` keeps two identifiers out of one customer.

The identifiers are named as people name them (``email:ann@example.org``, a bare e-mail or phone number) and
stored as the worker stores keys (normalised, a PII value hashed when hashing is on), so a rule matches what the
worker links. Every worker of the database reads the rules again at its next batch (``streams.pipeline``), and a
replay of the input topics into a database holding the rule keeps the two apart from the first event on.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Engine

from config.settings import Settings
from schemas.limits import IDENTIFIER_KEY_MAX
from schemas.touchpoint import CUSTOM_TYPE_PATTERN, IdentifierType
from sinks.database import make_engine
from sinks.erasure import suppression_entries
from sinks.identity_rules import (
    ManualMerge,
    NeverLinkRule,
    add_manual_merge,
    add_manual_split,
    add_never_link,
    holder_of_both,
    manual_merges,
    merge_applied_at,
    never_link_rules,
    record_rule_settings,
    remove_never_link,
    remove_rules_of,
    split_applied_at,
    split_refusal,
)
from sinks.queries import customer_identities, customer_of_key
from sinks.sql import count_touchpoints
from streams.domain.identity import key_strength, ranks
from streams.domain.suppression import suppression_hash
from streams.policies import identifier_hashing, suppression_salt
from streams.references import find_customer, stored_key


class BadIdentifier(ValueError):
    """A name that is no valid identifier (the message says which)."""


class SplitTooLarge(BadIdentifier):
    """A split of a customer with more touchpoints than ``CXSTREAM_SPLIT_MAX_TOUCHPOINTS``."""


class MergeTooLarge(BadIdentifier):
    """A merge of customers with more touchpoints together than ``CXSTREAM_MERGE_MAX_TOUCHPOINTS``."""


@dataclass
class RuleChange:
    """What ``keep_apart`` or ``allow_link`` did."""

    rule: NeverLinkRule | None
    #: False when the rule was already there (adding) or absent (removing): nothing changed.
    changed: bool
    #: The customer holding both identifiers today, merged before the rule (adding only).
    holder: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The change as ``--json`` prints it."""
        rule = self.rule
        return {
            "changed": self.changed,
            "rule_id": None if rule is None else rule.rule_id,
            "keys": None if rule is None else [rule.key_a, rule.key_b],
            "created_at": None if rule is None else rule.created_at.isoformat(),
            "holder": self.holder,
        }


def _keys(settings: Settings, first: str, second: str) -> tuple[str, str]:
    hashing = identifier_hashing(settings)
    known = {*IdentifierType, *settings.custom_identifier_types}
    keys = []
    for ref in (first, second):
        key = stored_key(ref, hashing, settings.default_phone_region)
        if key is None or not _is_key(key):
            raise BadIdentifier(f"{ref!r} is not an identifier (type:value, e.g. email:ann@example.org)")
        if key.partition(":")[0] not in known:
            raise BadIdentifier(f"{ref!r}: not a built-in identifier type, nor one in CXSTREAM_CUSTOM_IDENTIFIER_TYPES")
        keys.append(key)
    if keys[0] == keys[1]:
        raise BadIdentifier(f"{first!r} and {second!r} are the same identifier")
    return keys[0], keys[1]


def keep_apart(settings: Settings, first: str, second: str, *, actor: str, reason: str = "") -> RuleChange:
    """Store the rule that no customer may hold both identifiers (an audit row when it is new)."""
    key_a, key_b = _keys(settings, first, second)
    engine = make_engine(settings.database_url, writer=True)
    try:
        at = datetime.now(UTC)
        rule, new = add_never_link(engine, key_a, key_b, rule_id=str(uuid.uuid4()), at=at, actor=actor, reason=reason)
        return RuleChange(rule, new, holder_of_both(engine, key_a, key_b))
    finally:
        engine.dispose()


def allow_link(settings: Settings, first: str, second: str, *, actor: str, reason: str = "") -> RuleChange:
    """Remove the rule keeping the identifiers apart (an audit row when there was one)."""
    key_a, key_b = _keys(settings, first, second)
    engine = make_engine(settings.database_url, writer=True)
    try:
        rule = remove_never_link(engine, key_a, key_b, at=datetime.now(UTC), actor=actor, reason=reason)
        return RuleChange(rule, rule is not None)
    finally:
        engine.dispose()


def allow_links_of(settings: Settings, rule_id: str, *, actor: str, reason: str = "") -> int:
    """Remove every never-link rule of one id (a split's, which keep each identifier it moved apart from each it
    kept); return how many (an audit row when any)."""
    engine = make_engine(settings.database_url, writer=True)
    try:
        return remove_rules_of(engine, rule_id, at=datetime.now(UTC), actor=actor, reason=reason)
    finally:
        engine.dispose()


@dataclass
class MergeReport:
    """What ``merge_customers`` did: the merge's id, the two customers, and the survivor once a worker applied it."""

    merge_id: str
    customers: tuple[str, str]
    #: The customer both are now, once applied (None: not applied within the wait).
    survivor: str | None

    def as_json(self) -> dict[str, Any]:
        """The report as ``--json`` prints it."""
        return {"merge_id": self.merge_id, "customers": list(self.customers), "survivor": self.survivor}


def merge_customers(
    settings: Settings, first: str, second: str, *, actor: str, reason: str = "", wait_s: float = 30.0
) -> MergeReport:
    """Merge the customers two references name (customer ids or identifiers), as if an event had carried an
    identifier of each: the workers' next batch (or tick) applies it, re-deriving both timelines and moving the
    merged customer's figures, and publishes a ``manual_merge`` record on the identity topic. Waits up to
    ``wait_s`` for a worker to apply it.

    Raises BadIdentifier when a reference names no customer, both name one, or a never-link rule keeps them apart
    (remove it first), or a worker that applied it within the wait kept them apart (its own merge bound, or a rule
    added meanwhile); MergeTooLarge (before recording anything) when they hold more touchpoints together than
    ``CXSTREAM_MERGE_MAX_TOUCHPOINTS``. Per-type limits do not apply: a merge made by hand is the person's decision.
    """
    hashing = identifier_hashing(settings)
    engine = make_engine(settings.database_url, writer=True)
    try:
        customers = []
        for ref in (first, second):
            customer_id = find_customer(engine, ref, hashing, settings.default_phone_region)
            if customer_id is None:
                raise BadIdentifier(f"no customer {ref!r}")
            customers.append(customer_id)
        if customers[0] == customers[1]:
            raise BadIdentifier(f"{first!r} and {second!r} are one customer already ({customers[0]})")
        held = [{row["identifier"] for row in customer_identities(engine, customer_id)} for customer_id in customers]
        mine, theirs = held
        for rule in never_link_rules(engine):
            if (rule.key_a in mine and rule.key_b in theirs) or (rule.key_a in theirs and rule.key_b in mine):
                raise BadIdentifier(
                    f"never-link rule {rule.rule_id} keeps them apart: remove it first (cxstream never-link --remove)"
                )
        # A worker refuses a merge over its bound (``plan_link``): its history would be read back whole.
        bound = settings.merge_max_touchpoints
        with engine.connect() as conn:
            together = sum(count_touchpoints(conn, customer_id, bound + 1) for customer_id in customers)
        if together > bound:
            raise MergeTooLarge(
                f"customers {customers[0]} and {customers[1]} hold more than {bound} touchpoints together "
                f"(CXSTREAM_MERGE_MAX_TOUCHPOINTS={bound}): a merge reads them back into memory"
            )
        rank = ranks(settings.identifier_priority)
        key_a, key_b = (min(keys, key=lambda key: key_strength(key, rank)) for keys in held)
        merge_id = str(uuid.uuid4())
        add_manual_merge(engine, key_a, key_b, merge_id=merge_id, at=datetime.now(UTC), actor=actor, reason=reason)
        deadline = time.monotonic() + wait_s
        applied = merge_applied_at(engine, merge_id) is not None
        while not applied and time.monotonic() < deadline:
            time.sleep(0.2)
            applied = merge_applied_at(engine, merge_id) is not None
        survivor = customer_of_key(engine, key_a) if applied else None
        if survivor is not None and customer_of_key(engine, key_b) not in (survivor, None):
            raise BadIdentifier(
                f"a worker refused merge {merge_id}: the customers stay apart (its CXSTREAM_MERGE_MAX_TOUCHPOINTS, or "
                "a never-link rule added meanwhile; cxstream_identifiers_rejected_total counts it)"
            )
        return MergeReport(merge_id, (customers[0], customers[1]), survivor)
    finally:
        engine.dispose()


@dataclass
class SplitReport:
    """What ``split_customer`` did: the split's id, the customer split, the keys moved, and where the two sides
    are once a worker applied it."""

    split_id: str
    customer_id: str
    moved: list[str]
    #: How many never-link rules the split added (moved x kept pairs not already kept apart).
    rules: int
    #: The customer holding the first moved identifier, and the one holding the first kept (None: not applied
    #: within the wait).
    moved_to: str | None
    kept_by: str | None

    def as_json(self) -> dict[str, Any]:
        """The report as ``--json`` prints it."""
        return {
            "split_id": self.split_id,
            "customer_id": self.customer_id,
            "moved": self.moved,
            "never_link_rules": self.rules,
            "moved_to": self.moved_to,
            "kept_by": self.kept_by,
        }


def split_customer(
    settings: Settings, ref: str, identifiers: Iterable[str], *, actor: str, reason: str = "", wait_s: float = 30.0
) -> SplitReport:
    """Split identifiers off a customer (a customer id or an identifier names it): each moved identifier is kept
    apart from each one the customer keeps by never-link rules, and the workers' next batch (or tick) applies the
    customer's events again under them, from its touchpoints in event-time order, so that the events that reached
    the customer only through the moved identifiers go with them; both sides' timelines and figures are derived
    again and ``cx.identity`` gets a ``split`` record. Waits up to ``wait_s`` for a worker to apply it.

    Raises BadIdentifier when ``ref`` names no customer, an identifier is not the customer's, or nothing would be
    kept; SplitTooLarge (before recording anything) when the customer has more touchpoints than
    ``CXSTREAM_SPLIT_MAX_TOUCHPOINTS``, or when a worker refused it for that reason by its own setting (the rules
    stay then). The rules stay in force (replays, future events) until removed with ``cxstream never-link --remove``.
    """
    hashing = identifier_hashing(settings)
    engine = make_engine(settings.database_url, writer=True)
    try:
        customer_id = find_customer(engine, ref, hashing, settings.default_phone_region)
        if customer_id is None:
            raise BadIdentifier(f"no customer {ref!r}")
        held = {row["identifier"] for row in customer_identities(engine, customer_id)}
        known = {*IdentifierType, *settings.custom_identifier_types}
        moved: list[str] = []
        for name in identifiers:
            key = stored_key(name, hashing, settings.default_phone_region)
            if key is None or not _is_key(key):
                raise BadIdentifier(f"{name!r} is not an identifier (type:value, e.g. email:ann@example.org)")
            if key.partition(":")[0] not in known:
                raise BadIdentifier(
                    f"{name!r}: not a built-in identifier type, nor one in CXSTREAM_CUSTOM_IDENTIFIER_TYPES"
                )
            if key not in held:
                raise BadIdentifier(f"{name!r} is not an identifier of customer {customer_id}")
            if key not in moved:
                moved.append(key)
        kept = sorted(held - set(moved))
        if not moved:
            raise BadIdentifier("name at least one identifier to split off (--identifier TYPE:VALUE)")
        if not kept:
            raise BadIdentifier(f"customer {customer_id} holds no other identifier: nothing would be left to split")
        # The worker applies the whole customer again in one batch (``stitching.Split``) and refuses one over its
        # bound (``BatchProcessor._split_targets``); this says so at once, by this process's setting.
        bound = settings.split_max_touchpoints
        with engine.connect() as conn:
            over = count_touchpoints(conn, customer_id, bound + 1) > bound
        if over:
            raise SplitTooLarge(
                f"customer {customer_id} has more than {bound} touchpoints (CXSTREAM_SPLIT_MAX_TOUCHPOINTS={bound}): "
                "a split applies them all again in one batch (README: Splitting a customer by hand)"
            )
        split_id = str(uuid.uuid4())
        rules = add_manual_split(
            engine, customer_id, moved, kept, split_id=split_id, at=datetime.now(UTC), actor=actor, reason=reason
        )
        deadline = time.monotonic() + wait_s
        applied = split_applied_at(engine, split_id) is not None
        while not applied and time.monotonic() < deadline:
            time.sleep(0.2)
            applied = split_applied_at(engine, split_id) is not None
        if applied and (why := split_refusal(engine, split_id)) is not None:
            raise SplitTooLarge(f"a worker refused split {split_id}: {why}")
        return SplitReport(
            split_id,
            customer_id,
            moved,
            rules,
            customer_of_key(engine, moved[0]) if applied else None,
            customer_of_key(engine, kept[0]) if applied else None,
        )
    finally:
        engine.dispose()


def import_rules(settings: Settings, exported: bytes, *, actor: str, reason: str = "") -> tuple[int, int, int]:
    """Add the rules ``cxstream never-link --list --json`` printed (keys as stored: hashed values stay hashed, so
    a database rebuilt from the input topics gets another's rules); return (added, already there, left out because
    they name an erased person's identifier: an export taken before an erasure must not bring it back).

    Raises BadIdentifier naming the first entry that is not a rule (nothing is added then).
    """
    try:
        entries = orjson.loads(exported)
    except orjson.JSONDecodeError as exc:
        raise BadIdentifier(f"not the JSON that --list --json prints ({exc})") from None
    pairs: list[tuple[str, str]] = []
    for n, entry in enumerate(entries if isinstance(entries, list) else [entries]):
        keys = entry.get("keys") if isinstance(entry, dict) else None
        if not (isinstance(keys, list) and len(keys) == 2 and all(_is_key(key) for key in keys) and keys[0] != keys[1]):
            raise BadIdentifier(f'entry {n}: expected {{"keys": ["type:value", "type:value"]}}, got {entry!r:.200}')
        pairs.append((keys[0], keys[1]))
    engine = make_engine(settings.database_url, writer=True)
    added = erased = 0
    try:
        salt = suppression_salt(settings)
        suppressed = {digest for digest, _, _ in suppression_entries(engine)}
        for key_a, key_b in pairs:
            if suppressed and {suppression_hash(salt, key_a), suppression_hash(salt, key_b)} & suppressed:
                erased += 1
                continue
            at = datetime.now(UTC)
            _, new = add_never_link(engine, key_a, key_b, rule_id=str(uuid.uuid4()), at=at, actor=actor, reason=reason)
            added += new
    finally:
        engine.dispose()
    return added, len(pairs) - added - erased, erased


def merges_made(settings: Settings) -> list[ManualMerge]:
    """Every merge made by hand in the results database, oldest first."""
    engine = make_engine(settings.database_url)
    try:
        return manual_merges(engine)
    finally:
        engine.dispose()


def import_merges(settings: Settings, exported: bytes, *, actor: str, reason: str = "") -> tuple[int, int, int]:
    """Add the merges made by hand that ``cxstream merge --list --json`` printed, for a database rebuilt from the
    input topics; return (added, already there, left out because they name an erased person's identifier).

    Each keeps its id and the time it was asked for, and waits until both its keys are held: the batch whose events
    bring the second applies it, so the rebuilt database ends as the old one did. Raises BadIdentifier naming the
    first entry that is not a merge (nothing is added then).
    """
    try:
        entries = orjson.loads(exported)
    except orjson.JSONDecodeError as exc:
        raise BadIdentifier(f"not the JSON that --list --json prints ({exc})") from None
    merges: list[tuple[str, str, str, datetime]] = []
    for n, entry in enumerate(entries if isinstance(entries, list) else [entries]):
        keys = entry.get("keys") if isinstance(entry, dict) else None
        merge_id = entry.get("merge_id") if isinstance(entry, dict) else None
        try:
            asked = datetime.fromisoformat(entry["created_at"]).astimezone(UTC)  # type: ignore[index]
        except (KeyError, TypeError, ValueError):
            asked = None
        if not (
            isinstance(keys, list)
            and len(keys) == 2
            and all(_is_key(key) for key in keys)
            and isinstance(merge_id, str)
            and 0 < len(merge_id) <= 36
            and asked is not None
        ):
            raise BadIdentifier(
                f'entry {n}: expected {{"merge_id": …, "keys": ["type:value", "type:value"], "created_at": …}}, '
                f"got {entry!r:.200}"
            )
        merges.append((merge_id, keys[0], keys[1], asked))
    engine = make_engine(settings.database_url, writer=True)
    added = erased = 0
    try:
        salt = suppression_salt(settings)
        suppressed = {digest for digest, _, _ in suppression_entries(engine)}
        for merge_id, key_a, key_b, asked in merges:
            if suppressed and {suppression_hash(salt, key_a), suppression_hash(salt, key_b)} & suppressed:
                erased += 1
                continue
            added += add_manual_merge(
                engine,
                key_a,
                key_b,
                merge_id=merge_id,
                at=datetime.now(UTC),
                actor=actor,
                reason=reason,
                asked_at=asked,
            )
    finally:
        engine.dispose()
    return added, len(merges) - added - erased, erased


def _is_key(key: object) -> bool:
    """A stored identifier key: ``type:value`` with a type name and a value that fits the identities table."""
    if not isinstance(key, str) or len(key) > IDENTIFIER_KEY_MAX or "\x00" in key:
        return False
    kind, separator, value = key.partition(":")
    return bool(separator and value.strip() and re.fullmatch(CUSTOM_TYPE_PATTERN, kind))


def rule_settings(settings: Settings) -> dict[str, Any]:
    """The identity rules the settings set, as the audit trail records them: blocked values and patterns only as
    a count and a digest (a value may be someone's e-mail), the rest as set."""

    def digest(items: Iterable[str]) -> str:
        return hashlib.sha256("\n".join(sorted(items)).encode()).hexdigest()[:16]

    patterns = [f"{kind}={pattern}" for kind, pattern in settings.blocked_identifier_patterns.items()]
    described: dict[str, Any] = {
        "custom_types": list(settings.custom_identifier_types),
        "priority": [str(kind) for kind in settings.identifier_priority],
        "limits": {str(kind): n for kind, n in sorted(settings.identifier_limits.items())},
        "merge_max_touchpoints": settings.merge_max_touchpoints,
        "blocked_identifiers": {
            "count": len(settings.blocked_identifiers),
            "digest": digest(settings.blocked_identifiers),
        },
        "blocked_patterns": {"count": len(patterns), "digest": digest(patterns)},
        "hash_identifiers": settings.hash_identifiers,
        "hashed_types": [str(kind) for kind in settings.hashed_identifier_types],
    }
    return {**described, "digest": digest([orjson.dumps(described, option=orjson.OPT_SORT_KEYS).decode()])}


def record_rules_at_start(settings: Settings, engine: Engine) -> bool:
    """Add an audit row when the worker starts with other identity rule settings than the last recorded."""
    return record_rule_settings(
        engine, rule_settings(settings), at=datetime.now(UTC), actor=f"worker:{settings.worker_id}"[:128]
    )


def rules_in_force(settings: Settings) -> list[NeverLinkRule]:
    """Every never-link rule of the results database, oldest first."""
    engine = make_engine(settings.database_url)
    try:
        return never_link_rules(engine)
    finally:
        engine.dispose()
