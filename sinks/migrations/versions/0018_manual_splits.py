"""touchpoints.identifier_keys and touchpoints.identify, manual_splits: what a split by hand (cxstream split) needs

A split applies a customer's events again under new never-link rules, so each touchpoint now records the identifier
keys its event was stitched by, and an identify call what the customer state keeps of it (traits, group id). Rows
stored before hold null: a split leaves those events with the customer's strongest identifier (README: Privacy).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("touchpoints") as batch:
        batch.add_column(
            sa.Column(
                "identifier_keys",
                sa.Text,
                comment="JSON list of the identifier keys the event was stitched by (null: stored before 0018)",
            )
        )
        batch.add_column(
            sa.Column("identify", sa.Text, comment="JSON: an identify call's traits and group_id (null: none)")
        )
    op.create_table(
        "manual_splits",
        sa.Column(
            "split_id", sa.String(36), primary_key=True, comment="audit_log.subject of the row that asked for it"
        ),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("moved", sa.JSON, nullable=False, comment="the identifier keys to move, as stored"),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("applied_at", TS, comment="when a worker's batch applied it (null: not yet)"),
    )


def downgrade() -> None:
    op.drop_table("manual_splits")
    with op.batch_alter_table("touchpoints") as batch:
        batch.drop_column("identify")
        batch.drop_column("identifier_keys")
