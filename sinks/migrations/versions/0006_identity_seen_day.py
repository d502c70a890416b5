"""identities.last_seen is the UTC day of the latest event carrying the key (rewritten once a day, not per event)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows written before keep no finer time than the ones written after: the same value in any arrival order.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "UPDATE identities SET last_seen = date_trunc('day', last_seen AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
        )
    else:
        # SQLAlchemy's SQLite storage format of a timestamp, at midnight of its day.
        op.execute("UPDATE identities SET last_seen = strftime('%Y-%m-%d 00:00:00.000000', last_seen)")


def downgrade() -> None:
    """Nothing to undo: a day is a valid last_seen of the old schema too."""
