"""Base-model baselines: how the base model itself scores on a task, so experts show their gain.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "base_metrics",
        sa.Column("base_model", sa.String, nullable=False),
        sa.Column("base_revision", sa.String),
        sa.Column("task", sa.String, nullable=False),
        sa.Column("metric", sa.String, nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("evaluated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("base_model", "task", "metric"),
    )


def downgrade() -> None:
    op.drop_table("base_metrics")
