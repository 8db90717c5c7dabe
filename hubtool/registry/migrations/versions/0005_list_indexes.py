"""Indexes for `hub list` at a million experts (docs/benchmarks.md, list_latency).

- base_model, kind and task (the primary task): (column, name, version), so `--base X`, `--kind K`
  and `--task X` walk the index in the listing's default order (name, version) and stop after
  --limit rows instead of sorting every match (for --task, experts having X as a secondary task are
  added by id: fastlist.Reader._primary_walk).
- metrics (metric, value, expert_id): `--where 'rougeL>=30'` searches a value range of one metric
  (covering: the expert ids come from the index) and `--sort -rougeL` walks it from the top.
- metrics (expert_id, metric, value): one expert's value of a metric from the index alone. Needed as
  soon as the index above exists: SQLite prefers a covering index, and for "this expert's rougeL"
  would otherwise pick (metric, ...) and read every expert's rougeL row for each expert.
- created_at: `--sort -created` (newest first) without sorting the table.

Portable DDL (alembic's create/drop_index): the same on SQLite and PostgreSQL.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_experts_base_model", table_name="experts")
    op.create_index("ix_experts_base_model", "experts", ["base_model", "name", "version"])
    op.drop_index("ix_experts_kind", table_name="experts")
    op.create_index("ix_experts_kind", "experts", ["kind", "name", "version"])
    op.drop_index("ix_experts_task", table_name="experts")
    op.create_index("ix_experts_task", "experts", ["task", "name", "version"])
    op.create_index("ix_experts_created_at", "experts", ["created_at"])
    op.create_index("ix_metrics_metric_value", "metrics", ["metric", "value", "expert_id"])
    op.create_index("ix_metrics_expert_metric_value", "metrics", ["expert_id", "metric", "value"])


def downgrade() -> None:
    op.drop_index("ix_metrics_expert_metric_value", table_name="metrics")
    op.drop_index("ix_metrics_metric_value", table_name="metrics")
    op.drop_index("ix_experts_created_at", table_name="experts")
    op.drop_index("ix_experts_task", table_name="experts")
    op.create_index("ix_experts_task", "experts", ["task"])
    op.drop_index("ix_experts_kind", table_name="experts")
    op.create_index("ix_experts_kind", "experts", ["kind"])
    op.drop_index("ix_experts_base_model", table_name="experts")
    op.create_index("ix_experts_base_model", "experts", ["base_model"])
