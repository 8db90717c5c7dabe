"""Per-example results: one row of ``evaluations`` per scored (expert or base model, task, split), and one
row of ``eval_examples`` per example of it, so two models can be compared example by example (a paired
bootstrap, hubtool/stats.py) rather than only through their aggregates.

- evaluations: the subject is an expert version (expert_id, going with it) or a base model (base_model,
  with the revision scored), never both (ck_evaluations_one_subject); evaluating the same subject on the
  same task and split again replaces the old evaluation. NULLs are distinct in a unique constraint, so
  (expert_id, task, split) only binds expert rows and (base_model, task, split) only base rows.
- eval_examples: (evaluation, idx in the split), the example's key (12 hex of the sha256 of its input),
  its headline value in percent, every per-example metric, the gold option's log-prob, the generated text.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("expert_id", sa.Integer, sa.ForeignKey("experts.id", ondelete="CASCADE")),
        sa.Column("base_model", sa.String),
        sa.Column("base_revision", sa.String),
        sa.Column("task", sa.String, nullable=False),
        sa.Column("split", sa.String, nullable=False),
        sa.Column("metric", sa.String, nullable=False),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("settings", sa.JSON),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("(expert_id IS NULL) <> (base_model IS NULL)", name="ck_evaluations_one_subject"),
        sa.UniqueConstraint("expert_id", "task", "split", name="uq_evaluations_expert"),
        sa.UniqueConstraint("base_model", "task", "split", name="uq_evaluations_base"),
    )
    op.create_table(
        "eval_examples",
        sa.Column(
            "evaluation_id", sa.Integer, sa.ForeignKey("evaluations.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("idx", sa.Integer, nullable=False),
        sa.Column("key", sa.String, nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("metrics", sa.JSON),
        sa.Column("gold_logprob", sa.Float),
        sa.Column("text", sa.String, nullable=False),
        sa.PrimaryKeyConstraint("evaluation_id", "idx"),
    )


def downgrade() -> None:
    op.drop_table("eval_examples")
    op.drop_table("evaluations")
