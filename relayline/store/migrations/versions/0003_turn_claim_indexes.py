"""indexes for claiming the oldest queued turn that heads its chat, and for a turn's messages

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.create_index("ix_turns_state_id", ["state", "id"], unique=False)
        # Replaces (chat_id, state): the same prefix, and it answers "is there an earlier active
        # turn in this chat" from the index alone.
        batch_op.create_index("ix_turns_chat_id_state_id", ["chat_id", "state", "id"], unique=False)
        batch_op.drop_index("ix_turns_chat_id_state")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index("ix_messages_turn_id", ["turn_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_turn_id")
    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.create_index("ix_turns_chat_id_state", ["chat_id", "state"], unique=False)
        batch_op.drop_index("ix_turns_chat_id_state_id")
        batch_op.drop_index("ix_turns_state_id")
