"""event time per input partition, history read back from touchpoints, unattributed touchpoints

- stream_partitions: each input partition's event time and when it was last active (the group's watermark is
  the least over active partitions), written in the batch's transaction like the offsets;
- stream_offsets.fingerprint: a digest of the record at the applied offset, so a worker can tell at start that
  the broker still holds the log this database followed;
- touchpoints.transfers: the last fact a customer's history is rebuilt from (filled from the customer states
  that still hold it; older rows keep 0);
- touchpoints.customer_id becomes nullable: a touchpoint with no usable identifier is kept, unattributed.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stream_partitions",
        sa.Column("group_id", sa.String(length=128), nullable=False),
        sa.Column("topic", sa.String(length=249), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column(
            "event_time",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="greatest occurred_at read from the partition",
        ),
        sa.Column(
            "active_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="wall-clock time the partition last had a new record or a backlog",
        ),
        sa.PrimaryKeyConstraint("group_id", "topic", "partition"),
    )
    with op.batch_alter_table("stream_offsets", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "fingerprint", sa.String(length=32), nullable=True, comment="digest of the record at the applied offset"
            )
        )
    with op.batch_alter_table("stream_clock", schema=None) as batch_op:
        batch_op.alter_column(
            "watermark",
            existing_type=sa.DateTime(timezone=True),
            comment="the group's event-time watermark: least event time of its active partitions",
            existing_comment="max occurred_at applied: the event-time clock for lateness and windows",
        )
    with op.batch_alter_table("touchpoints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("transfers", sa.Integer(), nullable=False, server_default="0"))
        batch_op.alter_column("customer_id", existing_type=sa.String(length=64), nullable=True)
    _transfers_from_states()


def _transfers_from_states() -> None:
    """Copy each contact's transfers from the layout-1 customer states (their recent timelines) to its touchpoint."""
    conn = op.get_bind()
    update = sa.text("UPDATE touchpoints SET transfers = :n WHERE event_id = :e")
    rows = conn.execute(sa.text("SELECT state FROM customers"))
    pending: list[dict[str, object]] = []
    for (state,) in rows:
        data = json.loads(state) if isinstance(state, str | bytes) else state
        if not isinstance(data, dict) or data.get("v") != 1:
            continue
        # Layout 1: each timeline row is [t, event_id, channel, type, received, amount, currency, issue, resolved,
        # transfers, survey, source, moments].
        pending += [{"n": row[9], "e": row[1]} for row in data.get("timeline", []) if row[9]]
        if len(pending) >= 1000:
            conn.execute(update, pending)
            pending = []
    if pending:
        conn.execute(update, pending)


def downgrade() -> None:
    with op.batch_alter_table("stream_clock", schema=None) as batch_op:
        batch_op.alter_column(
            "watermark",
            existing_type=sa.DateTime(timezone=True),
            comment="max occurred_at applied: the event-time clock for lateness and windows",
            existing_comment="the group's event-time watermark: least event time of its active partitions",
        )
    with op.batch_alter_table("touchpoints", schema=None) as batch_op:
        batch_op.alter_column("customer_id", existing_type=sa.String(length=64), nullable=False)
        batch_op.drop_column("transfers")
    with op.batch_alter_table("stream_offsets", schema=None) as batch_op:
        batch_op.drop_column("fingerprint")
    op.drop_table("stream_partitions")
