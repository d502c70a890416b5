"""Never-link rules in SQL: added and removed by hand, each change an ``audit_log`` row.

A rule names two identifier keys as the identities table stores them; no customer may hold both (the stitcher
refuses the link: ``streams.domain.identity.KeptApart``). The rules set in settings (priority, limits, blocked
values and patterns) are recorded too: a worker adds an ``identity_rules`` row when it starts with other ones. Workers read the rules again whenever the number of
``audit_log`` rows changes, so a rule takes effect from the next batch of every worker, replays included.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select, text

from sinks import tables as t
from sinks.sql import as_utc


@dataclass(frozen=True)
class NeverLinkRule:
    """One stored rule: its two keys (the smaller first), id and when it was set."""

    key_a: str
    key_b: str
    rule_id: str
    created_at: datetime


def ordered(key_a: str, key_b: str) -> tuple[str, str]:
    """A rule's keys as stored: the smaller first, so a rule has one row whichever way round it is named."""
    return (key_a, key_b) if key_a <= key_b else (key_b, key_a)


def _find(conn: Connection, key_a: str, key_b: str) -> NeverLinkRule | None:
    c = t.never_link.c
    row = conn.execute(select(t.never_link).where(c.key_a == key_a, c.key_b == key_b)).first()
    return None if row is None else NeverLinkRule(row.key_a, row.key_b, row.rule_id, as_utc(row.created_at))


def _audit(conn: Connection, *, at: datetime, action: str, rule_id: str, actor: str, reason: str) -> None:
    # No keys in the audit row: they may be personal data, and the rule row (or its absence) holds them.
    conn.execute(
        insert(t.audit_log).values(at=at, action=action, subject=rule_id, actor=actor, reason=reason, detail={})
    )


def add_never_link(
    engine: Engine, key_a: str, key_b: str, *, rule_id: str, at: datetime, actor: str, reason: str
) -> tuple[NeverLinkRule, bool]:
    """Store the rule keeping ``key_a`` and ``key_b`` apart; return it and whether it is new (an existing rule is
    returned as it is, with no audit row)."""
    key_a, key_b = ordered(key_a, key_b)
    with engine.begin() as conn:
        found = _find(conn, key_a, key_b)
        if found is not None:
            return found, False
        conn.execute(insert(t.never_link).values(key_a=key_a, key_b=key_b, rule_id=rule_id, created_at=at))
        _audit(conn, at=at, action="never_link", rule_id=rule_id, actor=actor, reason=reason)
    return NeverLinkRule(key_a, key_b, rule_id, at), True


def remove_never_link(
    engine: Engine, key_a: str, key_b: str, *, at: datetime, actor: str, reason: str
) -> NeverLinkRule | None:
    """Remove the rule keeping ``key_a`` and ``key_b`` apart; return it, or None when there was none.

    Customers kept apart stay apart: only later events may link them.
    """
    key_a, key_b = ordered(key_a, key_b)
    with engine.begin() as conn:
        found = _find(conn, key_a, key_b)
        if found is None:
            return None
        c = t.never_link.c
        conn.execute(delete(t.never_link).where(c.key_a == key_a, c.key_b == key_b))
        _audit(conn, at=at, action="never_link_removed", rule_id=found.rule_id, actor=actor, reason=reason)
    return found


@dataclass(frozen=True)
class ManualMerge:
    """One stored merge made by hand: its id, its two keys, when it was asked for and when a worker applied it."""

    merge_id: str
    key_a: str
    key_b: str
    created_at: datetime
    applied_at: datetime | None


def remove_rules_of(engine: Engine, rule_id: str, *, at: datetime, actor: str, reason: str) -> int:
    """Remove every rule of one id (a split adds several under its own id); return how many, with one audit row
    ``never_link_removed`` for them (none when there were none). Customers kept apart stay apart."""
    c = t.never_link.c
    with engine.begin() as conn:
        removed = conn.execute(delete(t.never_link).where(c.rule_id == rule_id)).rowcount
        if removed:
            conn.execute(
                insert(t.audit_log).values(
                    at=at, action="never_link_removed", subject=rule_id, actor=actor, reason=reason,
                    detail={"rules": removed},
                )
            )  # fmt: skip
    return int(removed)


def add_manual_merge(
    engine: Engine,
    key_a: str,
    key_b: str,
    *,
    merge_id: str,
    at: datetime,
    actor: str,
    reason: str,
    asked_at: datetime | None = None,
) -> bool:
    """Ask the workers to merge the customers holding ``key_a`` and ``key_b`` (their next batch applies it), with
    an audit row at ``at``; ``asked_at``: when it was first asked for, if earlier (a merge imported from another
    database keeps its time). Return False, adding nothing, when a merge of that id is there already."""
    c = t.manual_merges.c
    with engine.begin() as conn:
        if conn.execute(select(c.merge_id).where(c.merge_id == merge_id)).first() is not None:
            return False
        conn.execute(
            insert(t.manual_merges).values(merge_id=merge_id, key_a=key_a, key_b=key_b, created_at=asked_at or at)
        )
        _audit(conn, at=at, action="manual_merge", rule_id=merge_id, actor=actor, reason=reason)
    return True


def manual_merges(engine: Engine) -> list[ManualMerge]:
    """Every merge made by hand, oldest first."""
    c = t.manual_merges.c
    with engine.connect() as conn:
        rows = conn.execute(select(t.manual_merges).order_by(c.created_at, c.merge_id))
        return [
            ManualMerge(
                r.merge_id,
                r.key_a,
                r.key_b,
                as_utc(r.created_at),
                None if r.applied_at is None else as_utc(r.applied_at),
            )
            for r in rows
        ]


def add_manual_split(
    engine: Engine,
    customer_id: str,
    moved: list[str],
    kept: list[str],
    *,
    split_id: str,
    at: datetime,
    actor: str,
    reason: str,
) -> int:
    """Ask the workers to split ``moved`` off the customer: in one transaction, the never-link rules keeping each
    moved key apart from each ``kept`` one (their rule id is the split's), the ``manual_splits`` row the next batch
    applies, and one audit row (counts only); return how many rules were new."""
    pairs = sorted({ordered(a, b) for a in moved for b in kept})
    with engine.begin() as conn:
        new = [pair for pair in pairs if _find(conn, *pair) is None]
        if new:
            conn.execute(
                insert(t.never_link),
                [{"key_a": a, "key_b": b, "rule_id": split_id, "created_at": at} for a, b in new],
            )
        conn.execute(
            insert(t.manual_splits).values(split_id=split_id, customer_id=customer_id, moved=moved, created_at=at)
        )
        detail = {"moved": len(moved), "kept": len(kept), "never_link_rules": len(new)}
        conn.execute(
            insert(t.audit_log).values(
                at=at, action="split", subject=split_id, actor=actor, reason=reason, detail=detail
            )
        )
    return len(new)


def split_applied_at(engine: Engine, split_id: str) -> datetime | None:
    """When a worker applied the split made by hand ``split_id`` (None: not yet)."""
    c = t.manual_splits.c
    with engine.connect() as conn:
        at = conn.execute(select(c.applied_at).where(c.split_id == split_id)).scalar_one_or_none()
    return None if at is None else as_utc(at)


def split_refusal(engine: Engine, split_id: str) -> str | None:
    """Why a worker refused the split made by hand ``split_id`` (its ``split_refused`` audit row), or None."""
    a = t.audit_log.c
    with engine.connect() as conn:
        return conn.scalar(select(a.reason).where(a.action == "split_refused", a.subject == split_id).limit(1))


def merge_applied_at(engine: Engine, merge_id: str) -> datetime | None:
    """When a worker applied the merge made by hand ``merge_id`` (None: not yet)."""
    c = t.manual_merges.c
    with engine.connect() as conn:
        at = conn.execute(select(c.applied_at).where(c.merge_id == merge_id)).scalar_one_or_none()
    return None if at is None else as_utc(at)


def never_link_rules(engine: Engine) -> list[NeverLinkRule]:
    """Every rule in force, oldest first."""
    c = t.never_link.c
    with engine.connect() as conn:
        rows = conn.execute(select(t.never_link).order_by(c.created_at, c.key_a, c.key_b))
        return [NeverLinkRule(r.key_a, r.key_b, r.rule_id, as_utc(r.created_at)) for r in rows]


def holder_of_both(engine: Engine, key_a: str, key_b: str) -> str | None:
    """The customer holding both keys today (merged before the rule), if any: a rule does not split it."""
    c = t.identities.c
    with engine.connect() as conn:
        owners = dict(conn.execute(select(c.identifier, c.customer_id).where(c.identifier.in_([key_a, key_b]))).all())
    owner = owners.get(key_a)
    return owner if owner is not None and owner == owners.get(key_b) else None


def record_rule_settings(engine: Engine, description: dict[str, Any], *, at: datetime, actor: str) -> bool:
    """Add an ``identity_rules`` audit row when ``description`` (the identity rules a worker starts with) differs
    from the last one recorded; return whether it did. Workers starting together add one row between them."""
    c = t.audit_log.c
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Readers go on; a second starting worker waits here, then finds the first one's row.
            conn.execute(text("LOCK TABLE audit_log IN SHARE ROW EXCLUSIVE MODE"))
        last = conn.execute(
            select(c.detail).where(c.action == "identity_rules").order_by(c.id.desc()).limit(1)
        ).scalar_one_or_none()
        if last == description:
            return False
        conn.execute(
            insert(t.audit_log).values(
                at=at,
                action="identity_rules",
                subject=description["digest"],
                actor=actor,
                reason="the identity rule settings a worker started with changed" if last else "first start",
                detail=description,
            )
        )
    return True
