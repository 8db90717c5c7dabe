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

Same rows, planned for a million experts (SQLite's planner, without statistics, cannot know how
many experts a filter matches, nor that names correlate with tasks). Reader.plan counts each
filter's matches in its index (index-only, capped) and picks:
  - few matches (at most sqrt(limit * experts), or DRIVE_MAX): start from the most selective
    filter's index, look each match up, sort;
  - many, in the default order: walk an index already in (name, version) order and stop after
    `limit` rows: (base|kind|task, name, version) for --base/--kind, for --task the primary task's
    index plus the experts having the task as a secondary one, by id (_primary_walk); else
    (name, version) itself, testing each expert;
  - sorted by a metric: walk ix_metrics_metric_value from the best value until `limit` matching
    experts (and ties) are found, then list only those (_metric_walk).
A walk runs under a budget of SQLite VM instructions in proportion to the matches (a progress
handler interrupts it), and gives way to the first plan if it runs out: it never costs much more
than starting from the matches would. The SQL differs from Catalog.list's only in such forms
(IN, EXISTS, a join, a UNION of ordered walks), never in what it selects or how it orders.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

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
MMAP_BYTES = 1 << 32
BUSY_TIMEOUT_S = 30.0  # as db.BUSY_TIMEOUT_MS: a reader waits out a writer's checkpoint
_CHUNK = 500  # ids per IN (...) when fetching a page's tags, metrics, ...; as lookup._CHUNK
# A filter matching at most this many experts always drives the query (each match then costs a
# lookup and its sort key: a few ms); beyond it, walking an index in the listing's order comes first.
DRIVE_MAX = 10_000
# A walk may run WALK_STEPS_PER_MATCH SQLite VM instructions per match of the most selective filter
# before it gives up for driving from that filter. Measured at 1M experts: a walk runs ~6
# instructions/us and ~12 per expert it tests, a drive costs ~3.5 us per match; so 20 per match is
# where they break even, and 10 bounds a failed walk at half the drive's cost.
WALK_STEPS_PER_MATCH = 10
_TICK = 1000  # instructions between budget checks
COUNT_MAX = 20_000  # counting a filter's matches stops here (~1 ms per 10,000 index entries)
_SQL_OPS = {">=": ">=", "<=": "<=", "!=": "!=", "==": "=", "=": "=", ">": ">", "<": "<"}
# sqlite:///relative/path or sqlite:////absolute/path, nothing else (no query string, no escapes,
# no "~", which SQLAlchemy would not expand either): anything unusual takes the normal path.
_URL = re.compile(r"sqlite(?:\+pysqlite)?:///(?P<path>[^?#%~]+)")


class Unavailable(Exception):
    """The SQLite read path could not answer; ask Catalog (the normal path) instead."""


def schema_head() -> str:
    """The newest migration (migrations.SCHEMA_HEAD): the revision a catalog must be at to be read here."""
    from hubtool.registry.migrations import SCHEMA_HEAD

    return SCHEMA_HEAD


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
        # isolation_level=None: no implicit transactions; list() reads in one BEGIN ... COMMIT.
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None
        )
    except sqlite3.Error:
        return None
    try:
        conn.execute("PRAGMA query_only = ON")
        # Reads through a memory map of the (OS-cached) file instead of a read() per page: a listing
        # that looks up 50,000 experts touches ~200,000 pages.
        conn.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
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

    def __enter__(self) -> Self:
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
        # One read transaction, as Catalog.list's connection: the rows and their tags, metrics, ...
        # come from one snapshot even while other processes register or remove experts.
        self._all("BEGIN")
        try:
            steps = self.plan(
                task=task, base=base, kind=kind, tag=tag, where=where, sort=sort, limit=limit, tasks=tasks
            )
            for step in steps:
                rows = self._run(step)
                if rows is not None:
                    return self._records(rows)
            return []  # no steps: nothing can match
        finally:
            if self.conn.in_transaction:
                self._all("COMMIT")  # a damaged file can fail here too: Unavailable, the normal path reports it

    def plan(
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
    ) -> list[Step]:
        """The ways to answer, in the order list() tries them: each but the last has a budget and
        gives up when it runs out (the module docstring says why). The benchmark and the tests
        EXPLAIN them."""
        terms = filters(task, base, kind, tag, where, tasks=tasks)
        if terms is None:
            return []
        keys = where_lang.parse_sort(sort) if sort else []
        countable = [i for i, t in enumerate(terms) if t.count is not None]
        # Listings an index walk answers in order, stopping after `limit` rows: the default order
        # (name, version) and newest/oldest first. Any other order must see every match...
        walkable = limit is not None and (not keys or keys[0].name in ("name", "created"))
        # ...except a metric's, whose top rows ix_metrics_metric_value holds in order.
        by_metric = limit is not None and bool(keys) and keys[0].column is None
        # Driving from a filter's index costs ~1 lookup per match (then a sort); walking in order
        # and testing each expert, ~limit * experts / matches tests if filters and order are
        # independent. Equal at matches = sqrt(limit * experts).
        even = (
            max(DRIVE_MAX, math.isqrt(int(limit) * self._experts())) if walkable and countable else DRIVE_MAX
        )
        # Counted further than `even`: the count also sets a walk's budget (an index-only count of
        # 20,000 entries takes a few ms).
        counts = {i: self._count(terms[i], max(even, COUNT_MAX)) for i in countable}
        drive = min(counts, key=counts.__getitem__) if counts else None
        fallback = self._select(terms, keys, limit, drive)
        if drive is not None and counts[drive] <= (even if walkable else DRIVE_MAX):
            return [fallback]  # few matches: start from them
        # Many matches (or no index to count them): walk, with a budget, since names or metrics may
        # well correlate with the filters (names usually contain the task) and the walk would then
        # read far more than limit * experts / matches rows before finding `limit` of them.
        budget = None if drive is None else WALK_STEPS_PER_MATCH * counts[drive]
        if walkable and not keys and drive is not None and terms[drive].task is not None:
            walk = self._primary_walk(terms, drive, int(limit), budget)
            if walk is not None:
                return [walk, fallback]
        if walkable and drive is not None:
            walk = self._select(terms, keys, limit, None)  # SQLite walks the ORDER BY's index
            return [Step(walk.sql, walk.params, budget=budget), fallback]
        if by_metric:
            return [self._metric_walk(keys[0], terms, int(limit), budget, keys), fallback]
        return [fallback]

    def _select(
        self, terms: list[Term], keys: list[where_lang.SortKey], limit: int | None, drive: int | None
    ) -> Step:
        """The listing's SELECT, driven from terms[drive]'s index (None: let SQLite choose)."""
        params: list[Any] = []
        clauses = []
        source = "experts AS e"
        for i, t in enumerate(terms):
            if i == drive and t.join:
                # CROSS JOIN: SQLite reads the child table's index first, then each expert by rowid
                # (no list of ids built first, as `e.id IN (...)` does: ~25% faster at 50,000 matches)
                table, condition = t.join
                source = f"{table} AS d CROSS JOIN experts AS e ON e.id = d.expert_id"
                clauses.insert(0, condition)
                params[:0] = t.params
                continue
            clauses.append(t.drive if i == drive and t.drive else t.test)
            params.extend(t.params)
        sql = f"SELECT {', '.join('e.' + c for c in COLUMNS)} FROM {source}"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        order = []
        for key in keys:
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
        return Step(sql, params)

    def _primary_walk(self, terms: list[Term], i: int, limit: int, budget: int | None) -> Step | None:
        """`--task X` (or --tasks X,Y) in the default order, many matches: walk ix_experts_task
        (task, name, version) over the experts whose primary task is X (in order: stops after
        `limit`; one walk per task), and add the few that have X as a secondary task only (merged
        experts), found by their ids; the outer ORDER BY merges them all. None when those are too
        many to list by id.

        Walking (name, version) instead would be a bad bet here: names usually start with the task,
        so one task's experts sit together in name order, possibly at the end."""
        names = terms[i].task or []
        marks = ", ".join("?" * len(names))
        # Every expert has a row for its primary task in expert_tasks (register writes them all),
        # so equal counts mean no expert has one of these tasks as a secondary task only.
        primary = self._all(f"SELECT count(*) FROM experts WHERE task IN ({marks})", names)[0][0]
        total = self._all(f"SELECT count(*) FROM expert_tasks WHERE task IN ({marks})", names)[0][0]
        others: list[int] = []
        if total != primary:
            if total - primary > DRIVE_MAX:
                return None
            with_task = {
                r[0] for r in self._all(f"SELECT expert_id FROM expert_tasks WHERE task IN ({marks})", names)
            }
            with_task.difference_update(
                r[0] for r in self._all(f"SELECT id FROM experts WHERE task IN ({marks})", names)
            )
            others = sorted(with_task)
        tests = " AND ".join(t.test for t in terms)
        test_params = [p for t in terms for p in t.params]
        walk = f"SELECT e.id AS id FROM experts AS e WHERE e.task = ? AND {tests} ORDER BY e.name, e.version LIMIT ?"
        walks = " UNION ALL ".join(f"SELECT id FROM ({walk})" for _ in names)
        final = self._select(terms, [], limit, None)
        sql = final.sql.replace(
            " FROM experts AS e WHERE ",
            f" FROM experts AS e WHERE e.id IN ({walks} UNION ALL SELECT value FROM json_each(?)) AND ",
            1,
        )
        params = [p for name in names for p in (name, *test_params, limit)]
        return Step(sql, [*params, json.dumps(others), *final.params], budget=budget)

    def _metric_walk(
        self,
        key: where_lang.SortKey,
        terms: list[Term],
        limit: int,
        budget: int | None,
        keys: list[where_lang.SortKey],
    ) -> Step:
        """Walk the sort metric's index from the best value, keeping matching experts, until `limit`
        of them and every expert tied with the last are found. They hold the page: any other
        match's best value is worse. Then list just those (the final SELECT, with the full order)."""
        # CROSS JOIN keeps metrics outside, read in index order. An expert's first row is its best
        # value (max descending, min ascending), the value where.order_by sorts it by.
        walk = (
            "SELECT m.value, m.expert_id FROM metrics AS m CROSS JOIN experts AS e ON e.id = m.expert_id "
            f"WHERE m.metric = ?{''.join(' AND ' + t.test for t in terms)} "
            f"ORDER BY m.value {'DESC' if key.desc else 'ASC'}"
        )
        final = self._select([Term("e.id IN (SELECT value FROM json_each(?))", ["[]"])], keys, limit, None)
        return Step(
            final.sql,
            final.params,
            budget=budget,
            walk=walk,
            walk_params=[key.name, *(p for t in terms for p in t.params)],
            limit=limit,
        )

    def _run(self, step: Step) -> list[tuple[Any, ...]] | None:
        """Run one step; None when its budget ran out, or (a metric walk) too few experts have the metric."""
        spent = [0]

        def tick() -> int:  # called every _TICK virtual-machine instructions; non-zero interrupts
            spent[0] += _TICK
            return int(step.budget is not None and spent[0] > step.budget)

        self.conn.set_progress_handler(tick, _TICK)
        try:
            if step.walk is None:
                return self.conn.execute(step.sql, step.params).fetchall()
            found: dict[int, None] = {}  # expert ids in walk order
            last = None
            for value, expert_id in self.conn.execute(step.walk, step.walk_params):
                if len(found) >= step.limit and value != last:
                    break  # past the ties of the limit-th expert
                if expert_id not in found:
                    found[expert_id] = None
                    last = value
            else:
                if len(found) < step.limit:
                    return None  # the page ends with experts lacking the metric: the full query lists them
            self.conn.set_progress_handler(None, 0)
            return self.conn.execute(step.sql, [json.dumps(list(found)), *step.params[1:]]).fetchall()
        except sqlite3.OperationalError as err:
            if "interrupt" in str(err):
                return None
            raise Unavailable(str(err)) from err
        except sqlite3.Error as err:
            raise Unavailable(str(err)) from err
        finally:
            self.conn.set_progress_handler(None, 0)

    def _count(self, term: Term, cap: int) -> int:
        """How many rows the term's index holds for it, counting no further than cap + 1."""
        assert term.count is not None
        return self._all(f"SELECT count(*) FROM ({term.count} LIMIT ?)", [*term.params, cap + 1])[0][0]

    def _experts(self) -> int:
        return self._all("SELECT coalesce(max(id), 0) FROM experts")[0][0]  # one index probe

    def _records(self, rows: list[tuple[Any, ...]]) -> list[ExpertRecord]:
        """Rows -> records with their tasks, tags, metrics and aliases: as lookup.records, one query
        per table and chunk of ids, never one per row."""
        by_id: dict[int, ExpertRecord] = {}
        for row in rows:
            values = dict(zip(COLUMNS, row))
            # As the tables' types read them: SQLModel's UTCDateTime (SQLite keeps UTC without an
            # offset; the value comes back aware, in UTC), JSON by json.loads.
            created = datetime.fromisoformat(values["created_at"])
            values["created_at"] = (
                created.replace(tzinfo=UTC)
                if created.utcoffset() is None
                else created.astimezone(UTC)
            )
            config = values["config"]
            try:
                values["config"] = (json.loads(config) if config is not None else None) or {}
            except ValueError as err:  # edited or damaged: the normal path names the catalog and the row
                raise Unavailable(f"experts.config: {err}") from None
            by_id[values["id"]] = ExpertRecord(**values, tasks=[])
        ids = list(by_id)
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            for eid, name in self._all(
                f"SELECT expert_id, task FROM expert_tasks WHERE expert_id IN ({marks})", chunk
            ):
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


@dataclass
class Step:
    """One SELECT of the listing; `budget` (VM instructions) bounds it, None: runs to the end.
    With `walk`: first the metric walk (walk_params), whose expert ids replace params[0]."""

    sql: str
    params: list[Any]
    budget: int | None = None
    walk: str | None = None
    walk_params: list[Any] = field(default_factory=list)
    limit: int = 0


@dataclass
class Term:
    """One condition of the listing, in the forms the planner chooses between (SQL on `experts AS e`,
    the same parameters for each form):
      test:  checks one expert (a correlated EXISTS on the child table's primary key, or a column
             comparison): what an index walk in the listing's order evaluates per row;
      drive: the same condition as `e.id IN (a search of the child table's filter index)`, so SQLite
             starts from the matches (None: `test` already uses an index by itself, e.g. base);
      count: a SELECT of the matching index entries, to count them (None: no index to count on);
      join:  the better drive when the child table has one row per matching expert."""

    test: str
    params: list[Any] = field(default_factory=list)
    drive: str | None = None
    count: str | None = None
    join: tuple[str, str] | None = None  # (child table, condition on it as `d`): drive as a join
    task: list[str] | None = None  # the condition is "has one of these tasks": _primary_walk applies


def _child(table: str, column: str, op: str, value: Any, *, negate: bool = False) -> Term:
    """An expert-has-a-child-row condition on expert_tasks / expert_tags."""
    if negate:  # expert_id is never NULL, so NOT EXISTS and NOT IN agree; no index finds "lacks"
        return Term(f"NOT EXISTS (SELECT 1 FROM {table} WHERE expert_id = e.id AND {column} {op})", value)
    return Term(
        test=f"EXISTS (SELECT 1 FROM {table} WHERE expert_id = e.id AND {column} {op})",
        params=value,
        drive=f"e.id IN (SELECT expert_id FROM {table} WHERE {column} {op})",
        count=f"SELECT 1 FROM {table} WHERE {column} {op}",
        # (expert_id, column) is the table's key: one row per expert for `= ?`, so a join lists no
        # expert twice (IN (...) of several values, or metrics under several tasks, could)
        join=(table, f"d.{column} {op}") if op == "= ?" and table != "metrics" else None,
    )


def filters(
    task: str | None,
    base: str | None,
    kind: str | None,
    tag: str | None,
    where: str | None,
    *,
    tasks: Sequence[str] | None = None,
) -> list[Term] | None:
    """The conditions of lookup.filters as Terms; None when nothing can match (an empty `tasks`)."""
    terms: list[Term] = []
    if task is not None:
        terms.append(_child("expert_tasks", "task", "= ?", [task]))
        terms[-1].task = [task]
    if tasks is not None:
        if not tasks:
            return None
        terms.append(_child("expert_tasks", "task", f"IN ({', '.join('?' * len(tasks))})", list(tasks)))
        terms[-1].task = list(dict.fromkeys(tasks))
    if base is not None:  # ix_experts_base_model (base_model, name, version)
        terms.append(Term("e.base_model = ?", [base], count="SELECT 1 FROM experts WHERE base_model = ?"))
    if kind is not None:
        from hubtool.format.header import LEGACY_KINDS  # stdlib only

        kind = LEGACY_KINDS.get(kind, kind)  # "full-delta" still finds "full"
        terms.append(Term("e.kind = ?", [kind], count="SELECT 1 FROM experts WHERE kind = ?"))
    if tag is not None:
        terms.append(_child("expert_tags", "tag", "= ?", [tag]))
    for c in where_lang.parse_where(where) if where else ():
        op = _SQL_OPS[c.op]
        if c.name == "task":  # any of the expert's tasks
            terms.append(_child("expert_tasks", "task", "= ?", [c.value], negate=c.op == "!="))
            terms[-1].task = None if c.op == "!=" else [str(c.value)]
        elif c.is_metric:  # the metric under any task: ix_metrics_metric_value (metric, value, expert_id)
            terms.append(_child("metrics", "metric", f"= ? AND value {op} ?", [c.name, c.value]))
        else:
            column = where_lang.NUMERIC_FIELDS.get(c.name) or where_lang.TEXT_FIELDS[c.name]
            terms.append(Term(f"e.{column} {op} ?", [c.value]))
    return terms
