"""identity_merges.survivor_id: re-point the merges whose survivor a later merge of the same batch took away

A batch that merged a into b and then b into c wrote a's row with survivor b, which no customer is any more; the
worker now writes the survivor the whole batch leaves (streams.domain.identity.repoint). This follows the rows
stored before to the customer that lives on, so a customer's merges (the read API) and an erasure find them all.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

#: A step follows every stale row one merge further; batches chain few merges. Ids merged into each other with no
#: customer left (none is known to occur) stay where the last step left them.
MAX_STEPS = 64

_STEP = sa.text(
    "UPDATE identity_merges SET survivor_id = "
    "(SELECT later.survivor_id FROM identity_merges later WHERE later.merged_id = identity_merges.survivor_id) "
    "WHERE survivor_id <> merged_id "
    "AND survivor_id NOT IN (SELECT customer_id FROM customers) "
    "AND survivor_id IN (SELECT merged_id FROM identity_merges)"
)


def upgrade() -> None:
    conn = op.get_bind()
    for _ in range(MAX_STEPS):
        if not conn.execute(_STEP).rowcount:
            break


def downgrade() -> None:
    """Nothing to undo: the rows stay on the customers they live on."""
