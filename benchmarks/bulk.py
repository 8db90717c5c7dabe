"""Fill a catalog with synthetic expert rows, fast, for the `hub list` benchmark.

Rows point at fake blobs (a made-up sha256; no file exists), so `verify()` on such a catalog reports
every row missing. Never use this on a real catalog: it is a benchmark fixture, kept here in benchmarks/
(list_latency.py and the tests import it), not in the package.

On SQLite the rows go in through the stdlib sqlite3 module in one transaction, with the indexes
dropped first and rebuilt after (sorting once beats a million random B-tree inserts): 1,000,000
experts (5 M rows in all) in about a minute. Other databases get SQLAlchemy executemany in chunks.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from hubtool.errors import HubError
from hubtool.registry.blobs import blob_location
from hubtool.registry.fastlist import sqlite_path

N_TASKS = 20
VERSIONS = 4  # experts per name
KINDS = ("sparse", "block-sparse", "lora", "merged")
BASES = ("smollm2-135m", "HuggingFaceTB/SmolLM2-360M-Instruct")
EXPERT_COLUMNS = (
    "id", "name", "version", "kind", "task", "base_model", "base_revision", "targets", "keep_ratio", "nnz",
    "bytes", "sha256", "blob", "created_at", "config", "description", "hub_repo", "hub_commit",
)  # fmt: skip
_CHUNK = 50_000  # rows per executemany on the SQLAlchemy path
_T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _name(i: int) -> tuple[str, str]:
    task = f"task{i % N_TASKS}"
    return task, f"{task}-e{i // (N_TASKS * VERSIONS)}"


def _experts(n: int) -> Iterator[dict[str, Any]]:
    """Expert i (1..n): task i mod 20, name {task}-e{i // 80}, so each name has 4 versions."""
    versions: dict[str, int] = {}
    for i in range(1, n + 1):
        task, name = _name(i)
        version = versions[name] = versions.get(name, 0) + 1
        sha = hashlib.sha256(f"synthetic {i}".encode()).hexdigest()
        yield {
            "id": i,
            "name": name,
            "version": version,
            "kind": KINDS[(i // 7) % len(KINDS)],
            "task": task,
            "base_model": BASES[(i // N_TASKS) % len(BASES)],
            "base_revision": None,
            "targets": "qkv",
            "keep_ratio": (i % 50 + 1) / 1000,
            "nnz": 1000 + i % 9000,
            "bytes": 4000 + i % 36000,
            "sha256": sha,
            "blob": blob_location(sha),
            "created_at": _T0 + timedelta(seconds=i),
            "config": {"seed": i},
            "description": None,
            "hub_repo": None,
            "hub_commit": None,
        }


def _children(n: int) -> dict[str, Iterator[dict[str, Any]]]:
    """Rows of the child tables: one task, two metrics (rougeL 0-49.9995, loss 1-2.99998) and a tag each."""
    return {
        "expert_tasks": ({"expert_id": i, "task": _name(i)[0]} for i in range(1, n + 1)),
        "metrics": (
            row
            for i in range(1, n + 1)
            for row in (
                # 100,000 distinct values each, scattered over the ids (as real scores: few ties)
                {
                    "expert_id": i,
                    "task": _name(i)[0],
                    "metric": "rougeL",
                    "value": (i * 7919) % 100_000 / 2000,
                },
                {
                    "expert_id": i,
                    "task": _name(i)[0],
                    "metric": "loss",
                    "value": 1 + (i * 104729) % 100_000 / 50_000,
                },
            )
        ),
        "expert_tags": ({"expert_id": i, "tag": "synthetic"} for i in range(1, n + 1)),
    }


def _names(n: int) -> list[dict[str, Any]]:
    last: dict[str, int] = {}
    for i in range(1, n + 1):
        name = _name(i)[1]
        last[name] = last.get(name, 0) + 1
    return [{"name": k, "last_version": v} for k, v in last.items()]


def fill_synthetic(url: str, n: int) -> None:
    """Insert n expert versions into an empty catalog, spread over N_TASKS tasks, each with two
    metrics and a tag, and alias best -> expert 1; all in one transaction."""
    from hubtool.registry.catalog import Catalog

    Catalog(url).close()  # creates or upgrades the schema
    path = sqlite_path(url)
    if path is not None:
        _fill_sqlite(url, str(path), n)
    else:
        _fill_sqlalchemy(url, n)


def _fill_sqlite(url: str, path: str, n: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")  # a throw-away benchmark catalog: speed over durability
        conn.execute("PRAGMA cache_size = -262144")  # 256 MiB for the index builds
        conn.execute("BEGIN IMMEDIATE")
        if conn.execute("SELECT count(*) FROM experts").fetchone()[0]:
            raise HubError(f"catalog {url}: fill_synthetic needs an empty catalog")
        tables = ("experts", "expert_tasks", "metrics", "expert_tags", "expert_names", "aliases")
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
            f"AND tbl_name IN ({', '.join('?' * len(tables))})",
            tables,
        ).fetchall()
        for name, _sql in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        marks = ", ".join("?" * len(EXPERT_COLUMNS))
        conn.executemany(
            f"INSERT INTO experts ({', '.join(EXPERT_COLUMNS)}) VALUES ({marks})",
            (
                tuple(
                    row[c].strftime("%Y-%m-%d %H:%M:%S.%f")
                    if c == "created_at"  # SQLAlchemy's format
                    else json.dumps(row[c])
                    if c == "config"
                    else row[c]
                    for c in EXPERT_COLUMNS
                )
                for row in _experts(n)
            ),
        )
        for table, rows in _children(n).items():
            first = next(rows)
            columns = list(first)
            conn.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                (tuple(r.values()) for r in _prepend(first, rows)),
            )
        conn.executemany(
            "INSERT INTO expert_names (name, last_version) VALUES (?, ?)",
            ((r["name"], r["last_version"]) for r in _names(n)),
        )
        conn.execute("INSERT INTO aliases (name, alias, expert_id) VALUES (?, 'best', 1)", (_name(1)[1],))
        for _name_, sql in indexes:
            conn.execute(sql)  # the DDL exactly as the migrations wrote it
        conn.execute("COMMIT")  # no ANALYZE: plans as a real catalog (which never runs it) gets them
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()


def _prepend(first: dict[str, Any], rest: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield first
    yield from rest


def _fill_sqlalchemy(url: str, n: int) -> None:
    from sqlalchemy import func, insert, select, text

    from hubtool.registry import db
    from hubtool.registry.tables import aliases, expert_names, expert_tags, expert_tasks, experts, metrics

    handles = {"expert_tasks": expert_tasks, "metrics": metrics, "expert_tags": expert_tags}
    engine = db.make_engine(url)
    try:
        with db.write_transaction(engine) as conn:
            if conn.execute(select(func.count()).select_from(experts)).scalar():
                raise HubError(f"catalog {url}: fill_synthetic needs an empty catalog")
            for table, rows in [("experts", _experts(n)), *_children(n).items()]:
                handle = experts if table == "experts" else handles[table]
                chunk: list[dict[str, Any]] = []
                for row in rows:
                    chunk.append(row)
                    if len(chunk) == _CHUNK:
                        conn.execute(insert(handle), chunk)
                        chunk = []
                if chunk:
                    conn.execute(insert(handle), chunk)
            conn.execute(insert(expert_names), _names(n))
            conn.execute(insert(aliases), [{"name": _name(1)[1], "alias": "best", "expert_id": 1}])
            if n and conn.dialect.name == "postgresql":  # explicit ids leave the id sequence behind; catch it up
                conn.execute(text("SELECT setval(pg_get_serial_sequence('experts', 'id'), :n)"), {"n": n})
    finally:
        engine.dispose()
