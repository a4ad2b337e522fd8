"""turn leases shared by instances

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_expires_at", sa.BigInteger(), nullable=True))
        batch_op.create_index("ix_turns_state_lease", ["state", "lease_expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.drop_index("ix_turns_state_lease")
        batch_op.drop_column("lease_expires_at")
