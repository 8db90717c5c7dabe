"""What the catalog pages show, read from the catalog: plain dicts and lists for the templates.

Everything here is synchronous (SQLite, SQLAlchemy): pages.py runs it in a worker thread, off the event
loop. The catalog list reads the way `hub list` does (registry/fastlist.py on a plain SQLite file, else
Catalog.list), so the page and the command give the same rows for the same filters.
"""

from __future__ import annotations

import math
import re
import shlex
import threading
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlencode

from hubtool.data.metrics import HEADLINE, format_metric, metric_summary
from hubtool.errors import HubError, NotFoundError, shown
from hubtool.fileio import human_bytes

DEFAULT_LIMIT = 25  # hub list's --limit default
MAX_LIMIT = 10_000  # a page longer than this is a mistake in the URL, not a search
MAX_OFFSET = 100_000_000
MODULE_ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_DTYPE_BITS = {"bfloat16": 16, "float16": 16, "float32": 32}


@dataclass(frozen=True)
class ListQuery:
    """The catalog page's state, all of it in the query string (a search is a bookmark)."""

    task: str | None = None
    category: str | None = None
    kind: str | None = None
    base: str | None = None
    tag: str | None = None
    where: str | None = None
    sort: str | None = None
    limit: int = DEFAULT_LIMIT
    offset: int = 0  # the page: rows offset+1 .. offset+limit (the list pages with a bounded page size)

    @classmethod
    def from_params(cls, params: Any) -> ListQuery:
        """From a query string's parameters (blank values mean "any"); HubError naming a bad `limit`."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = params.get(f.name)
            if raw is None or not raw.strip():
                continue
            values[f.name] = raw.strip()
        if "limit" in values:
            text = values["limit"]
            if not re.fullmatch(r"[0-9]{1,6}", text) or not 1 <= int(text) <= MAX_LIMIT:
                raise HubError(f"limit {shown(text, 40)}: expected a whole number in [1, {MAX_LIMIT}]")
            values["limit"] = int(text)
        if "offset" in values:
            text = values["offset"]
            if not re.fullmatch(r"[0-9]{1,9}", text) or int(text) > MAX_OFFSET:
                raise HubError(f"offset {shown(text, 40)}: expected a whole number in [0, {MAX_OFFSET}]")
            values["offset"] = int(text)
        return cls(**values)

    def command(self) -> str:
        """The `hub list` command that lists the same rows."""
        args = ["hub", "list"]
        for option, value in (("--task", self.task), ("--tasks", self.category), ("--kind", self.kind),
                              ("--base", self.base), ("--tag", self.tag), ("--where", self.where),
                              ("--sort", self.sort)):  # fmt: skip
            if value is not None:
                args += [option, value]
        if self.limit != DEFAULT_LIMIT or self.offset:  # a later page: the rows after the first `offset`
            args += ["--limit", str(self.offset + self.limit)]
        return shlex.join(args)

    def params(self, **changes: Any) -> dict[str, str]:
        """The query string's parameters (defaults left out), with `changes` applied."""
        out = {f.name: getattr(self, f.name) for f in fields(self)} | changes
        return {k: str(v) for k, v in out.items()
                if v is not None and not (k == "limit" and v == DEFAULT_LIMIT) and not (k == "offset" and not v)}


class CatalogView:
    """One catalog, opened once (on first use), read by every page."""

    def __init__(self, url: str | None = None) -> None:
        from hubtool.paths import default_catalog_url

        self.url = url or default_catalog_url()
        self._catalog: Any = None
        self._lock = threading.Lock()

    def catalog(self) -> Any:
        """The Catalog (opened, and created or upgraded as any command does, on first use). Blobs that live
        only on a Hub are not fetched: a page never downloads."""
        with self._lock:
            if self._catalog is None:
                from hubtool.registry import Catalog

                self._catalog = Catalog(self.url)
            return self._catalog

    def safe_url(self) -> str:
        """The catalog URL with any password hidden (it is printed, and may be shown)."""
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            return make_url(self.url).render_as_string(hide_password=True)
        except (ArgumentError, ValueError):  # not a URL SQLAlchemy reads: opening it says what is wrong
            return self.url

    def close(self) -> None:
        with self._lock:
            if self._catalog is not None:
                self._catalog.close()
                self._catalog = None

    # -- the catalog list ------------------------------------------------------------------------------

    def list_page(self, query: ListQuery) -> dict[str, Any]:
        """{"rows", "one_base", "choices"}; HubError (the message `hub list` prints) for a bad filter."""
        records = self._list(query)
        bases = {r.base_model for r in records}
        rows = [
            {
                "ref": r.ref,
                "name": r.name,
                "task": r.task,
                "kind": r.kind,
                "keep": "-" if r.keep_ratio is None else f"{r.keep_ratio:.3g}",
                "size": human_bytes(r.bytes),
                "base": r.base_model,
                "metrics": metric_summary(r.metrics),
                "tags": list(r.tags),
            }
            for r in records
        ]
        return {"rows": rows, "one_base": next(iter(bases)) if len(bases) == 1 else None}

    def _list(self, query: ListQuery) -> list[Any]:
        from hubtool.registry import fastlist

        args = {"task": query.task, "base": query.base, "kind": query.kind, "tag": query.tag,
                "where": query.where, "sort": query.sort, "limit": query.limit}  # fmt: skip
        if query.offset:  # a later page: SQL's OFFSET (fastlist reads first pages only); same order
            cat = self.catalog()
            tasks = None if query.category is None else _tasks_of(cat, query.category)
            return cat.list(tasks=tasks, offset=query.offset, **args)
        reader = fastlist.open_reader(self.url)
        if reader is not None:
            try:
                with reader:
                    tasks = None if query.category is None else _tasks_of(reader, query.category)
                    return reader.list(tasks=tasks, **args)
            except fastlist.Unavailable:
                pass  # e.g. a damaged file: the normal path reports it
        cat = self.catalog()
        tasks = None if query.category is None else _tasks_of(cat, query.category)
        return cat.list(tasks=tasks, **args)

    def choices(self, query: ListQuery) -> dict[str, list[str]]:
        """The values each filter of the list can take (a bookmarked value the catalog no longer has is kept,
        so the form shows what the URL asks)."""
        from sqlalchemy import distinct, select

        from hubtool.registry.tables import expert_tags, expert_tasks, experts

        cat = self.catalog()
        with cat.engine.connect() as conn:
            found = {
                "task": conn.execute(select(distinct(expert_tasks.c.task))).scalars().all(),
                "kind": conn.execute(select(distinct(experts.c.kind))).scalars().all(),
                "base": conn.execute(select(distinct(experts.c.base_model))).scalars().all(),
                "tag": conn.execute(select(distinct(expert_tags.c.tag))).scalars().all(),
            }
        found["category"] = sorted({c for c in (cat.category_of(t) for t in found["task"]) if c})
        for key, values in found.items():
            asked = getattr(query, key)
            found[key] = sorted(set(values) | ({asked} if asked else set()))
        return found

    # -- one expert --------------------------------------------------------------------------------------

    def expert_page(self, ref: str) -> dict[str, Any]:
        """Everything `hub show` shows, and more: versions, metrics across them, provenance, density map."""
        cat = self.catalog()
        rec = cat.get(ref)  # NotFoundError: the 404 page; HubError: not a ref at all (also a 404)
        info = _describe(cat, rec)
        weights = info["weights"]
        versions = cat.list(where=f"name={rec.name}", sort="version")
        version_columns = sorted({(t, m) for v in versions for t, per in v.metrics.items() for m in per})
        metric_rows = []
        for task_name, per_task in rec.metrics.items():
            for metric, value in per_task.items():
                base = info["base_metrics"].get(task_name, {}).get(metric)
                gain = info["gain"].get(task_name, {}).get(metric)
                metric_rows.append({"task": task_name, "metric": metric, "value": fmt(value),
                                    "base": fmt(base), "gain": format_metric(gain, gain=True)})  # fmt: skip
        data_sources = []
        for task_name in rec.tasks:
            try:
                source = cat.get_task(task_name).data_source
            except NotFoundError:
                source = None
            data_sources.append({"task": task_name, "source": source or "-"})
        return {
            "rec": info,
            "title": rec.ref,
            "metric_rows": metric_rows,
            "versions": [
                {"ref": v.ref, "version": v.version, "aliases": list(v.aliases), "created": v.to_dict()["created_at"],
                 "sha256": v.sha256, "current": v.version == rec.version,
                 "metrics": [fmt(v.metrics.get(t, {}).get(m)) for t, m in version_columns]}
                for v in versions
            ],
            "version_columns": [f"{t} {m}" for t, m in version_columns],
            "config": [{"key": k, "value": _config_value(v)} for k, v in sorted((rec.config or {}).items())],
            "data_sources": data_sources,
            "parents": info["lineage"].get("parents", []),
            "children": info["lineage"].get("children", []),
            "density": density_map(weights) if weights else None,
            "weights": weight_rows(weights) if weights else [],
            "blob_missing": info.get("blob_missing"),
            "encodings": sorted({w.get("encoding") or "-" for w in weights.values()}) if weights else [],
            "size": human_bytes(rec.bytes),
            "bits": bits_per_entry(rec.bytes, rec.nnz, weights, info.get("value_dtype")),
            "snippets": snippets(rec),
            # the expert-side extras (docs/ui.md): its neighbourhood as a graph, its compose recipe (a merge),
            # the merges it went into with their retention, and where its kept entries went
            "graph": neighbourhood_graph(cat, rec, info["lineage"].get("parents", []),
                                         info["lineage"].get("children", [])),
            "lineage_href": "/_/lineage?" + urlencode({"base": rec.base_model}),
            "recipe": recipe_view(rec, info["lineage"].get("parents", [])),
            "composes": composes_with(cat, rec, info["lineage"].get("children", [])),
            "budget": budget(weights) if weights else None,
        }

    def lineage_page(self, base: str | None, task: str | None = None) -> dict[str, Any]:
        """The lineage graph of one base model (lineage_page below)."""
        return lineage_page(self.catalog(), base, task)

    # -- tasks -------------------------------------------------------------------------------------------

    def tasks_page(self, board_size: int = 10) -> dict[str, Any]:
        """Tasks grouped by category, each with a leaderboard (the base models' scores among its rows)."""
        from sqlalchemy import distinct, select

        from hubtool.data import list_tasks
        from hubtool.registry.tables import expert_tasks, metrics

        cat = self.catalog()
        infos = {i.name: i for i in list_tasks(cat.list_tasks())}
        with cat.engine.connect() as conn:
            with_experts = set(conn.execute(select(distinct(expert_tasks.c.task))).scalars().all())
        groups: dict[str, list[dict[str, Any]]] = {}
        for name in sorted(set(infos) | with_experts):
            info = infos.get(name)
            category = (info.category if info else None) or cat.category_of(name) or "uncategorised"
            entry: dict[str, Any] = {"name": name, "description": info.description if info else "",
                                     "metric": None, "board": [], "experts": name in with_experts}  # fmt: skip
            if name in with_experts:
                with cat.engine.connect() as conn:
                    names = set(conn.execute(select(distinct(metrics.c.metric)).where(metrics.c.task == name))
                                .scalars().all())  # fmt: skip
                metric = next((m for m in HEADLINE if m in names), min(names) if names else None)
                entry["metric"] = metric
                entry["board"] = _leaderboard(cat, name, metric, board_size)
            groups.setdefault(category, []).append(entry)
        for entries in groups.values():  # tasks with experts first, then by name
            entries.sort(key=lambda entry: (not entry["experts"], entry["name"]))
        return {"groups": sorted(groups.items(), key=lambda kv: (kv[0] == "uncategorised", kv[0]))}


def _leaderboard(cat: Any, task: str, metric: str | None, size: int) -> list[dict[str, Any]]:
    """The task's best experts by `metric` on this task (higher is better; a loss ranks lowest first), and
    their base models' own scores on the task, as rows marked "base"."""
    from sqlalchemy import select

    from hubtool.registry.tables import experts, metrics

    lower_better = metric is not None and "loss" in metric
    if metric is None:
        rows = [{"ref": r.ref, "base": r.base_model, "value": None, "is_base": False}
                for r in cat.list(task=task, limit=size)]  # fmt: skip
    else:
        order = metrics.c.value.asc() if lower_better else metrics.c.value.desc()
        q = (select(experts.c.name, experts.c.version, experts.c.base_model, metrics.c.value)
             .join(metrics, metrics.c.expert_id == experts.c.id)
             .where(metrics.c.task == task, metrics.c.metric == metric)
             .order_by(order, experts.c.name, experts.c.version).limit(size))  # fmt: skip
        with cat.engine.connect() as conn:
            rows = [{"ref": f"{r.name}@{r.version}", "base": r.base_model, "value": r.value, "is_base": False}
                    for r in conn.execute(q)]  # fmt: skip
    base_scores = {}
    for base in sorted({row["base"] for row in rows}):
        value = cat.base_metrics(base, task).get(metric) if metric else None
        if value is not None:
            base_scores[base] = value
    for row in rows:
        base = base_scores.get(row["base"])
        row["gain"] = "" if base is None or row["value"] is None else format_metric(row["value"] - base, gain=True)
    rows += [{"ref": None, "base": base, "value": value, "is_base": True, "gain": ""}
             for base, value in base_scores.items()]  # fmt: skip
    rows.sort(key=lambda row: (row["value"] is None, 0 if row["value"] is None else
                               (row["value"] if lower_better else -row["value"])))  # fmt: skip
    return [row | {"shown": fmt(row["value"])} for row in rows]


def _tasks_of(reader: Any, category: str) -> list[str]:
    """A category (or a task) as `hub list --tasks` reads it (cli/_common.resolve_tasks)."""
    specs = [spec.strip() for spec in category.split(",") if spec.strip()]
    if not specs:
        raise HubError(f"--tasks {category!r}: expected task names or categories, comma-separated")
    return sorted({task for spec in specs for task in reader.tasks_for(spec)})


def _describe(cat: Any, rec: Any) -> dict[str, Any]:
    """Catalog.describe; when the blob is not on this disk (pushed elsewhere, or lost), the same without its
    per-weight entries, saying so."""
    try:
        return cat.describe(rec.ref)
    except (HubError, OSError) as err:
        found = {task: cat.base_metrics(rec.base_model, task) for task in rec.metrics}
        return rec.to_dict() | {
            "value_dtype": rec.value_dtype,
            "weights": {},
            "lineage": cat.lineage(rec.ref),
            "base_metrics": {task: values for task, values in found.items() if values},
            "gain": cat.gains(rec.ref),
            "blob_missing": " ".join(str(err).split()) or type(err).__name__,
        }


# -- formatting ----------------------------------------------------------------------------------------


def fmt(value: float | None) -> str:
    """A metric value, as `hub list` and every page round it (hubtool.data.metrics.format_metric)."""
    return format_metric(value)


def _config_value(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _natural(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _layer_and_module(name: str) -> tuple[str, str]:
    """"model.layers.3.self_attn.q_proj.weight" -> ("3", "q_proj"); no layer number -> ("-", the name)."""
    parts = name.removesuffix(".weight").split(".")
    layer = next((p for p in parts if p.isdigit()), None)
    return (layer, parts[-1]) if layer is not None else ("-", ".".join(parts))


def density_map(weights: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Layer x module (q_proj, k_proj, v_proj, ...) densities, each cell a number and a shade class
    (d0..d5, relative to the densest cell: the number says it too, never the colour alone)."""
    cells: dict[tuple[str, str], float] = {}
    for name, info in weights.items():
        rows, cols = info["shape"][0], info["shape"][-1] if len(info["shape"]) > 1 else 1
        total = max(rows * cols, 1)
        cells[_layer_and_module(name)] = info["nnz"] / total
    modules = sorted({m for _, m in cells}, key=lambda m: (MODULE_ORDER.index(m) if m in MODULE_ORDER else 99, m))
    layers = sorted({layer for layer, _ in cells}, key=lambda x: (x == "-", int(x) if x.isdigit() else 0, x))
    top = max(cells.values(), default=0.0) or 1.0
    return {
        "modules": modules,
        "rows": [
            {"layer": layer,
             "cells": [None if (layer, m) not in cells else
                       {"text": f"{cells[(layer, m)]:.4f}", "shade": f"d{min(5, math.ceil(5 * cells[(layer, m)] / top))}"}
                       for m in modules]}
            for layer in layers
        ],
    }  # fmt: skip


def weight_rows(weights: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for name in sorted(weights, key=_natural):
        info = weights[name]
        shape = info["shape"]
        total = 1
        for n in shape:
            total *= n
        out.append({"name": name.removesuffix(".weight"), "shape": "×".join(map(str, shape)),
                    "nnz": f"{info['nnz']:,}", "density": f"{info['nnz'] / max(total, 1):.4f}",
                    "encoding": info.get("encoding") or "-"})  # fmt: skip
    return out


def bits_per_entry(size: int, nnz: int, weights: dict[str, dict[str, Any]], dtype: str | None,
                   ) -> dict[str, str | None] | None:
    """Bits the blob spends per kept entry, against the information bound of a sparse expert: choosing its
    positions (log2 C(n, k) per weight) plus the values at their dtype's width. None when it doesn't apply."""
    if not nnz:
        return None
    out = {"actual": f"{size * 8 / nnz:.2f}", "bound": None, "ratio": None}
    if weights and dtype in _DTYPE_BITS and all(w.get("delta") == "sparse" for w in weights.values()):
        position_bits = 0.0
        for w in weights.values():
            n = 1
            for d in w["shape"]:
                n *= d
            k = w["nnz"]
            position_bits += (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)
        bound = position_bits / nnz + _DTYPE_BITS[dtype]
        out["bound"] = f"{bound:.2f}"
        out["ratio"] = f"{size * 8 / nnz / bound:.2f}"
    return out


def snippets(rec: Any) -> list[dict[str, str]]:
    """Copyable commands and code that get this expert (texts: the template escapes them)."""
    folder = f"{rec.name}-{rec.version}-peft"
    if rec.hub_repo:
        pull = f"hub pull {shlex.quote(rec.hub_repo + '@' + rec.hub_commit) if rec.hub_commit else rec.hub_repo}"
        pull_note = "From the Hub repo it was pushed to (HF_ENDPOINT, HF_TOKEN)."
    else:
        pull = f"hub push {rec.ref}\nhub pull YOUR_ORG/{rec.name}"
        pull_note = "Not pushed yet: push it, then pull it on another machine."
    return [
        {"title": "hub pull", "note": pull_note, "code": pull},
        {"title": "PeftModel.from_pretrained", "note": "Export a PEFT adapter folder, then load it with PEFT.",
         "code": f"hub export {rec.ref} --out {folder}\n\n"
                 "from peft import PeftModel\n"
                 "from transformers import AutoModelForCausalLM\n\n"
                 f"base = AutoModelForCausalLM.from_pretrained({rec.base_model!r})\n"
                 f"model = PeftModel.from_pretrained(base, {folder!r})"},
        {"title": "hubtool.Catalog().load", "note": "The packed expert, from Python.",
         "code": f"import hubtool\n\nexpert = hubtool.Catalog().load({rec.ref!r})"},
    ]  # fmt: skip


# -- the expert-side extras: lineage graph, recipe, "composes well with", budget ------------------------

LINEAGE_READ_CAP = 2_000  # experts with parents read for one base's graph (the layout draws at most 200)
MAX_MERGES_SHOWN = 50  # "composes well with": the merges of one expert shown


def lineage_page(cat: Any, base: str | None, task: str | None, max_nodes: int = 200) -> dict[str, Any]:
    """The lineage graph of one base model (optionally only experts covering `task`); without a base, the
    bases to choose from. NotFoundError when no expert has that base (and task)."""
    from sqlalchemy import distinct, func, select

    from hubtool.registry.tables import expert_tasks, experts
    from hubtool.registry.tables import lineage as edges
    from hubtool.ui import lineage

    with cat.engine.connect() as conn:
        bases = sorted(conn.execute(select(distinct(experts.c.base_model))).scalars().all())
        tasks = sorted(conn.execute(select(distinct(expert_tasks.c.task))).scalars().all())
        out: dict[str, Any] = {"base": base, "task": task, "bases": bases, "tasks": tasks, "graph": None}
        if base is None:
            return out
        cond = [experts.c.base_model == base]
        if task is not None:
            cond.append(experts.c.id.in_(select(expert_tasks.c.expert_id).where(expert_tasks.c.task == task)))
        total = conn.execute(select(func.count()).select_from(experts).where(*cond)).scalar_one()
        if not total:
            raise NotFoundError(f"no expert has base model {shown(base, 200)}"
                                + (f" and task {shown(task, 100)}" if task is not None else ""))  # fmt: skip
        columns = (experts.c.id, experts.c.name, experts.c.version, experts.c.kind, experts.c.task)
        has_parents = experts.c.id.in_(select(edges.c.child_id))
        derived = conn.execute(select(*columns).where(*cond, has_parents)
                               .order_by(experts.c.name, experts.c.version).limit(LINEAGE_READ_CAP)).all()  # fmt: skip
        plain = conn.execute(select(*columns).where(*cond, ~has_parents)
                             .order_by(experts.c.name, experts.c.version).limit(max_nodes)).all()  # fmt: skip
        parents: dict[int, list[str]] = {}
        ids = [r.id for r in derived]
        for start in range(0, len(ids), 500):
            for row in conn.execute(select(edges.c.child_id, edges.c.parent)
                                    .where(edges.c.child_id.in_(ids[start:start + 500]))
                                    .order_by(edges.c.child_id, edges.c.parent)):  # fmt: skip
                parents.setdefault(row.child_id, []).append(row.parent)
        items = {f"{r.name}@{r.version}": lineage.Item(f"{r.name}@{r.version}", tuple(parents.get(r.id, ())), r.kind,
                                                       title=f"task {r.task}")
                 for r in (*derived, *plain)}  # fmt: skip
        outside = {p for item in items.values() for p in item.parents} - set(items)
        names = {p.partition("@")[0] for p in outside}
        found = {}
        for start in range(0, len(names), 500):
            chunk = sorted(names)[start:start + 500]
            for r in conn.execute(select(experts.c.name, experts.c.version, experts.c.kind, experts.c.task,
                                         experts.c.base_model).where(experts.c.name.in_(chunk))):  # fmt: skip
                found[f"{r.name}@{r.version}"] = r
    for ref in outside:  # parents the filter left out (another task or base), or removed
        r = found.get(ref)
        items[ref] = (lineage.Item(ref, present=False, kind="missing") if r is None else
                      lineage.Item(ref, (), r.kind, title=f"task {r.task}" + ("" if r.base_model == base else
                                                                             f", base {r.base_model}"),
                                   own_base=r.base_model == base))  # fmt: skip
    graph = lineage.lineage_graph(base, list(items.values()), max_nodes)
    drawn = {n.key for n in graph.nodes}
    matching = {f"{r.name}@{r.version}" for r in (*derived, *plain)}
    graph.left_out = total - len(drawn & matching)
    out["graph"] = graph
    out["nodes"] = [{"ref": n.key, "title": n.title, "href": n.href, "column": graph.columns[n.column]["title"]}
                    for n in graph.nodes if n.role != "base"]  # fmt: skip
    return out


def neighbourhood_graph(cat: Any, rec: Any, parents: list[dict[str, Any]], children: list[dict[str, Any]]) -> Any:
    """The expert's own neighbourhood: parents (or its base model), itself, its children."""
    from hubtool.ui import lineage

    def item(entry: dict[str, Any], child: bool) -> Any:
        present = entry.get("present", True)
        role = f"{entry['role']}" if entry.get("role") else ""
        weight = "" if entry.get("weight") is None else f"weight {entry['weight']:g}"
        # the edge's role ("merge:ties") says how the child was made: a child's kind; a parent's is its own
        kind = ("merged" if "merge" in role else "sparse") if child else _kind_of(cat, entry["ref"], present)
        return lineage.Item(entry["ref"], present=present, kind=kind,
                            title=" ".join(x for x in (role, weight) if x))  # fmt: skip

    me = lineage.Item(rec.ref, kind=rec.kind, title=f"task {rec.task}")
    return lineage.neighbourhood(me, rec.base_model, [item(p, False) for p in parents],
                                 [item(c, True) for c in children])  # fmt: skip


def _kind_of(cat: Any, ref: str, present: bool) -> str:
    if not present:
        return "missing"
    try:
        return str(cat.get(ref).kind)
    except NotFoundError:
        return "missing"


def recipe_view(rec: Any, parents: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A merged expert's compose recipe (stored by hub compose --as-expert in its config, as "merge"): the
    method and its parameters, the parents pinned (ref, sha256, weight, task), the `hub compose` command
    that makes it again, and the recipe YAML (which also pins each parent's sha256). None if not a merge."""
    import yaml

    merge = (rec.config or {}).get("merge")
    if not isinstance(merge, dict) or not isinstance(merge.get("recipe"), dict):
        return None
    recipe = merge["recipe"]
    params = recipe.get("parameters") if isinstance(recipe.get("parameters"), dict) else {}
    present = {p["ref"]: p.get("present", True) for p in parents}
    pinned = []
    for i, p in enumerate(merge.get("parents") or []):
        if not isinstance(p, dict) or "ref" not in p:
            continue
        pinned.append({"ref": str(p["ref"]), "present": present.get(str(p["ref"]), False), "task": p.get("task") or "-",
                       "weight": _number(p.get("weight")), "sha256": p.get("sha256") or "-",
                       "kind": p.get("kind") or "-", "chosen": p.get("chosen") or "-"})  # fmt: skip
    method = str(recipe.get("merge_method") or merge.get("method") or "-")
    settings = [{"key": k, "value": _config_value(v)} for k, v in params.items()]
    if recipe.get("dtype"):
        settings.append({"key": "dtype", "value": str(recipe["dtype"])})
    select = recipe.get("select") if isinstance(recipe.get("select"), dict) else None
    return {
        "method": method,
        "settings": settings,
        "parents": pinned,
        "select": None if not select else _config_value(select),
        "command": compose_command(rec.name, recipe),
        "yaml": yaml.safe_dump(recipe, sort_keys=False, default_flow_style=False, allow_unicode=True),
        "config_command": shlex.join(["hub", "compose", "--config", "recipe.yml", "--as-expert", rec.name]),
    }


def compose_command(name: str, recipe: dict[str, Any]) -> str:
    """The `hub compose` command that merges the recipe's pinned experts again, as a new version of `name`."""
    experts = [e for e in recipe.get("experts") or [] if isinstance(e, dict) and e.get("expert")]
    args = ["hub", "compose", "--experts", ",".join(str(e["expert"]) for e in experts)]
    args += ["--method", str(recipe.get("merge_method", "overlap-mean"))]
    weights = [float((e.get("parameters") or {}).get("weight", 1.0)) for e in experts]
    if any(w != 1.0 for w in weights):
        args += ["--weights", ",".join(repr(w) for w in weights)]
    params = recipe.get("parameters") or {}
    for key, option in (("density", "--density"), ("lambda", "--lambda")):
        if params.get(key) is not None:
            args += [option, repr(float(params[key]))]
    if params.get("normalize") is not None:
        args.append("--normalize" if params["normalize"] else "--no-normalize")
    if params.get("seed") not in (None, 0):
        args += ["--seed", str(params["seed"])]
    if recipe.get("dtype"):
        args += ["--dtype", str(recipe["dtype"])]
    return shlex.join([*args, "--as-expert", name])


def retention_rows(single: dict[str, dict[str, float]], merged: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Per task both have a metric on: merged / single, in percent, on the task's headline metric (the first
    of HEADLINE both have, else the first metric by name both have), as hub compose --eval reports it."""
    rows = []
    for task in sorted(set(single) & set(merged)):
        common = set(single[task]) & set(merged[task])
        metric = next((m for m in HEADLINE if m in common), min(common) if common else None)
        if metric is None or not single[task][metric]:
            continue
        value = 100.0 * merged[task][metric] / single[task][metric]
        rows.append({"task": task, "metric": metric, "single": fmt(single[task][metric]),
                     "merged": fmt(merged[task][metric]), "retention": f"{value:.1f}%", "value": value})  # fmt: skip
    return rows


def composes_with(cat: Any, rec: Any, children: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The merges this expert went into (its children made by a merge), best mean retention first: each with
    its retention per task, the merge's method and this expert's weight in it, and the other parents."""
    out = []
    for child in children[: MAX_MERGES_SHOWN * 2]:
        if len(out) >= MAX_MERGES_SHOWN:
            break
        try:
            merge = cat.get(child["ref"])
        except NotFoundError:
            continue
        role = child.get("role") or ""
        if merge.kind != "merged" and not role.startswith("merge"):
            continue
        rows = retention_rows(rec.metrics, merge.metrics)
        others = [p for p in cat.lineage(merge.ref)["parents"] if p["ref"] != rec.ref]
        mean = sum(r["value"] for r in rows) / len(rows) if rows else None
        out.append({"ref": merge.ref, "method": role.removeprefix("merge:") if role.startswith("merge") else merge.kind,
                    "weight": _number(child.get("weight")), "others": others, "rows": rows, "mean": mean,
                    "mean_text": "-" if mean is None else f"{mean:.1f}%"})  # fmt: skip
    out.sort(key=lambda m: (m["mean"] is None, -(m["mean"] or 0.0), m["ref"]))
    return out


def budget(weights: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Where the expert spent its kept entries: each layer's and each module's share of all of them, with a
    bar class (w0, w5, ... w100: the share against the largest row's, in steps of 5; the number says it too)."""
    from collections import Counter

    total = sum(int(w.get("nnz") or 0) for w in weights.values())
    if not total:
        return None
    layers: Counter[str] = Counter()
    modules: Counter[str] = Counter()
    for name, info in weights.items():
        layer, module = _layer_and_module(name)
        layers[layer] += int(info.get("nnz") or 0)
        modules[module] += int(info.get("nnz") or 0)

    def rows(counts: Counter[str], order: list[str]) -> list[dict[str, Any]]:
        top = max(counts.values()) or 1
        return [{"name": key, "kept": f"{counts[key]:,}", "share": f"{100.0 * counts[key] / total:.1f}%",
                 "bar": f"w{5 * round(20 * counts[key] / top)}"} for key in order]  # fmt: skip

    layer_order = sorted(layers, key=lambda x: (x == "-", int(x) if x.isdigit() else 0, x))
    module_order = sorted(modules, key=lambda m: (MODULE_ORDER.index(m) if m in MODULE_ORDER else 99, m))
    return {"total": f"{total:,}", "layers": rows(layers, layer_order), "modules": rows(modules, module_order)}


def _number(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) or isinstance(value, bool) else f"{value:g}"
