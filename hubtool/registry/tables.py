"""The catalog's tables (SQLModel). The migrations in ``migrations/versions`` create exactly these.

An expert version is an immutable row of ``experts`` (only ``hub_repo``/``hub_commit`` are filled
in later, once pushed). Everything that grows after registration lives in its own rows so it can be
filtered in SQL: ``metrics`` (one row per task and metric), ``expert_tags``, ``expert_tasks``,
``aliases`` (movable names for a version) and ``lineage`` (child -> parent edges).

``expert_names`` remembers the last version ever given to a name, so removing ``qa@3`` never lets a
later registration reuse ``qa@3`` for different content.

``tasks`` is where a task lives once trained on: its data source (an absolute path), sizes and
category, so `hub eval --task NAME` finds it again without the file.

``base_metrics`` holds the base model's own scores (``hub eval --base``), one value per
(base model, task, metric): an expert's gain is its metric minus the one of its base model.

``evaluations`` and ``eval_examples`` keep every example's result of the last evaluation of an expert
or a base model on a (task, split): what a paired comparison of two models needs (hub eval --compare).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, Column, ForeignKey, Index, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel

metadata = SQLModel.metadata

# A count that may pass 2**31 (nnz of a full delta, bytes of a large blob): BIGINT on PostgreSQL, whose
# INTEGER is 32-bit; INTEGER (64-bit already) on SQLite.
COUNT = BigInteger().with_variant(Integer(), "sqlite")


def _fk(target: str, primary_key: bool = True) -> Column:
    # Every child row goes with its expert version (SQLite needs PRAGMA foreign_keys=ON; see catalog).
    return Column(Integer, ForeignKey(target, ondelete="CASCADE"), primary_key=primary_key, nullable=False)


class ExpertName(SQLModel, table=True):
    __tablename__ = "expert_names"

    name: str = Field(primary_key=True)
    last_version: int


class ExpertRow(SQLModel, table=True):
    __tablename__ = "experts"
    __table_args__ = (
        UniqueConstraint("name", "version", name="uq_experts_name_version"),
        # (filter, name, version): `hub list --task/--base/--kind` reads them in the listing's order (0005)
        Index("ix_experts_task", "task", "name", "version"),
        Index("ix_experts_base_model", "base_model", "name", "version"),
        Index("ix_experts_kind", "kind", "name", "version"),
        Index("ix_experts_sha256", "sha256"),
        Index("ix_experts_created_at", "created_at"),  # --sort -created (0005)
    )

    id: int | None = Field(default=None, primary_key=True)
    name: str
    version: int
    kind: str
    task: str  # the primary task; all tasks are rows of expert_tasks
    base_model: str
    base_revision: str | None = None
    targets: str | None = None
    keep_ratio: float | None = None
    nnz: int = Field(sa_column=Column("nnz", COUNT, nullable=False))
    bytes: int = Field(sa_column=Column("bytes", COUNT, nullable=False))
    sha256: str
    blob: str  # path under the blob store, "ab/abcd....safetensors"
    created_at: datetime
    config: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    description: str | None = None
    hub_repo: str | None = None
    hub_commit: str | None = None
    value_dtype: str | None = None  # bfloat16 | float16 | float32, from the blob's header (0003)


class ExpertTask(SQLModel, table=True):
    __tablename__ = "expert_tasks"
    __table_args__ = (Index("ix_expert_tasks_task", "task", "expert_id"),)

    expert_id: int = Field(sa_column=_fk("experts.id"))
    task: str = Field(primary_key=True)


class ExpertTag(SQLModel, table=True):
    __tablename__ = "expert_tags"
    __table_args__ = (Index("ix_expert_tags_tag", "tag", "expert_id"),)

    expert_id: int = Field(sa_column=_fk("experts.id"))
    tag: str = Field(primary_key=True)


class MetricRow(SQLModel, table=True):
    # The key (expert_id, metric, task) is what --where 'rougeL>=30' and --sort -rougeL look up per
    # expert. (metric, value, expert_id) is the other way round, all experts by one metric's value:
    # the SQLite read path (fastlist.py) searches it for --where ranges and walks it for --sort. With
    # it, (expert_id, metric, value) must exist too: SQLite prefers covering indexes, and would read
    # every expert's rougeL row to find one expert's (0005).
    __tablename__ = "metrics"
    __table_args__ = (
        Index("ix_metrics_metric_value", "metric", "value", "expert_id"),
        Index("ix_metrics_expert_metric_value", "expert_id", "metric", "value"),
    )

    expert_id: int = Field(sa_column=_fk("experts.id"))
    metric: str = Field(primary_key=True)
    task: str = Field(primary_key=True)
    value: float


class AliasRow(SQLModel, table=True):
    __tablename__ = "aliases"

    name: str = Field(primary_key=True)
    alias: str = Field(primary_key=True)
    expert_id: int = Field(sa_column=_fk("experts.id", primary_key=False))


class LineageEdge(SQLModel, table=True):
    """child -> parent. The parent is kept as a "name@version" string: it may live in another
    catalog (pulled from the Hub) or be removed later, and the edge must still tell the story."""

    __tablename__ = "lineage"
    __table_args__ = (Index("ix_lineage_parent", "parent"),)

    child_id: int = Field(sa_column=_fk("experts.id"))
    parent: str = Field(primary_key=True)
    role: str | None = None  # e.g. "merge", "init", "distill"
    weight: float | None = None  # e.g. the parent's merge coefficient


class BaseMetricRow(SQLModel, table=True):
    # Keyed without the revision on purpose: re-evaluating a base model replaces its score, and
    # base_revision records which revision the score is for.
    __tablename__ = "base_metrics"

    base_model: str = Field(primary_key=True)
    base_revision: str | None = None
    task: str = Field(primary_key=True)
    metric: str = Field(primary_key=True)
    value: float
    evaluated_at: datetime


class TaskRow(SQLModel, table=True):
    __tablename__ = "tasks"

    name: str = Field(primary_key=True)
    description: str | None = None
    tags: list[str] | None = Field(default=None, sa_column=Column(JSON))
    data_source: str | None = None
    sizes: dict[str, int] | None = Field(default=None, sa_column=Column(JSON))  # split -> examples
    created_at: datetime
    category: str | None = None  # qa, summarize, classify, multiple-choice, math, or a user's (0003)


class EvaluationRow(SQLModel, table=True):
    """One evaluation of an expert version (expert_id) or of a base model (base_model), never both, on a
    task's split; evaluating the same subject there again replaces it (0006)."""

    __tablename__ = "evaluations"
    __table_args__ = (
        CheckConstraint("(expert_id IS NULL) <> (base_model IS NULL)", name="ck_evaluations_one_subject"),
        # NULLs are distinct in a unique constraint: the first binds only expert rows, the second only base rows.
        UniqueConstraint("expert_id", "task", "split", name="uq_evaluations_expert"),
        UniqueConstraint("base_model", "task", "split", name="uq_evaluations_base"),
    )

    id: int | None = Field(default=None, primary_key=True)
    expert_id: int | None = Field(
        default=None, sa_column=Column(Integer, ForeignKey("experts.id", ondelete="CASCADE"), nullable=True)
    )
    base_model: str | None = None
    base_revision: str | None = None
    task: str
    split: str
    metric: str  # the headline metric the examples' values are in: accuracy (tasks with options) or rougeL
    n: int
    settings: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))  # limit, max_new_tokens, ...
    created_at: datetime


class EvalExampleRow(SQLModel, table=True):
    __tablename__ = "eval_examples"

    evaluation_id: int = Field(sa_column=_fk("evaluations.id"))
    idx: int = Field(primary_key=True)  # the example's index in the split
    key: str  # 12 hex digits of the sha256 of the example's input
    value: float  # the headline metric on this example, in percent
    metrics: dict[str, float] | None = Field(default=None, sa_column=Column(JSON))  # every metric, in percent
    gold_logprob: float | None = None  # summed log-prob of the gold option; NULL without options
    text: str  # the prediction


# Core handles on the same tables: the catalog queries through these (no per-row ORM objects).
experts = ExpertRow.__table__
expert_names = ExpertName.__table__
expert_tasks = ExpertTask.__table__
expert_tags = ExpertTag.__table__
metrics = MetricRow.__table__
base_metrics = BaseMetricRow.__table__
aliases = AliasRow.__table__
lineage = LineageEdge.__table__
tasks = TaskRow.__table__
evaluations = EvaluationRow.__table__
eval_examples = EvalExampleRow.__table__
