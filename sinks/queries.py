"""Read-side queries over the results tables (the `timeline` command, tests, analysts' examples)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, or_, select

from sinks import tables as t
from sinks.sql import as_utc


def resolve_customer(engine: Engine, ref: str) -> str | None:
    """Find a customer by customer_id, by ``type:value`` identifier, or by a bare identifier value."""
    with engine.connect() as conn:
        if conn.scalar(select(t.customers.c.customer_id).where(t.customers.c.customer_id == ref)):
            return ref
        c = t.identities.c
        found = conn.execute(
            select(c.customer_id).where(or_(c.identifier == ref, c.id_value == ref, c.id_value == ref.lower()))
        ).first()
        return str(found[0]) if found else None


def _plain(row: Any) -> dict[str, Any]:
    """A row as a dict with str keys and UTC-aware timestamps (SQLite hands them back naive)."""
    return {str(k): as_utc(v) if isinstance(v, datetime) else v for k, v in row.items()}


def customer_timeline(engine: Engine, customer_id: str) -> dict[str, Any]:
    """A customer's profile row, identifiers and event-time-ordered touchpoints."""
    with engine.connect() as conn:
        profile = conn.execute(select(t.customers).where(t.customers.c.customer_id == customer_id)).mappings().first()
        idents = conn.execute(
            select(t.identities.c.identifier).where(t.identities.c.customer_id == customer_id).order_by("identifier")
        ).scalars()
        rows = conn.execute(
            select(t.touchpoints)
            .where(t.touchpoints.c.customer_id == customer_id)
            .order_by(t.touchpoints.c.occurred_at, t.touchpoints.c.event_id)
        ).mappings()
        touchpoints = [_plain(r) for r in rows]
        identifiers = list(idents)
    summary = {k: v for k, v in _plain(profile).items() if k != "state"} if profile else None
    return {"customer_id": customer_id, "profile": summary, "identifiers": identifiers, "touchpoints": touchpoints}
