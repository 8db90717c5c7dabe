"""The first catalog: experts, their tasks, tags, metrics, aliases, lineage; tasks.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


# nnz and bytes pass 2**31 for a full delta of a 7B model or a > 2 GiB blob: 64-bit on PostgreSQL (INTEGER
# there is 32-bit). SQLite's INTEGER is 64-bit already, and its DDL stays as it always was. (No PostgreSQL
# catalog predates this, so the first migration may say it.)
COUNT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _expert_fk() -> sa.Column:
    return sa.Column("expert_id", sa.Integer, sa.ForeignKey("experts.id", ondelete="CASCADE"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "expert_names",
        sa.Column("name", sa.String, primary_key=True),
        sa.Column("last_version", sa.Integer, nullable=False),
    )
    op.create_table(
        "experts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("task", sa.String, nullable=False),
        sa.Column("base_model", sa.String, nullable=False),
        sa.Column("base_revision", sa.String),
        sa.Column("targets", sa.String),
        sa.Column("keep_ratio", sa.Float),
        sa.Column("nnz", COUNT, nullable=False),
        sa.Column("bytes", COUNT, nullable=False),
        sa.Column("sha256", sa.String, nullable=False),
        sa.Column("blob", sa.String, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("config", sa.JSON),
        sa.Column("description", sa.String),
        sa.Column("hub_repo", sa.String),
        sa.Column("hub_commit", sa.String),
        sa.UniqueConstraint("name", "version", name="uq_experts_name_version"),
    )
    op.create_index("ix_experts_task", "experts", ["task"])
    op.create_index("ix_experts_base_model", "experts", ["base_model"])
    op.create_index("ix_experts_kind", "experts", ["kind"])
    op.create_index("ix_experts_sha256", "experts", ["sha256"])

    op.create_table(
        "expert_tasks",
        _expert_fk(),
        sa.Column("task", sa.String, nullable=False),
        sa.PrimaryKeyConstraint("expert_id", "task"),
    )
    op.create_index("ix_expert_tasks_task", "expert_tasks", ["task", "expert_id"])

    op.create_table(
        "expert_tags",
        _expert_fk(),
        sa.Column("tag", sa.String, nullable=False),
        sa.PrimaryKeyConstraint("expert_id", "tag"),
    )
    op.create_index("ix_expert_tags_tag", "expert_tags", ["tag", "expert_id"])

    op.create_table(
        "metrics",
        _expert_fk(),
        sa.Column("metric", sa.String, nullable=False),
        sa.Column("task", sa.String, nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("expert_id", "metric", "task"),
    )

    op.create_table(
        "aliases",
        sa.Column("name", sa.String, nullable=False),
        sa.Column("alias", sa.String, nullable=False),
        _expert_fk(),
        sa.PrimaryKeyConstraint("name", "alias"),
    )

    op.create_table(
        "lineage",
        sa.Column("child_id", sa.Integer, sa.ForeignKey("experts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("parent", sa.String, nullable=False),
        sa.Column("role", sa.String),
        sa.Column("weight", sa.Float),
        sa.PrimaryKeyConstraint("child_id", "parent"),
    )
    op.create_index("ix_lineage_parent", "lineage", ["parent"])

    op.create_table(
        "tasks",
        sa.Column("name", sa.String, primary_key=True),
        sa.Column("description", sa.String),
        sa.Column("tags", sa.JSON),
        sa.Column("data_source", sa.String),
        sa.Column("sizes", sa.JSON),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    for table in ("tasks", "lineage", "aliases", "metrics", "expert_tags", "expert_tasks", "experts"):
        op.drop_table(table)
    op.drop_table("expert_names")
