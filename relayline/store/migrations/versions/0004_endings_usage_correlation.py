"""why an answer ended (finish_reason), where its token counts came from (usage_source), and
the id that follows a turn through every log line and the model server (correlation_id)

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("correlation_id", sa.String(length=128), nullable=True))
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("finish_reason", sa.String(length=16), nullable=True))
    with op.batch_alter_table("message_metrics", schema=None) as batch_op:
        batch_op.add_column(sa.Column("usage_source", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("message_metrics", schema=None) as batch_op:
        batch_op.drop_column("usage_source")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("finish_reason")
    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.drop_column("correlation_id")
