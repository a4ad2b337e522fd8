"""indexes for the operator's turn reports: one tenant's turns in a state, newest first, and
the turns that ended in a recent window, by outcome

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("turns", schema=None) as batch_op:
        # Replaces (tenant_id): the same prefix, and it pages a tenant's turns in one state.
        batch_op.create_index(
            "ix_turns_tenant_id_state_id", ["tenant_id", "state", "id"], unique=False
        )
        batch_op.create_index("ix_turns_state_finished_at", ["state", "finished_at"], unique=False)
        batch_op.drop_index("ix_turns_tenant_id")


def downgrade() -> None:
    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.create_index("ix_turns_tenant_id", ["tenant_id"], unique=False)
        batch_op.drop_index("ix_turns_state_finished_at")
        batch_op.drop_index("ix_turns_tenant_id_state_id")
