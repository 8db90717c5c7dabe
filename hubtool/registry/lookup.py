"""Reading the catalog: refs to rows, list filters, and rows to whole ExpertRecords.

Refs: "qa" is the latest version, "qa@3" a version, "qa@best" an alias ("qa@latest" == "qa").
A page of records costs one query for the rows plus one each for their tasks, tags, metrics and
aliases (never one per row).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, Row, func, select
from sqlalchemy.engine import Connection

from hubtool.errors import HubError, NotFoundError, shown
from hubtool.registry import where as where_lang
from hubtool.registry.records import ExpertRecord
from hubtool.registry.tables import aliases, expert_tags, expert_tasks, experts, metrics

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
LATEST = "latest"  # reserved: never an alias
MAX_VERSION = 2**63 - 1  # versions are SQL BIGINTs: a longer number is no version, not an OverflowError
_SELECTOR = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")  # a version number or an alias
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() also takes "²" and "१", which int() refuses
_CHUNK = 500  # ids per IN (...) when fetching a page's tags/metrics; far below SQLite's limit


def parse_ref(ref: str) -> tuple[str, str | None]:
    """ "qa" -> ("qa", None); "qa@3" -> ("qa", "3"); "qa@best" -> ("qa", "best")."""
    name, at, selector = ref.strip().partition("@")
    if not NAME.fullmatch(name) or (at and not _SELECTOR.fullmatch(selector)):
        raise HubError(f"expert ref {shown(ref)}: expected NAME, NAME@VERSION or NAME@ALIAS")
    if _DIGITS.fullmatch(selector) and (len(selector) > 19 or int(selector) > MAX_VERSION):
        raise HubError(f"expert ref {ref!r}: version {selector} is larger than any version can be ({MAX_VERSION})")
    return name, (selector or None)


def is_version(selector: str | None) -> bool:
    """ "3" is a version number; "best", "latest", "²" are not."""
    return selector is not None and _DIGITS.fullmatch(selector) is not None


class Resolved(NamedTuple):
    """The few columns needed to act on a ref without building a whole record."""

    id: int
    name: str
    version: int
    sha256: str
    blob: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def resolve(conn: Connection, ref: str) -> Resolved:
    """The version a ref means now; NotFoundError saying which part is missing."""
    name, selector = parse_ref(ref)
    q = select(experts.c.id, experts.c.name, experts.c.version, experts.c.sha256, experts.c.blob)
    if selector is None or selector == LATEST:
        q = q.where(experts.c.name == name).order_by(experts.c.version.desc()).limit(1)
    elif is_version(selector):
        q = q.where(experts.c.name == name, experts.c.version == int(selector))
    else:
        q = q.join(aliases, aliases.c.expert_id == experts.c.id).where(
            aliases.c.name == name, aliases.c.alias == selector
        )
    found = conn.execute(q).first()
    if found is not None:
        return Resolved(*found)
    latest = conn.execute(select(func.max(experts.c.version)).where(experts.c.name == name)).scalar()
    if latest is None:
        raise NotFoundError(f"no expert named {name!r} in the catalog")
    if is_version(selector):
        raise NotFoundError(f"{ref}: expert {name!r} has no version {selector} (latest is {latest})")
    raise NotFoundError(f"{ref}: expert {name!r} has no alias {selector!r}")


def filters(
    task: str | None,
    base: str | None,
    kind: str | None,
    tag: str | None,
    where: str | None,
    *,
    tasks: Sequence[str] | None = None,
) -> list[ColumnElement[bool]]:
    """WHERE clauses for Catalog.list/count; `task` matches any of an expert's tasks, `tasks` any of
    them in any of an expert's tasks (an empty list matches nothing)."""
    clauses: list[ColumnElement[bool]] = []
    if task is not None:
        clauses.append(experts.c.id.in_(select(expert_tasks.c.expert_id).where(expert_tasks.c.task == task)))
    if tasks is not None:
        in_tasks = expert_tasks.c.task.in_(list(tasks))
        clauses.append(experts.c.id.in_(select(expert_tasks.c.expert_id).where(in_tasks)))
    if base is not None:
        clauses.append(experts.c.base_model == base)
    if kind is not None:
        from hubtool.format.header import LEGACY_KINDS  # stdlib only

        clauses.append(experts.c.kind == LEGACY_KINDS.get(kind, kind))  # "full-delta" still finds "full"
    if tag is not None:
        clauses.append(experts.c.id.in_(select(expert_tags.c.expert_id).where(expert_tags.c.tag == tag)))
    if where:
        clauses.extend(where_lang.where_clause(c) for c in where_lang.parse_where(where))
    return clauses


def fetch(conn: Connection, expert_id: int) -> ExpertRecord:
    return records(conn, conn.execute(select(experts).where(experts.c.id == expert_id)).all())[0]


def records(conn: Connection, rows: Sequence[Row[Any]]) -> list[ExpertRecord]:
    """Rows of `experts` -> records, in the same order, with their tasks, tags, metrics, aliases."""
    by_id = {r.id: ExpertRecord(**r._asdict() | {"config": r.config or {}, "tasks": []}) for r in rows}
    ids = list(by_id)
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        q = select(expert_tasks.c.expert_id, expert_tasks.c.task).where(expert_tasks.c.expert_id.in_(chunk))
        for eid, task in conn.execute(q):
            by_id[eid].tasks.append(task)
        q = select(expert_tags.c.expert_id, expert_tags.c.tag).where(expert_tags.c.expert_id.in_(chunk))
        for eid, tag in conn.execute(q.order_by(expert_tags.c.tag)):
            by_id[eid].tags.append(tag)
        q = select(metrics.c.expert_id, metrics.c.task, metrics.c.metric, metrics.c.value)
        q = q.where(metrics.c.expert_id.in_(chunk)).order_by(metrics.c.task, metrics.c.metric)
        for eid, task, metric, value in conn.execute(q):
            by_id[eid].metrics.setdefault(task, {})[metric] = value
        q = select(aliases.c.expert_id, aliases.c.alias).where(aliases.c.expert_id.in_(chunk))
        for eid, alias in conn.execute(q.order_by(aliases.c.alias)):
            by_id[eid].aliases.append(alias)
    for rec in by_id.values():  # primary task first, the rest sorted
        rec.tasks.sort(key=lambda t: (t != rec.task, t))
    return [by_id[r.id] for r in rows]
