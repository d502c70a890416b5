"""outbox ids are never reused, and the database has an id: the commit markers of transactional outputs name both

A worker publishing in Kafka transactions records "rows of worker W up to id N are published" beside the
records (streams.downstream). That holds only if a later row never gets an id at or below N: SQLite reuses the
largest rowid once the table is empty unless the table is AUTOINCREMENT (PostgreSQL's sequences never reuse).
The database id keeps markers written against another database (a fresh one on the same topics) from
counting here.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # Rebuilt as AUTOINCREMENT with its rows (ids kept): SQLite then counts on from the largest id ever used.
        with op.batch_alter_table("outbox", recreate="always", table_kwargs={"sqlite_autoincrement": True}):
            pass
    table = op.create_table(
        "database_identity",
        sa.Column("id", sa.String(length=36), nullable=False, comment="random, made when the schema was created"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(table, [{"id": str(uuid.uuid4())}])


def downgrade() -> None:
    op.drop_table("database_identity")
