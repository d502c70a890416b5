"""identity_merges.merged_into: the customer a merged customer was merged into, never rewritten

``survivor_id`` follows later merges to the customer that lives on (a merge of the survivor re-points it), so
it loses which customer the merge itself joined. ``merged_into`` keeps that. Rows written before hold their
``survivor_id`` as of the upgrade: what a later merge rewrote before cannot be told any more.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("identity_merges", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "merged_into",
                sa.String(64),
                nullable=True,
                comment="the customer the merge joined this one to (survivor_id follows later merges; this does not)",
            )
        )
    op.execute("UPDATE identity_merges SET merged_into = survivor_id")


def downgrade() -> None:
    with op.batch_alter_table("identity_merges", schema=None) as batch_op:
        batch_op.drop_column("merged_into")
