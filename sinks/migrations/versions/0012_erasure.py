"""suppressions and audit_log: erasure (GDPR Art. 17) that survives replays, and a record of it

``suppressions`` holds only salted hashes of an erased person's identifier keys: the worker drops events that
carry one. ``audit_log`` records each erasure (what, why, by which command or key, when) and is never rewritten.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "suppressions",
        sa.Column(
            "identifier_hash", sa.String(64), primary_key=True, comment="HMAC-SHA256 of the identifier key (hex)"
        ),
        sa.Column("erasure_id", sa.String(36), nullable=False, comment="the erasure that added it (audit_log.subject)"),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("action", sa.String(32), nullable=False, comment="erasure"),
        sa.Column(
            "subject",
            sa.String(128),
            nullable=False,
            comment="what it was done to (an erasure id: never a person's id)",
        ),
        sa.Column(
            "actor", sa.String(128), nullable=False, comment="the command or API key (by fingerprint) that did it"
        ),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("detail", sa.JSON, nullable=False, comment="counts and options, never identifiers"),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_table("suppressions")
