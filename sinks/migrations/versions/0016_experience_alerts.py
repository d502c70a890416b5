"""experience_alerts: alerts on the whole, a channel's or the company's figure worse than its own baseline

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "experience_alerts",
        sa.Column("alert_id", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False, comment="firing or resolved"),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("window", sa.String(16), nullable=False),
        sa.Column("window_start", TS, nullable=False),
        sa.Column("window_end", TS, nullable=False),
        sa.Column("baseline_start", TS, nullable=False),
        sa.Column("value", sa.Float),
        sa.Column("baseline", sa.Float),
        sa.Column("answers", sa.Integer, nullable=False),
        sa.Column("baseline_answers", sa.Integer, nullable=False),
        sa.Column("margin", sa.Float, nullable=False),
        sa.Column("z", sa.Float, nullable=False, comment="standard errors worse than the baseline"),
        sa.Column("revision", sa.BigInteger, nullable=False, comment="the deciding batch's commit sequence"),
        sa.Column("decided_at", TS, nullable=False, comment="when its figures were last decided (wall clock)"),
        sa.Column("message", sa.Text, nullable=False, server_default=""),
    )
    op.create_index("ix_experience_alerts_time", "experience_alerts", ["window_start", "alert_id"])


def downgrade() -> None:
    op.drop_index("ix_experience_alerts_time", "experience_alerts")
    op.drop_table("experience_alerts")
