"""Erasure in SQL: one customer's rows removed, their identifiers kept only as salted hashes, and an audit row.

The transaction locks the customer's row first (PostgreSQL; SQLite's writer transaction holds the database), as
a worker's batch does, so no batch changes the customer while it is erased, and a batch that waited for it finds
the customer gone and the suppression entries there (``streams.pipeline``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, delete, func, insert, or_, select, update

from sinks import tables as t
from sinks.contract import CellKey, cell_key
from sinks.sql import as_utc


@dataclass
class ErasedRows:
    """What an erasure removed (counts, and the keys downstream tombstones need: never the identifiers)."""

    customer_id: str
    #: Customers merged into it earlier (their profiles on ``cx.profiles`` are tombstoned too).
    merged_ids: list[str] = field(default_factory=list)
    identifiers: int = 0
    touchpoints: int = 0
    alerts: int = 0
    merges: int = 0
    #: Never-link rules naming one of the person's identifiers.
    rules: int = 0
    #: Merge records of customers the person was split off from whose evidence held the person's identifiers.
    evidence: int = 0
    cells: list[CellKey] = field(default_factory=list)
    #: Suppression entries added (0 with ``DELETE_ONLY``), and their hashes.
    suppressed: int = 0
    hashes: list[str] = field(default_factory=list)
    #: The highest outbox row id at the erasure: rows up to it may still publish the customer's records.
    outbox_before: int | None = None


def erase_customer(
    engine: Engine,
    customer_id: str,
    *,
    suppress: Callable[[Iterable[str]], list[str]] | None,
    erasure_id: str,
    at: datetime,
    actor: str,
    reason: str,
    options: dict[str, Any],
) -> ErasedRows | None:
    """Remove ``customer_id``'s rows in one transaction; None when there is no such customer.

    ``suppress``: the salted hashes of identifier keys, stored as suppression entries (None: delete only).
    """
    with engine.begin() as conn:
        found = conn.execute(
            select(t.customers.c.customer_id).where(t.customers.c.customer_id == customer_id).with_for_update()
        ).first()
        if found is None:
            return None
        # Then the groups' clocks, as a batch's last step takes them (customers first, then the clock: no cycle):
        # a sweep running meanwhile (overdue alerts, final cells, read without the customer's lock) ends first.
        conn.execute(select(t.stream_clock.c.group_id).order_by(t.stream_clock.c.group_id).with_for_update()).all()
        erased = ErasedRows(customer_id)
        keys = sorted(
            conn.execute(select(t.identities.c.identifier).where(t.identities.c.customer_id == customer_id)).scalars()
        )
        m = t.identity_merges.c
        # Never a customer that lives: a merge record of one formed again (a split) is history, not this person.
        live = select(t.customers.c.customer_id).where(t.customers.c.customer_id == m.merged_id).exists()
        erased.merged_ids = sorted(
            conn.execute(select(m.merged_id).where(m.survivor_id == customer_id, ~live)).scalars()
        )
        cells = t.metric_cells.c
        # A merge folds the merged customer's cells into the survivor's; a split that removed an id leaves its
        # cells (their counts taken back) under it: they name the person too.
        mine = (cells.scope == "customer") & cells.key.in_([customer_id, *erased.merged_ids])
        erased.cells = [
            cell_key(scope, key, window, as_utc(start))
            for scope, key, window, start in conn.execute(
                select(cells.scope, cells.key, cells.window, cells.window_start).where(mine)
            )
        ]
        erased.identifiers = _delete(conn, t.identities, t.identities.c.customer_id == customer_id)
        erased.touchpoints = _delete(conn, t.touchpoints, t.touchpoints.c.customer_id == customer_id)
        erased.alerts = _delete(conn, t.alerts, t.alerts.c.customer_id == customer_id)
        # A merge row holds the identifiers that linked two of the person's ids: evidence about them, removed too.
        erased.merges = _delete(conn, t.identity_merges, or_(m.survivor_id == customer_id, m.merged_id == customer_id))
        _delete(conn, t.metric_cells, mine)
        if keys:
            # Merges made by hand name the person's keys (done ones are history, pending ones moot): gone with them.
            merges = t.manual_merges.c
            _delete(conn, t.manual_merges, or_(merges.key_a.in_(keys), merges.key_b.in_(keys)))
        # So do splits made by hand: of this customer, or moving one of its keys (a split-off person's).
        held = set(keys)
        splits = t.manual_splits.c
        named, split_from = [], set()
        for split_id, split_customer, moved in conn.execute(select(splits.split_id, splits.customer_id, splits.moved)):
            if split_customer == customer_id or held.intersection(moved):
                named.append(split_id)
                split_from.add(split_customer)
        if named:
            _delete(conn, t.manual_splits, splits.split_id.in_(named))
        erased.evidence = _forget_evidence(conn, split_from - {customer_id}, held)
        if suppress is not None and keys:
            # Never-link rules name the person's keys: gone with them, as the person never comes back. Deleting
            # only keeps them: a replay into this database rebuilds the person under the same rules.
            rules = t.never_link.c
            erased.rules = _delete(conn, t.never_link, or_(rules.key_a.in_(keys), rules.key_b.in_(keys)))
        _delete(conn, t.customers, t.customers.c.customer_id == customer_id)
        if suppress is not None and keys:
            hashes = sorted(set(suppress(keys)))
            present = set(
                conn.execute(
                    select(t.suppressions.c.identifier_hash).where(t.suppressions.c.identifier_hash.in_(hashes))
                ).scalars()
            )
            new = [h for h in hashes if h not in present]
            if new:
                conn.execute(
                    insert(t.suppressions),
                    [{"identifier_hash": h, "erasure_id": erasure_id, "created_at": at} for h in new],
                )
            erased.suppressed, erased.hashes = len(hashes), hashes
        detail = {
            **options,
            "identifiers": erased.identifiers,
            "touchpoints": erased.touchpoints,
            "alerts": erased.alerts,
            "merges": erased.merges,
            "never_link_rules": erased.rules,
            "merge_evidence": erased.evidence,
            "metric_cells": len(erased.cells),
            "suppressed": erased.suppressed,
        }
        conn.execute(
            insert(t.audit_log).values(
                at=at, action="erasure", subject=erasure_id, actor=actor, reason=reason, detail=detail
            )
        )
        erased.outbox_before = conn.scalar(select(func.max(t.outbox.c.id)))
    return erased


def _forget_evidence(conn: Connection, customers: set[str], held: set[str]) -> int:
    """Take the person's identifier keys ``held`` out of the evidence of the merge records of ``customers`` (those
    the person was split off from), and return how many records changed. A split leaves the record of a customer
    merged in before, which its re-stitch did not form again, on the customer split, evidence and all, whichever
    side the evidence went to; the person's identifiers must not stay there."""
    if not customers:
        return 0
    m = t.identity_merges.c
    changed = []
    for merged_id, evidence in conn.execute(select(m.merged_id, m.identifiers).where(m.survivor_id.in_(customers))):
        kept = {kind: value for kind, value in (evidence or {}).items() if f"{kind}:{value}" not in held}
        if kept != evidence:
            changed.append({"m": merged_id, "e": kept})
    if changed:
        conn.execute(
            update(t.identity_merges).where(m.merged_id == bindparam("m")).values(identifiers=bindparam("e")), changed
        )
    return len(changed)


def _delete(conn: Connection, table: t.Table, where: Any) -> int:
    return int(conn.execute(delete(table).where(where)).rowcount)


def suppression_entries(engine: Engine) -> list[tuple[str, str, datetime]]:
    """Every stored suppression entry: (hash, erasure id, time)."""
    c = t.suppressions.c
    with engine.connect() as conn:
        return [(h, e, as_utc(at)) for h, e, at in conn.execute(select(c.identifier_hash, c.erasure_id, c.created_at))]


def add_suppressions(engine: Engine, entries: Iterable[tuple[str, str, datetime]]) -> int:
    """Store suppression entries (hash, erasure id, time) read from the suppressions topic; return how many
    were new (a fresh database replaying the input topics learns of erasures made elsewhere this way)."""
    rows = {h: (erasure_id, at) for h, erasure_id, at in entries}
    if not rows:
        return 0
    c = t.suppressions.c
    with engine.begin() as conn:
        present = set(conn.execute(select(c.identifier_hash)).scalars())
        new = [
            {"identifier_hash": h, "erasure_id": erasure_id, "created_at": at}
            for h, (erasure_id, at) in rows.items()
            if h not in present
        ]
        if new:
            conn.execute(insert(t.suppressions), new)
    return len(new)


def outbox_pending_upto(engine: Engine, row_id: int) -> int:
    """Outbox rows at or below ``row_id`` not yet published."""
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).where(t.outbox.c.id <= row_id)) or 0)
