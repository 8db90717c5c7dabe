"""What the analysis pages show: overlap heatmaps, the compare view and the compose dry-run form.

    /_/overlap?experts=a,b,c | ?tasks=qa,summarize[&base=..&where=..&pick=..]   pairwise Jaccard (2..16)
    /_/overlap?with=NAME       the other experts of its base (the most recent MAX_WITH), ranked by Jaccard
    /_/compare?experts=a,b     2..4 experts side by side (also ?expert=a&expert=b: the list's checkboxes)
    /_/compose?tasks=..        `hub compose --dry-run`: the plan, the overlap, the size; writes nothing

Plain dicts for the templates, computed synchronously (pages.py runs them in a worker thread). The
numbers are merge/overlap.py's (pairwise_overlap) and merge/compose.py's (compose(dry_run=True)), the same
`hub overlap` and `hub compose --dry-run` print. They read the experts' sparse positions (torch, no model);
nothing here writes. Bad input: HubError, one line naming the field (the page answers 400).
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, fields
from typing import Any

from hubtool.errors import HubError, NotFoundError, shown
from hubtool.fileio import human_bytes

MIN_OVERLAP, MAX_OVERLAP = 2, 16  # experts in one heatmap
MAX_WITH = 50  # "overlap with the other experts of its base": the most recent this many
MIN_COMPARE, MAX_COMPARE = 2, 4
MAX_FIELD = 2000  # characters of one query-string value
PICKS = ("best", "latest")
OUTPUTS = ("expert", "model")
NORMALIZE = {"": None, "yes": True, "no": False}


def _text(params: Any, key: str) -> str | None:
    raw = params.get(key)
    if raw is None or not raw.strip():
        return None
    if len(raw) > MAX_FIELD:
        raise HubError(f"{key}: {len(raw)} characters, more than the {MAX_FIELD} allowed")
    return raw.strip()


def _refs(text: str | None, field: str, low: int, high: int) -> list[str]:
    from hubtool import checks

    refs = checks.items(text)
    if not low <= len(refs) <= high:
        raise HubError(f"{field}: {len(refs)} expert{'' if len(refs) == 1 else 's'} given; expected {low} to {high}, "
                       "comma-separated NAME or NAME@VERSION")  # fmt: skip
    dup = next((r for r in refs if refs.count(r) > 1), None)
    if dup is not None:
        raise HubError(f"{field}: {shown(dup, 80)} is given twice; name each expert once")
    return refs


def _jaccard_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _shade(value: float | None, top: float) -> str:
    """o0..o5, relative to the largest overlap between two different experts (the diagonal is always 1)."""
    if value is None:
        return "o-"
    return f"o{min(5, math.ceil(5 * value / top))}" if top > 0 else "o0"


def _matrix(refs: list[str], matrix: list[list[float | None]], top: float) -> list[dict[str, Any]]:
    return [{"ref": refs[i], "cells": [{"text": _jaccard_text(v), "shade": "self" if i == j else _shade(v, top)}
                                       for j, v in enumerate(row)]}
            for i, row in enumerate(matrix)]  # fmt: skip


# -- the overlap heatmap ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class OverlapQuery:
    """The overlap page's state (all of it in the query string). `with_` is `?with=NAME`."""

    experts: str | None = None
    tasks: str | None = None
    base: str | None = None
    where: str | None = None
    pick: str | None = None
    with_: str | None = None

    @classmethod
    def from_params(cls, params: Any) -> OverlapQuery:
        values = {f.name: _text(params, f.name.rstrip("_")) for f in fields(cls)}
        query = cls(**values)
        if query.pick is not None and query.pick not in PICKS:
            raise HubError(f"pick {shown(query.pick, 40)}: expected best or latest")
        if query.with_ is not None and (query.experts or query.tasks):
            raise HubError("with: give either with=NAME or experts/tasks, not both")
        if query.experts and query.tasks:
            raise HubError("experts and tasks: give one of them (experts are named; tasks pick one each)")
        if query.base is not None and query.experts:
            raise HubError("base: only with tasks (named experts already say their base)")
        return query

    @property
    def asked(self) -> bool:
        return bool(self.experts or self.tasks or self.with_)

    def recipe_where(self) -> str | None:
        """--where as `hub overlap` takes it: base=... (the language's `base` field) joined to `where`."""
        if self.base is None:
            return self.where
        if "," in self.base or " and " in self.base:
            raise HubError(f"base {shown(self.base, 80)}: a base model name with ',' or ' and ' can't be a filter")
        return f"base={self.base}" + (f", {self.where}" if self.where else "")

    def command(self) -> str | None:
        """The `hub overlap` command that prints the same numbers (none for with=)."""
        if not (self.experts or self.tasks):
            return None
        args = ["hub", "overlap"]
        args += ["--experts", self.experts] if self.experts else ["--tasks", self.tasks or ""]
        where = self.recipe_where()
        if where:
            args += ["--where", where]
        if self.pick:
            args += ["--pick", self.pick]
        return shlex.join(args)

    def form(self) -> dict[str, str]:
        return {f.name.rstrip("_"): getattr(self, f.name) or "" for f in fields(self)}


def overlap_page(cat: Any, query: OverlapQuery) -> dict[str, Any]:
    """{"report": the heatmap data, or None for the empty form} (or {"with": ...} for ?with=)."""
    if query.with_ is not None:
        return {"report": None, "with": overlap_with(cat, query.with_)}
    if not query.asked:
        return {"report": None, "with": None}
    from hubtool.merge.compose import build_recipe
    from hubtool.merge.overlap import pairwise_overlap
    from hubtool.merge.plan import make_plan

    if query.experts:
        _refs(query.experts, "experts", MIN_OVERLAP, MAX_OVERLAP)
    recipe = build_recipe(query.tasks, experts=query.experts, where=query.recipe_where(), pick=query.pick)
    plan = make_plan(cat, recipe)
    n = len(plan.choices)
    if not MIN_OVERLAP <= n <= MAX_OVERLAP:
        chosen = ", ".join(c.ref for c in plan.choices)
        raise HubError(f"tasks: chose {n} expert{'' if n == 1 else 's'} ({chosen[:200]}); "
                       f"the overlap compares {MIN_OVERLAP} to {MAX_OVERLAP}")  # fmt: skip
    report = pairwise_overlap(plan)
    return {"report": report_data(report, plan), "with": None}


def report_data(report: Any, plan: Any) -> dict[str, Any]:
    """An OverlapReport as the template shows it: N×N cells (number + shade), per-layer rows and matrices."""
    refs = report.refs
    pairs = report.pairs
    off = [v for layer in [report.overall, *report.per_layer.values()] for i, j in pairs
           for v in (layer[i][j],) if v is not None]  # fmt: skip
    top = max(off, default=0.0)
    show_pairs = len(pairs) <= 6
    layers = []
    for layer, mean in report.layer_means().items():
        matrix = report.per_layer[layer]
        values = [matrix[i][j] for i, j in pairs if matrix[i][j] is not None]
        layers.append({
            "layer": layer,
            "mean": _jaccard_text(mean),
            "min": _jaccard_text(min(values, default=None)),
            "max": _jaccard_text(max(values, default=None)),
            "pairs": [{"text": _jaccard_text(matrix[i][j]), "shade": _shade(matrix[i][j], top)} for i, j in pairs]
            if show_pairs else [],
            "matrix": _matrix(refs, matrix, top),
        })  # fmt: skip
    return {
        "base_model": plan.base_model,
        "experts": [{"n": k, "ref": c.ref, "task": c.task, "kind": c.record.kind, "chosen": c.reason}
                    for k, c in enumerate(plan.choices, 1)],
        "refs": refs,
        "matrix": _matrix(refs, report.overall, top),
        "mean": _jaccard_text(report.overall_mean()),
        "top": _jaccard_text(top),
        "pair_names": [f"{refs[i]} × {refs[j]}" for i, j in pairs] if show_pairs else [],
        "layers": layers,
        "shared": [{"pair": f"{refs[i]} × {refs[j]}", "both": f"{report.intersections[i][j]:,}",
                    "either": f"{report.unions[i][j]:,}"} for i, j in pairs],
    }


def overlap_with(cat: Any, ref: str, limit: int = MAX_WITH) -> dict[str, Any]:
    """The other experts of `ref`'s base model (the `limit` most recent), ranked by the Jaccard of their
    kept positions with `ref`'s, pooled over all weights exactly as pairwise_overlap pools them. Reads one
    weight at a time: `ref`'s positions, then each other expert's."""
    from hubtool.format import ExpertReader
    from hubtool.merge.overlap import _intersect, _positions

    try:
        rec = cat.get(ref)
    except NotFoundError as err:
        raise HubError(f"with: {err}") from None
    except HubError as err:
        raise HubError(f"with: {err}") from None
    path = cat.blob_path(rec, fetch=False)
    if not path.is_file():
        raise HubError(f"with: {rec.ref}'s blob is not on this disk; its positions can't be read here")
    total = cat.count(base=rec.base_model) - 1
    others = [r for r in cat.list(base=rec.base_model, sort="-created", limit=limit + 1) if r.ref != rec.ref][:limit]
    me = ExpertReader(path)
    mine = {w: tuple(info["shape"]) for w, info in me.weights.items()}
    rows: list[dict[str, Any]] = []
    readers: dict[int, Any] = {}
    for k, other in enumerate(others):
        row = {"ref": other.ref, "task": other.task, "kind": other.kind, "note": None, "both": 0, "either": 0}
        rows.append(row)
        if other.base_revision != rec.base_revision:
            row["note"] = f"base revision {other.base_revision or '-'}, not {rec.base_revision or '-'}"
            continue
        other_path = cat.blob_path(other, fetch=False)
        if not other_path.is_file():
            row["note"] = "blob not on this disk"
            continue
        reader = ExpertReader(other_path)
        bad = next((w for w, info in reader.weights.items() if w in mine and tuple(info["shape"]) != mine[w]), None)
        if bad is not None:
            row["note"] = f"weight {bad} has another shape"
            continue
        readers[k] = reader
    names = list(dict.fromkeys([*mine, *(w for r in readers.values() for w in r.weights)]))
    for weight in names:  # one weight at a time: its positions in `ref`, then in each other expert
        numel = None
        pos = None
        if weight in mine:
            numel = mine[weight][0] * (mine[weight][1] if len(mine[weight]) > 1 else 1)
            pos = _positions(me, weight)
        for k, reader in readers.items():
            row = rows[k]
            if weight not in reader.weights:
                if weight in mine:
                    row["either"] += numel if pos is None else int(pos.size)
                continue
            shape = reader.weights[weight]["shape"]
            n_other = int(shape[0]) * (int(shape[1]) if len(shape) > 1 else 1)
            theirs = _positions(reader, weight)
            size = n_other if theirs is None else int(theirs.size)
            if weight not in mine:
                row["either"] += size
                continue
            both = _intersect(pos, theirs, n_other)
            row["both"] += both
            row["either"] += (numel if pos is None else int(pos.size)) + size - both
    for k, row in enumerate(rows):
        value = row["both"] / row["either"] if k in readers and row["either"] else None
        row |= {"value": value, "jaccard": _jaccard_text(value), "both_text": f"{row['both']:,}",
                "either_text": f"{row['either']:,}"}  # fmt: skip
    top = max((r["value"] for r in rows if r["value"] is not None), default=0.0)
    for row in rows:
        row["shade"] = _shade(row["value"], top)
    rows.sort(key=lambda r: (r["value"] is None, -(r["value"] or 0.0), r["ref"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank if row["value"] is not None else "-"
    return {"ref": rec.ref, "base_model": rec.base_model, "rows": rows, "total": max(total, 0), "limit": limit,
            "shown": len(others)}  # fmt: skip


# -- the compare view ------------------------------------------------------------------------------------


def compare_refs(params: Any) -> list[str]:
    """The experts to compare: `experts=a,b` and/or repeated `expert=a` (the list page's checkboxes)."""
    given = [_text(params, "experts") or ""]
    if hasattr(params, "getlist"):
        given += [v for v in params.getlist("expert") if v.strip()]
    text = ",".join(g for g in given if g)
    if len(text) > MAX_FIELD:
        raise HubError(f"experts: {len(text)} characters, more than the {MAX_FIELD} allowed")
    return _refs(text, "experts", MIN_COMPARE, MAX_COMPARE)


def compare_page(cat: Any, refs: list[str]) -> dict[str, Any]:
    """Side by side: facts, metrics per task (the best marked), the overlap between them, parents."""
    from hubtool.ui.view import _describe, bits_per_entry, fmt

    records = []
    for ref in refs:
        try:
            records.append(cat.get(ref))
        except HubError as err:  # NotFoundError too: an expert the URL names that is not here is bad input
            raise HubError(f"experts: {err}") from None
    if len({r.ref for r in records}) != len(records):
        raise HubError("experts: two of them are the same expert version; name each once")
    infos = [_describe(cat, r) for r in records]
    columns = []
    for rec, info in zip(records, infos):
        bits = bits_per_entry(rec.bytes, rec.nnz, info["weights"], info.get("value_dtype"))
        columns.append({
            "ref": rec.ref, "kind": rec.kind, "task": rec.task, "tasks": ", ".join(rec.tasks),
            "base": rec.base_model + (f" ({rec.base_revision})" if rec.base_revision else ""),
            "keep": "-" if rec.keep_ratio is None else f"{rec.keep_ratio:.3g}",
            "nnz": f"{rec.nnz:,}", "size": human_bytes(rec.bytes), "bytes": f"{rec.bytes:,}",
            "bits": "-" if bits is None else bits["actual"] + (f" (bound {bits['bound']})" if bits["bound"] else ""),
            "dtype": rec.value_dtype or "-", "created": rec.to_dict()["created_at"],
            "parents": info["lineage"].get("parents", []),
            "tags": ", ".join(rec.tags) or "-",
        })  # fmt: skip
    keys = sorted({(t, m) for r in records for t, per in r.metrics.items() for m in per})
    metrics = []
    for task, metric in keys:
        values = [r.metrics.get(task, {}).get(metric) for r in records]
        present = [v for v in values if v is not None]
        lower = "loss" in metric
        best = (min(present) if lower else max(present)) if len(present) >= 2 else None
        base = infos[0]["base_metrics"].get(task, {}).get(metric) if len({r.base_model for r in records}) == 1 else None
        metrics.append({"task": task, "metric": metric, "lower": lower, "base": fmt(base),
                        "cells": [{"text": fmt(v), "best": best is not None and v == best} for v in values]})  # fmt: skip
    overlap, why = None, None
    bases = {(r.base_model, r.base_revision) for r in records}
    if len(bases) > 1:
        why = "they are of different base models (or revisions): their positions don't compare"
    else:
        from hubtool.merge.compose import build_recipe
        from hubtool.merge.overlap import pairwise_overlap
        from hubtool.merge.plan import make_plan

        try:
            plan = make_plan(cat, build_recipe(experts=[r.ref for r in records]))
            overlap = report_data(pairwise_overlap(plan), plan)
        except HubError as err:  # e.g. a blob that is not on this disk
            why = " ".join(str(err).split())
    return {"columns": columns, "metrics": metrics, "overlap": overlap, "overlap_missing": why,
            "refs": [r.ref for r in records]}  # fmt: skip


# -- the compose dry-run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComposeQuery:
    """The compose form's fields, as `hub compose` takes them (blank: the default)."""

    tasks: str | None = None
    experts: str | None = None
    method: str | None = None
    where: str | None = None
    pick: str | None = None
    weights: str | None = None
    density: str | None = None
    lam: str | None = None  # the form's `lambda`
    seed: str | None = None
    normalize: str | None = None  # "", "yes", "no"
    output: str | None = None  # "expert" (default) or "model"
    name: str | None = None  # the merged expert's name (--as-expert)

    @classmethod
    def from_params(cls, params: Any) -> ComposeQuery:
        values = {f.name: _text(params, "lambda" if f.name == "lam" else f.name) for f in fields(cls)}
        return cls(**values)

    @property
    def asked(self) -> bool:
        return bool(self.tasks or self.experts)

    def arguments(self) -> dict[str, Any]:
        """compose()'s keyword arguments, each field checked (HubError naming it)."""
        from hubtool.merge.methods import METHODS

        if self.tasks and self.experts:
            raise HubError("tasks and experts: give one of them (experts are named; tasks pick one each)")
        if self.experts:
            _refs(self.experts, "experts", 1, MAX_OVERLAP)
        if self.method is not None and self.method not in METHODS:
            raise HubError(f"method {shown(self.method, 40)}: expected one of {', '.join(METHODS)}")
        if self.pick is not None and self.pick not in PICKS:
            raise HubError(f"pick {shown(self.pick, 40)}: expected best or latest")
        if self.normalize is not None and self.normalize not in NORMALIZE:
            raise HubError(f"normalize {shown(self.normalize, 40)}: expected yes, no or blank (the method's default)")
        if self.output is not None and self.output not in OUTPUTS:
            raise HubError(f"output {shown(self.output, 40)}: expected expert or model")
        weights = None
        if self.weights is not None:
            weights = [_number(w, "weights") for w in self.weights.split(",") if w.strip()]
        seed = None
        if self.seed is not None:
            if not self.seed.isdigit() or len(self.seed) > 10:
                raise HubError(f"seed {shown(self.seed, 40)}: expected a whole number of at least 0")
            seed = int(self.seed)
        return {
            "tasks": self.tasks, "experts": self.experts, "method": self.method, "where": self.where,
            "pick": self.pick, "weights": weights, "seed": seed,
            "density": None if self.density is None else _number(self.density, "density"),
            "lam": None if self.lam is None else _number(self.lam, "lambda"),
            "normalize": NORMALIZE[self.normalize or ""],
            "as_expert": self.expert_name() if self.output != "model" else None,
        }  # fmt: skip

    def expert_name(self) -> str:
        from hubtool.registry.lookup import NAME

        name = self.name or "merged"
        if not NAME.fullmatch(name):
            raise HubError(f"name {shown(name, 60)}: expected letters, digits, '.', '_' or '-' (at most 128)")
        return name

    def command(self) -> str:
        """The `hub compose ... --dry-run` that prints the same plan."""
        args = ["hub", "compose"]
        for option, value in (("--tasks", self.tasks), ("--experts", self.experts), ("--method", self.method),
                              ("--where", self.where), ("--pick", self.pick), ("--weights", self.weights),
                              ("--density", self.density), ("--lambda", self.lam), ("--seed", self.seed)):  # fmt: skip
            if value is not None:
                args += [option, value]
        if self.normalize in ("yes", "no"):
            args.append("--normalize" if self.normalize == "yes" else "--no-normalize")
        if self.output != "model":
            args += ["--as-expert", self.name or "merged"]
        return shlex.join([*args, "--dry-run"])

    def form(self) -> dict[str, str]:
        return {("lambda" if f.name == "lam" else f.name): getattr(self, f.name) or "" for f in fields(self)}


def _number(text: str, field: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise HubError(f"{field} {shown(text, 40)}: expected a finite number")
    return value


def methods() -> list[dict[str, Any]]:
    """The merge registry (hubtool/merge/methods.py; importing it imports no torch): name, params, one line."""
    from hubtool.merge.methods import METHODS
    from hubtool.merge.recipe import DEFAULT_METHOD

    return [{"name": name, "params": ", ".join("lambda" if p == "lam" else p for p in spec.params) or "-",
             "doc": spec.doc, "default": name == DEFAULT_METHOD} for name, spec in METHODS.items()]  # fmt: skip


def compose_page(cat: Any, query: ComposeQuery) -> dict[str, Any]:
    """`hub compose --dry-run`'s answer: the plan (expert per task, and why), the per-layer overlap
    (entries touched by 1..N experts) and the estimated output size. Writes nothing: compose(dry_run=True)
    reads the catalog and the experts' positions. A model folder's size needs the base model's files on
    this machine; a page never downloads them (nor converts an embedded model), so without them it says so."""
    if not query.asked:
        return {"plan": None}
    args = query.arguments()
    from hubtool.apply import local_base_shapes
    from hubtool.merge.compose import _estimate_bytes, compose
    from hubtool.merge.overlap import layer_of

    # as a merged expert first (nothing downloaded); a model folder's size is then estimated only from local files
    result = compose(**(args | {"as_expert": args["as_expert"] or "merged"}), dry_run=True, catalog=cat)
    plan = result.plan
    counts = result.overlap or {}
    size, size_note = result.output_bytes, None
    if args["as_expert"] is None:
        if local_base_shapes(plan.base_model) is not None:
            size = _estimate_bytes(plan, counts, model=True)
        else:
            size = None
            size_note = (f"the base model {plan.base_model}'s files are not on this machine; a model folder's size "
                         "is not estimated here (a page never downloads; the command does)")  # fmt: skip
    n = len(plan.choices)
    by_layer: dict[str, list[int]] = {}
    for weight, hist in counts.items():
        acc = by_layer.setdefault(layer_of(weight), [0] * n)
        for i, v in enumerate(hist):
            acc[i] += v
    from hubtool.merge.overlap import _layer_order

    def share(hist: list[int]) -> str:
        touched = sum(hist)
        return f"{100 * (touched - hist[0]) / touched:.1f}%" if touched and hist else "-"

    layers = [{"layer": key, "counts": [f"{v:,}" for v in hist], "share": share(hist)}
              for key, hist in sorted(by_layer.items(), key=lambda kv: _layer_order(kv[0]))]  # fmt: skip
    total = [sum(h[i] for h in by_layer.values()) for i in range(n)]
    return {
        "plan": {
            "method": plan.recipe.method,
            "base_model": plan.base_model,
            "choices": [{"task": c.task, "ref": c.ref, "kind": c.record.kind, "weight": f"{c.weight:g}",
                         "chosen": c.reason} for c in plan.choices],
            "recipe": plan.recipe.to_yaml(),
        },
        "k": list(range(1, n + 1)),
        "layers": layers,
        "total": {"counts": [f"{v:,}" for v in total], "share": share(total)},
        "output": "merged expert" if args["as_expert"] else "model folder",
        "size": None if size is None else human_bytes(size),
        "size_bytes": None if size is None else f"{size:,}",
        "size_note": size_note,
        "overlap_link": ",".join(c.ref for c in plan.choices) if MIN_OVERLAP <= n <= MAX_OVERLAP else None,
    }
