"""stream_clock.sequence: batches committed by the group, so a worker knows whether its state cache is current

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("stream_clock", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "sequence",
                sa.BigInteger(),
                nullable=False,
                server_default="0",
                comment="batches of state the group committed; a worker's cache is current while it wrote the last",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("stream_clock", schema=None) as batch_op:
        batch_op.drop_column("sequence")
