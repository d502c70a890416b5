"""customers.overdue_at indexed only where set

Most customers have no open issue, and their ``overdue_at`` stays null; but a batch writes every touched customer's
row whole, and SQLite rewrites an index entry whenever its column is set, even to the same value: each of those
rows moved a null entry of ``ix_customers_overdue_at``. The sweep reads only customers with a time there
(``overdue_at <= until``, which both databases know implies ``IS NOT NULL``), so the index now holds only those.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

SET = sa.text("overdue_at IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_customers_overdue_at", table_name="customers")
    op.create_index("ix_customers_overdue_at", "customers", ["overdue_at"], sqlite_where=SET, postgresql_where=SET)


def downgrade() -> None:
    op.drop_index("ix_customers_overdue_at", table_name="customers")
    op.create_index("ix_customers_overdue_at", "customers", ["overdue_at"])
