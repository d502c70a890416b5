"""touchpoints.resolution_contradicted: the experience gap, flagged on each resolving contact

Rows stored before hold null (not computed) until their entry is written again.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("touchpoints") as batch:
        batch.add_column(
            sa.Column(
                "resolution_contradicted",
                sa.Boolean,
                comment="a resolving contact the customer contradicted (null: not a resolving contact)",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("touchpoints") as batch:
        batch.drop_column("resolution_contradicted")
