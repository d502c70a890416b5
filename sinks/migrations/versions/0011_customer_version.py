"""customers.version: how many times the row was written, so that a worker's cached state is checked per customer

With several workers committing concurrently (PostgreSQL), a worker keeps the states it wrote and checks each one
against the version it reads while locking the customer's row, instead of dropping its whole cache whenever
another worker commits anything. Existing rows start at 0.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "version",
                sa.BigInteger(),
                nullable=False,
                server_default="0",
                comment="writes of this row so far: a worker's cached state is valid while it is unchanged",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.drop_column("version")
