"""PostgreSQL: room on the pages of the tables a batch rewrites rows of (customers, metric_cells, identities)

A row updated where its page has room, with no indexed column changed, is a heap-only (HOT) update: no new index
entries, less WAL, and the old version pruned on the page without a vacuum. Full pages left 41% of customer
updates, 26% of identity updates and 21% of metric cell updates needing new index entries (python -m bench.apply
--database postgres, 96,309 events on 10,000 customers); with this, 6%, 12% and 0%, at about the same table sizes.
Pages written before keep their fill until rewritten (VACUUM FULL, or as rows move). SQLite has no such setting.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

#: Percent of each page new rows fill: customers' state rows are large (about 1 KB or more), so half a page keeps
#: room for a new version of each row on it.
FILLFACTOR = {"customers": 50, "metric_cells": 50, "identities": 70}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, percent in FILLFACTOR.items():
        op.execute(f"ALTER TABLE {table} SET (fillfactor = {percent})")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in FILLFACTOR:
        op.execute(f"ALTER TABLE {table} RESET (fillfactor)")
