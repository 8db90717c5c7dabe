"""The read path of `hub list` on a SQLite catalog: the stdlib `sqlite3` module, no SQLAlchemy.

Importing SQLAlchemy and SQLModel costs ~0.35 s, ten times the query. `hub list` only reads, so on a
SQLite catalog that is already at the newest schema it queries through `sqlite3` and builds the same
ExpertRecords as Catalog.list (tests/test_list_fast.py runs both on one catalog and compares them).

    reader = open_reader(url)          # None: use Catalog(url) instead
    if reader is not None:
        rows = reader.list(task="qa", where="rougeL>=30", sort="-rougeL", limit=25)

open_reader gives None (the caller takes the normal path) for anything that is not a plain SQLite
file at SCHEMA_HEAD: another database (PostgreSQL), a missing file (Catalog creates it), a catalog
that needs a migration, a file that is not a catalog. Every one of these then fails or succeeds
exactly as it would without this module. A database error while querying raises Unavailable, and
the caller retries on the normal path, so errors are reported in one place (db.py, catalog.py).

The SQL is the same as Catalog.list's, except for two rewrites that give the same rows and let
SQLite search an index instead of testing every expert: `--where task=X` is an IN over
expert_tasks (not a correlated EXISTS) and `--where rougeL>=30` an IN over metrics' (metric, value)
index. tests/test_list_fast.py checks both the answers and the plans (EXPLAIN QUERY PLAN).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from hubtool import paths
from hubtool.registry import tasks as task_rows
from hubtool.registry import where as where_lang
from hubtool.registry.records import ExpertRecord

# Columns of `experts`, in ExpertRecord's field names.
COLUMNS = (
    "id", "name", "version", "kind", "task", "base_model", "base_revision", "targets", "keep_ratio",
    "nnz", "bytes", "sha256", "blob", "created_at", "config", "description", "hub_repo", "hub_commit",
    "value_dtype",
)  # fmt: skip
BUSY_TIMEOUT_S = 30.0  # as db.BUSY_TIMEOUT_MS: a reader waits out a writer's checkpoint
_CHUNK = 500  # ids per IN (...) when fetching a page's tags, metrics, ...; as lookup._CHUNK
_SQL_OPS = {">=": ">=", "<=": "<=", "!=": "!=", "==": "=", "=": "=", ">": ">", "<": "<"}
_MIGRATIONS = Path(__file__).parent / "migrations" / "versions"
# sqlite:///relative/path or sqlite:////absolute/path, nothing else (no query string, no escapes,
# no "~", which SQLAlchemy would not expand either): anything unusual takes the normal path.
_URL = re.compile(r"sqlite(?:\+pysqlite)?:///(?P<path>[^?#%~]+)")


class Unavailable(Exception):
    """The SQLite read path could not answer; ask Catalog (the normal path) instead."""


def schema_head() -> str:
    """The newest migration, from the scripts' file names ("0005_list_indexes.py" -> "0005"), without
    importing db.py (SQLAlchemy). tests/test_list_fast.py checks it equals db.SCHEMA_HEAD."""
    revisions = [n[:4] for n in os.listdir(_MIGRATIONS) if re.fullmatch(r"\d{4}_\w+\.py", n)]
    return max(revisions)


def sqlite_path(url: str) -> Path | None:
    """The file of a plain SQLite URL, None for any other URL."""
    m = _URL.fullmatch(url)
    if m is None or m["path"] == ":memory:":
        return None
    return Path(m["path"])


def open_reader(url: str | None) -> Reader | None:
    """A Reader on the catalog at `url` (default HUB_CATALOG or $HUB_HOME/registry.db), or None
    when the normal path must handle it (see the module docstring)."""
    path = sqlite_path(url or paths.default_catalog_url())
    if path is None or not path.is_file():
        return None
    try:
        # mode=rw: never create a file (Catalog does that, with the schema); the query_only pragma
        # makes sure this connection cannot change anything.
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error:
        return None
    try:
        conn.execute("PRAGMA query_only = ON")
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.Error:
        conn.close()
        return None
    if revision != [(schema_head(),)]:
        conn.close()
        return None  # a fresh, old (migration needed) or newer catalog: the normal path decides
    return Reader(conn)


class Reader:
    """Catalog.list and Catalog.tasks_for on one sqlite3 connection (all `hub list` needs)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as err:
            raise Unavailable(str(err)) from err

    # ---- Catalog.list ------------------------------------------------------------------------

    def list(
        self,
        *,
        task: str | None = None,
        base: str | None = None,
        kind: str | None = None,
        tag: str | None = None,
        where: str | None = None,
        sort: str | None = None,
        limit: int | None = None,
        tasks: Sequence[str] | None = None,
    ) -> list[ExpertRecord]:
        """What Catalog.list returns for the same arguments."""
        sql, params = self.query(
            task=task, base=base, kind=kind, tag=tag, where=where, sort=sort, limit=limit, tasks=tasks
        )
        if sql is None:
            return []
        rows = self._all(sql, params)
        return self._records(rows)

    def query(
        self,
        *,
        task: str | None = None,
        base: str | None = None,
        kind: str | None = None,
        tag: str | None = None,
        where: str | None = None,
        sort: str | None = None,
        limit: int | None = None,
        tasks: Sequence[str] | None = None,
    ) -> tuple[str | None, list[Any]]:
        """The SELECT list() runs and its parameters (None: nothing can match). The benchmark and the
        tests EXPLAIN it."""
        clauses, params = filters(task, base, kind, tag, where, tasks=tasks)
        if clauses is None:
            return None, []
        sql = f"SELECT {', '.join('e.' + c for c in COLUMNS)} FROM experts AS e"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        order = []
        for key in where_lang.parse_sort(sort) if sort else ():
            if key.column is not None:
                term = f"e.{key.column}"
            else:  # an expert's highest value when descending, its lowest ascending (where.order_by)
                term = f"(SELECT {'max' if key.desc else 'min'}(value) FROM metrics WHERE expert_id = e.id AND metric = ?)"
                params.append(key.name)
            order.append(f"{term} {'DESC' if key.desc else 'ASC'} NULLS LAST")
        sql += " ORDER BY " + ", ".join([*order, "e.name", "e.version"])
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return sql, params

    def _records(self, rows: list[tuple[Any, ...]]) -> list[ExpertRecord]:
        """Rows -> records with their tasks, tags, metrics and aliases: as lookup.records, one query
        per table and chunk of ids, never one per row."""
        by_id: dict[int, ExpertRecord] = {}
        for row in rows:
            values = dict(zip(COLUMNS, row))
            # As SQLAlchemy's SQLite types read them: DATETIME by fromisoformat, JSON by json.loads.
            values["created_at"] = datetime.fromisoformat(values["created_at"])
            config = values["config"]
            values["config"] = (json.loads(config) if config is not None else None) or {}
            by_id[values["id"]] = ExpertRecord(**values, tasks=[])
        ids = list(by_id)
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            for eid, name in self._all(f"SELECT expert_id, task FROM expert_tasks WHERE expert_id IN ({marks})", chunk):
                by_id[eid].tasks.append(name)
            sql = f"SELECT expert_id, tag FROM expert_tags WHERE expert_id IN ({marks}) ORDER BY tag"
            for eid, tag in self._all(sql, chunk):
                by_id[eid].tags.append(tag)
            sql = (
                f"SELECT expert_id, task, metric, value FROM metrics WHERE expert_id IN ({marks}) "
                "ORDER BY task, metric"
            )
            for eid, name, metric, value in self._all(sql, chunk):
                by_id[eid].metrics.setdefault(name, {})[metric] = value
            sql = f"SELECT expert_id, alias FROM aliases WHERE expert_id IN ({marks}) ORDER BY alias"
            for eid, alias in self._all(sql, chunk):
                by_id[eid].aliases.append(alias)
        for rec in by_id.values():  # primary task first, the rest sorted
            rec.tasks.sort(key=lambda t: (t != rec.task, t))
        return [by_id[row[0]] for row in rows]

    # ---- Catalog.tasks_for (what --tasks needs) ------------------------------------------------

    def tasks_for(self, spec: str, *, with_experts: bool = True) -> list[str]:
        """What Catalog.tasks_for returns (registry/tasks.py decides; this only reads)."""
        from hubtool.errors import NotFoundError

        spec = spec.strip()
        categories = task_rows.merge_categories(self._all("SELECT name, category FROM tasks"))
        if not spec:
            raise NotFoundError("task or category '': expected a task name or a category")
        return task_rows.pick(spec, categories, self.expert_tasks(), with_experts=with_experts)

    def expert_tasks(self) -> set[str]:
        """The distinct tasks of expert_tasks, hopping along its (task, expert_id) index: one search
        per distinct task instead of reading every row (20 searches, not 1,000,000 rows)."""
        sql = (
            "WITH RECURSIVE t(task) AS (SELECT min(task) FROM expert_tasks UNION ALL "
            "SELECT (SELECT min(task) FROM expert_tasks WHERE task > t.task) FROM t WHERE t.task IS NOT NULL) "
            "SELECT task FROM t WHERE task IS NOT NULL"
        )
        return {name for (name,) in self._all(sql)}


def filters(
    task: str | None,
    base: str | None,
    kind: str | None,
    tag: str | None,
    where: str | None,
    *,
    tasks: Sequence[str] | None = None,
) -> tuple[list[str] | None, list[Any]]:
    """WHERE clauses (SQL text on `experts AS e`) and their parameters, as lookup.filters; None for
    clauses when nothing can match (an empty `tasks`)."""
    clauses: list[str] = []
    params: list[Any] = []
    if task is not None:
        clauses.append("e.id IN (SELECT expert_id FROM expert_tasks WHERE task = ?)")
        params.append(task)
    if tasks is not None:
        if not tasks:
            return None, []
        clauses.append(f"e.id IN (SELECT expert_id FROM expert_tasks WHERE task IN ({', '.join('?' * len(tasks))}))")
        params.extend(tasks)
    if base is not None:
        clauses.append("e.base_model = ?")
        params.append(base)
    if kind is not None:
        from hubtool.format.header import LEGACY_KINDS  # stdlib only

        clauses.append("e.kind = ?")
        params.append(LEGACY_KINDS.get(kind, kind))  # "full-delta" still finds "full"
    if tag is not None:
        clauses.append("e.id IN (SELECT expert_id FROM expert_tags WHERE tag = ?)")
        params.append(tag)
    for c in where_lang.parse_where(where) if where else ():
        op = _SQL_OPS[c.op]
        if c.name == "task":  # any of the expert's tasks; expert_id is never NULL, so NOT IN is NOT EXISTS
            clauses.append(f"e.id {'NOT IN' if c.op == '!=' else 'IN'} (SELECT expert_id FROM expert_tasks WHERE task = ?)")
        elif c.is_metric:  # the metric under any task
            clauses.append(f"e.id IN (SELECT expert_id FROM metrics WHERE metric = ? AND value {op} ?)")
            params.append(c.name)
        else:
            column = where_lang.NUMERIC_FIELDS.get(c.name) or where_lang.TEXT_FIELDS[c.name]
            clauses.append(f"e.{column} {op} ?")
        params.append(c.value)
    return clauses, params
