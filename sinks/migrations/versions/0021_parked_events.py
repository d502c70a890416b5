"""parked_events, identity_claims: events a batch read while another worker's batch held their customer, and the
new identifier keys batches are adding (PostgreSQL)

Two workers' batches of thousands of events nearly always share a customer, and one waited for the other's whole
transaction on its row (38% of batch time in make bench). A batch now locks the customers it can without waiting
and parks the events of the others here, in its own transaction, with its offsets; the group's next batch
applies them first. New identifier keys are claimed in identity_claims instead of advisory locks, which a batch of
thousands of new keys could not take (PostgreSQL's shared lock table). SQLite, one writer at a time, never parks.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

#: IDENTIFIER_KEY_MAX when this revision was written (the identities table's key column).
KEY_MAX = 320


def upgrade() -> None:
    op.create_table(
        "parked_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("group_id", sa.String(128), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "event_id", sa.Text, nullable=False, comment="unbounded: an over-long one is refused where it is applied"
        ),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("record_offset", sa.BigInteger, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, comment="batches that found its customer held by another"),
        sa.Column("event", sa.LargeBinary, nullable=False, comment="the event as validated (JSON)"),
    )
    op.create_index("parked_events_oldest", "parked_events", ["group_id", "occurred_at"])
    op.create_table(
        "identity_claims",
        sa.Column("identifier", sa.String(KEY_MAX), primary_key=True),
        sa.Column("xid", sa.BigInteger, nullable=False, comment="txid_current() of the claiming batch's transaction"),
        sa.Column(
            "server_started",
            sa.DateTime(timezone=True),
            nullable=False,
            comment="pg_postmaster_start_time() then: xid means nothing after",
        ),
    )


def downgrade() -> None:
    op.drop_table("identity_claims")
    op.drop_table("parked_events")
