"""manual_merges: merges made by hand (cxstream merge), applied by a worker's next batch

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

#: IDENTIFIER_KEY_MAX when this revision was written (the identities table's key column).
KEY_MAX = 320
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "manual_merges",
        sa.Column(
            "merge_id", sa.String(36), primary_key=True, comment="audit_log.subject of the row that asked for it"
        ),
        sa.Column("key_a", sa.String(KEY_MAX), nullable=False),
        sa.Column("key_b", sa.String(KEY_MAX), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("applied_at", TS, comment="when a worker's batch applied it (null: not yet)"),
    )


def downgrade() -> None:
    op.drop_table("manual_merges")
