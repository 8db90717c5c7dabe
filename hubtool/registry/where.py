"""The small, safe filter and sort language of `hub list --where ... --sort ...`.

    --where 'rougeL>=30, keep_ratio<0.1 and kind=sparse'
    --sort -rougeL            (a "-" prefix sorts descending)

A comparison is `NAME OP VALUE` with OP one of >= <= > < = != (== also accepted). NAME is a catalog
field (FIELDS below) or else a metric name, looked up in the metrics table under any task. Nothing
is evaluated: every comparison becomes a bound SQL parameter.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, exists, func, select
from sqlalchemy.sql.expression import UnaryExpression

from hubtool.errors import HubError
from hubtool.registry.tables import expert_tasks, experts, metrics

NUMERIC_FIELDS = {
    "keep_ratio": experts.c.keep_ratio,
    "nnz": experts.c.nnz,
    "bytes": experts.c.bytes,
    "version": experts.c.version,
}
TEXT_FIELDS = {"name": experts.c.name, "kind": experts.c.kind, "base": experts.c.base_model}
# `task` matches any of an expert's tasks (expert_tasks), like the --task filter.
FIELDS = sorted([*NUMERIC_FIELDS, *TEXT_FIELDS, "task"])
SORT_ONLY = {"created": experts.c.created_at}

OPS: dict[str, Callable[[Any, Any], Any]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "!=": operator.ne,
    "==": operator.eq,
    "=": operator.eq,
    ">": operator.gt,
    "<": operator.lt,
}
_COMPARISON = re.compile(r"^([A-Za-z_][\w.:/-]*)\s*(>=|<=|!=|==|=|>|<)\s*(\S.*)$")
_SEPARATOR = re.compile(r"\s*,\s*|\s+and\s+", re.IGNORECASE)
_EXPECTED = "comparisons like 'rougeL>=30' or 'kind=sparse' joined by ',' or 'and'"
# Bounds on what one expression may ask of the database: SQLite refuses expression trees deeper than
# 1000 and ORDER BY lists longer than 64 terms; no real filter comes near these.
MAX_LENGTH = 4096
MAX_TERMS = 64
MAX_SORT_KEYS = 16


def _shown(expr: str) -> str:
    return repr(expr) if len(expr) <= 80 else repr(expr[:77] + "...")


@dataclass(frozen=True)
class Comparison:
    name: str
    op: str
    value: str | float

    @property
    def is_metric(self) -> bool:
        return self.name not in FIELDS


def _number(text: str, expr: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise HubError(f"--where {_shown(expr)}: {name} needs a number, got {text!r}")
    return value


def parse_where(expr: str) -> list[Comparison]:
    if len(expr) > MAX_LENGTH:
        raise HubError(f"--where {_shown(expr)}: {len(expr)} characters, more than the {MAX_LENGTH} allowed")
    parts = [p.strip() for p in _SEPARATOR.split(expr.strip())]
    if not expr.strip() or not all(parts):
        raise HubError(f"--where {_shown(expr)}: expected {_EXPECTED}")
    if len(parts) > MAX_TERMS:
        raise HubError(f"--where {_shown(expr)}: {len(parts)} comparisons, more than the {MAX_TERMS} allowed")
    out = []
    for part in parts:
        m = _COMPARISON.match(part)
        if not m:
            raise HubError(f"--where {_shown(expr)}: can't read {part!r}; expected {_EXPECTED}")
        name, op, raw = m.group(1), m.group(2), m.group(3).strip()
        if name in TEXT_FIELDS or name == "task":
            if op not in ("=", "==", "!="):
                raise HubError(f"--where {_shown(expr)}: {name} is text; compare it with = or !=, not {op}")
            out.append(Comparison(name, op, raw.strip("'\"")))
        else:
            out.append(Comparison(name, op, _number(raw, expr, name)))
    return out


def where_clause(c: Comparison) -> ColumnElement[bool]:
    compare = OPS[c.op]
    if c.name == "task":
        has_task = exists().where(expert_tasks.c.expert_id == experts.c.id, expert_tasks.c.task == c.value)
        return has_task if c.op != "!=" else ~has_task
    if c.is_metric:
        return exists().where(
            metrics.c.expert_id == experts.c.id,
            metrics.c.metric == c.name,
            compare(metrics.c.value, c.value),
        )
    column = NUMERIC_FIELDS.get(c.name, TEXT_FIELDS.get(c.name))
    return compare(column, c.value)


def order_by(sort: str) -> list[UnaryExpression[Any]]:
    """`-rougeL,name` -> ORDER BY clauses; experts lacking a metric sort last either way."""
    out: list[UnaryExpression[Any]] = []
    keys = sort.split(",")
    if len(sort) > MAX_LENGTH or len(keys) > MAX_SORT_KEYS:
        raise HubError(f"--sort {_shown(sort)}: expected at most {MAX_SORT_KEYS} keys")
    for key in (k.strip() for k in keys):
        desc = key.startswith("-")
        name = key.lstrip("-+")
        if not re.fullmatch(r"[A-Za-z_][\w.:/-]*", name):
            raise HubError(
                f"--sort {_shown(sort)}: expected a field ({', '.join(FIELDS)}, created) or a "
                f"metric name, '-' in front for descending; got {key!r}"
            )
        if name == "task":
            column: Any = experts.c.task  # the primary task
        elif name in NUMERIC_FIELDS or name in TEXT_FIELDS or name in SORT_ONLY:
            column = {**NUMERIC_FIELDS, **TEXT_FIELDS, **SORT_ONLY}[name]
        else:
            # An expert may have the metric under several tasks: sort by its highest value when
            # descending, its lowest when ascending. NULL (sorted last) when never measured.
            column = (
                select((func.max if desc else func.min)(metrics.c.value))
                .where(metrics.c.expert_id == experts.c.id, metrics.c.metric == name)
                .scalar_subquery()
            )
        out.append((column.desc() if desc else column.asc()).nulls_last())
    return out
