"""customers.traits: the traits of a customer's identify calls, the latest value of each by event time

Rows written before stay null until their customer's next event; the state JSON of such rows holds no traits
(they were not kept), so nothing can fill them here.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "traits",
                sa.JSON(),
                nullable=True,
                comment="identify traits, the latest value of each by event time (null: none written yet)",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.drop_column("traits")
