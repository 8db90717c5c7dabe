"""The small, safe filter and sort language of `hub list --where ... --sort ...`.

    --where 'rougeL>=30, keep_ratio<0.1 and kind=sparse'
    --sort -rougeL            (a "-" prefix sorts descending)

A comparison is `NAME OP VALUE` with OP one of >= <= > < = != (== also accepted). NAME is a catalog
field (FIELDS below) or else a metric name, looked up in the metrics table under any task. Nothing
is evaluated: every comparison becomes a bound SQL parameter.

Parsing (parse_where, parse_sort) is stdlib only: the SQLite read path (fastlist.py) renders the same
comparisons as SQL text without importing SQLAlchemy. where_clause/order_by build SQLAlchemy Core
expressions for Catalog.list and import SQLAlchemy when first called.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hubtool.errors import HubError, shown

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement
    from sqlalchemy.sql.expression import UnaryExpression

# field name in the language -> column of `experts`
NUMERIC_FIELDS = {"keep_ratio": "keep_ratio", "nnz": "nnz", "bytes": "bytes", "version": "version"}
TEXT_FIELDS = {"name": "name", "kind": "kind", "base": "base_model"}
# `task` matches any of an expert's tasks (expert_tasks), like the --task filter.
FIELDS = sorted([*NUMERIC_FIELDS, *TEXT_FIELDS, "task"])
SORT_ONLY = {"created": "created_at"}
# Sorting by `task` means the primary task (experts.task); every other key is a field or a metric.
SORT_COLUMNS = {**NUMERIC_FIELDS, **TEXT_FIELDS, **SORT_ONLY, "task": "task"}

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
        raise HubError(f"--where {shown(expr)}: {name} needs a number, got {text!r}")
    return value


def parse_where(expr: str) -> list[Comparison]:
    if len(expr) > MAX_LENGTH:
        raise HubError(f"--where {shown(expr)}: {len(expr)} characters, more than the {MAX_LENGTH} allowed")
    parts = [p.strip() for p in _SEPARATOR.split(expr.strip())]
    if not expr.strip() or not all(parts):
        raise HubError(f"--where {shown(expr)}: expected {_EXPECTED}")
    if len(parts) > MAX_TERMS:
        raise HubError(f"--where {shown(expr)}: {len(parts)} comparisons, more than the {MAX_TERMS} allowed")
    out = []
    for part in parts:
        m = _COMPARISON.match(part)
        if not m:
            raise HubError(f"--where {shown(expr)}: can't read {part!r}; expected {_EXPECTED}")
        name, op, raw = m.group(1), m.group(2), m.group(3).strip()
        if name in TEXT_FIELDS or name == "task":
            if op not in ("=", "==", "!="):
                raise HubError(f"--where {shown(expr)}: {name} is text; compare it with = or !=, not {op}")
            out.append(Comparison(name, op, raw.strip("'\"")))
        else:
            out.append(Comparison(name, op, _number(raw, expr, name)))
    return out


@dataclass(frozen=True)
class SortKey:
    name: str
    desc: bool

    @property
    def column(self) -> str | None:
        """The experts column to sort by; None for a metric."""
        return SORT_COLUMNS.get(self.name)


def parse_sort(sort: str) -> list[SortKey]:
    """`-rougeL,name` -> [SortKey("rougeL", desc=True), SortKey("name", desc=False)]."""
    keys = sort.split(",")
    if len(sort) > MAX_LENGTH or len(keys) > MAX_SORT_KEYS:
        raise HubError(f"--sort {shown(sort)}: expected at most {MAX_SORT_KEYS} keys")
    out = []
    for key in (k.strip() for k in keys):
        name = key.lstrip("-+")
        if not re.fullmatch(r"[A-Za-z_][\w.:/-]*", name):
            raise HubError(
                f"--sort {shown(sort)}: expected a field ({', '.join(FIELDS)}, created) or a "
                f"metric name, '-' in front for descending; got {key!r}"
            )
        out.append(SortKey(name, key.startswith("-")))
    return out


def where_clause(c: Comparison) -> ColumnElement[bool]:
    from sqlalchemy import exists

    from hubtool.registry.tables import expert_tasks, experts, metrics

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
    column = experts.c[NUMERIC_FIELDS.get(c.name) or TEXT_FIELDS[c.name]]
    return compare(column, c.value)


def order_by(sort: str) -> list[UnaryExpression[Any]]:
    """`-rougeL,name` -> ORDER BY clauses; experts lacking a metric sort last either way."""
    from sqlalchemy import func, select

    from hubtool.registry.tables import experts, metrics

    out: list[UnaryExpression[Any]] = []
    for key in parse_sort(sort):
        if key.column is not None:
            column: Any = experts.c[key.column]
        else:
            # An expert may have the metric under several tasks: sort by its highest value when
            # descending, its lowest when ascending. NULL (sorted last) when never measured.
            column = (
                select((func.max if key.desc else func.min)(metrics.c.value))
                .where(metrics.c.expert_id == experts.c.id, metrics.c.metric == key.name)
                .scalar_subquery()
            )
        out.append((column.desc() if key.desc else column.asc()).nulls_last())
    return out
