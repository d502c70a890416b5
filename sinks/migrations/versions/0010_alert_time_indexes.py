"""alerts by time: indexes for the latest alerts overall and per customer (the read API and its pages)

``ix_alerts_customer_time`` (customer, time, id) replaces ``ix_alerts_customer_id``, whose lookups it covers;
``ix_alerts_time`` (time, id) serves the latest alerts overall without sorting the whole table.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index("ix_alerts_customer_id")
        batch_op.create_index("ix_alerts_customer_time", ["customer_id", "occurred_at", "alert_id"], unique=False)
        batch_op.create_index("ix_alerts_time", ["occurred_at", "alert_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index("ix_alerts_time")
        batch_op.drop_index("ix_alerts_customer_time")
        batch_op.create_index("ix_alerts_customer_id", ["customer_id"], unique=False)
