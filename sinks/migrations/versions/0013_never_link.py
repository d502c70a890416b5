"""never_link: rules set by hand that keep two identifier keys out of one customer

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

#: IDENTIFIER_KEY_MAX when this revision was written (the identities table's key column).
KEY_MAX = 320


def upgrade() -> None:
    op.create_table(
        "never_link",
        sa.Column("key_a", sa.String(KEY_MAX), primary_key=True),
        sa.Column("key_b", sa.String(KEY_MAX), primary_key=True),
        sa.Column("rule_id", sa.String(36), nullable=False, comment="audit_log.subject of the row that added it"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("never_link")
