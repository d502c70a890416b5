"""customers.engagement and customers.channels: the engagement score and the channels it is distributed over

Rows stored before hold null (not computed) until their customer is written again; their score then counts the
events applied since (README: Engagement score).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("customers") as batch:
        batch.add_column(
            sa.Column("engagement", sa.Float, comment="engagement score 0-100 (null: not written since migration 0017)")
        )
        batch.add_column(
            sa.Column(
                "channels",
                sa.String(64),
                comment="the channels of the customer's touchpoints, sorted, comma-separated (null: not written since 0017)",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("customers") as batch:
        batch.drop_column("channels")
        batch.drop_column("engagement")
