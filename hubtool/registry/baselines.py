"""The base model's own scores (`hub eval --base M --task T`) and an expert's gain over them.

One row of ``base_metrics`` per (base model, task, metric): measuring a metric again replaces it.
An expert's gain on a metric is its value minus the base model's, for the (task, metric) pairs both
have; the sign is raw (for a loss, a negative gain is the improvement).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection

from hubtool.registry.tables import base_metrics


def put(
    conn: Connection,
    base_model: str,
    task: str,
    values: Mapping[str, float],
    revision: str | None,
    evaluated_at: datetime,
) -> None:
    """Insert or replace the given metrics; other metrics of the same base model and task stay."""
    # Delete-then-insert rather than a dialect's upsert: the same statements work on SQLite and Postgres.
    conn.execute(
        delete(base_metrics).where(
            base_metrics.c.base_model == base_model,
            base_metrics.c.task == task,
            base_metrics.c.metric.in_(list(values)),
        )
    )
    conn.execute(
        insert(base_metrics),
        [
            {
                "base_model": base_model,
                "base_revision": revision,
                "task": task,
                "metric": metric,
                "value": value,
                "evaluated_at": evaluated_at,
            }
            for metric, value in values.items()
        ],
    )


def fetch(conn: Connection, base_model: str, tasks: Iterable[str]) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} of one base model on the given tasks (one query, on the key's prefix)."""
    q = (
        select(base_metrics.c.task, base_metrics.c.metric, base_metrics.c.value)
        .where(base_metrics.c.base_model == base_model, base_metrics.c.task.in_(list(tasks)))
        .order_by(base_metrics.c.task, base_metrics.c.metric)
    )
    out: dict[str, dict[str, float]] = {}
    for task, metric, value in conn.execute(q):
        out.setdefault(task, {})[metric] = value
    return out


def gains(
    expert: Mapping[str, Mapping[str, float]], base: Mapping[str, Mapping[str, float]]
) -> dict[str, dict[str, float]]:
    """{task: {metric: expert - base}} where both have the metric; tasks with none are left out."""
    out: dict[str, dict[str, float]] = {}
    for task, by_metric in expert.items():
        shared = {m: v - base[task][m] for m, v in by_metric.items() if m in base.get(task, {})}
        if shared:
            out[task] = shared
    return out
