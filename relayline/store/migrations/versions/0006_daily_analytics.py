"""daily analytics per tenant and UTC day (analytics_daily), the days computed
(analytics_runs), and the indexes that read one tenant batch's day: turns by tenant and
creation or end, answers' metrics by tenant and time (replacing the tenant-only index)

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "analytics_daily",
        sa.Column("tenant_id", sa.String(length=26), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("messages", sa.Integer(), nullable=False),
        sa.Column("turns", sa.Integer(), nullable=False),
        sa.Column("answered", sa.Integer(), nullable=False),
        sa.Column("cancelled", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("failed_by_category", sa.JSON(), nullable=False),
        sa.Column("first_token_p50_ms", sa.Integer(), nullable=True),
        sa.Column("first_token_p95_ms", sa.Integer(), nullable=True),
        sa.Column("latency_p50_ms", sa.Integer(), nullable=True),
        sa.Column("latency_p95_ms", sa.Integer(), nullable=True),
        sa.Column("tokens_in", sa.BigInteger(), nullable=False),
        sa.Column("tokens_out", sa.BigInteger(), nullable=False),
        sa.Column("usage_reported", sa.Integer(), nullable=False),
        sa.Column("usage_counted", sa.Integer(), nullable=False),
        sa.Column("usage_estimated", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_analytics_daily_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "day", name=op.f("pk_analytics_daily")),
    )
    op.create_index("ix_analytics_daily_day", "analytics_daily", ["day"], unique=False)
    op.create_table(
        "analytics_runs",
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("finished_at", sa.BigInteger(), nullable=False),
        sa.Column("tenant_rows", sa.Integer(), nullable=False),
        sa.Column("metrics_deleted_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_analytics_runs")),
    )
    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.create_index(
            "ix_turns_tenant_id_created_at", ["tenant_id", "created_at"], unique=False
        )
        batch_op.create_index(
            "ix_turns_tenant_id_finished_at", ["tenant_id", "finished_at"], unique=False
        )
    with op.batch_alter_table("message_metrics", schema=None) as batch_op:
        batch_op.create_index(
            "ix_message_metrics_tenant_id_created_at", ["tenant_id", "created_at"], unique=False
        )
        batch_op.drop_index("ix_message_metrics_tenant_id")


def downgrade() -> None:
    with op.batch_alter_table("message_metrics", schema=None) as batch_op:
        batch_op.create_index("ix_message_metrics_tenant_id", ["tenant_id"], unique=False)
        batch_op.drop_index("ix_message_metrics_tenant_id_created_at")
    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.drop_index("ix_turns_tenant_id_finished_at")
        batch_op.drop_index("ix_turns_tenant_id_created_at")
    op.drop_table("analytics_runs")
    op.drop_index("ix_analytics_daily_day", table_name="analytics_daily")
    op.drop_table("analytics_daily")
