"""outbox.worker_id: a restarted worker republishes its own rows, not those another live worker is publishing

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "worker_id",
                sa.String(length=128),
                nullable=False,
                server_default="",
                comment="the worker that committed the row and publishes it",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("worker_id")
