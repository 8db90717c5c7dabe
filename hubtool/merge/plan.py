"""The compose plan: which experts, which weights, which method — decided before any tensor is read.

    recipe ──► choose(catalog) ──► Plan(choices, weights: {weight: [expert index, ...]}, base model)
                                     │  (dry run: print it, with per-layer overlap and output size)
                                     ▼
                           execute.write_model / execute.merged_expert   (hubtool.merge.execute)

Choosing: each item of `tasks` is a task or a category (Catalog.tasks_for); a category stands for all
of its tasks that have experts. One expert per task: the best on its stored task metric (accuracy,
then rougeL, then exact_match; the latest when none has one), or the latest with pick=latest, or the
recipe's explicit experts. Merged experts are never picked by a query (name them explicitly). All
chosen experts must share one base model and revision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hubtool.errors import HubError, NotFoundError
from hubtool.merge.recipe import ExpertSpec, Recipe

# The metric that ranks experts of a task, first one present wins; all are higher-is-better.
RANKING_METRICS = ("accuracy", "rougeL", "exact_match")


@dataclass
class Choice:
    ref: str  # NAME@VERSION
    task: str  # the task it was chosen for (its primary task when named explicitly)
    weight: float
    reason: str  # "best rougeL 31.2 of 3", "latest of 2 (none has a metric)", "named"
    record: Any  # the catalog's ExpertRecord
    path: Any  # its blob file

    def header(self) -> dict[str, Any]:
        from hubtool.format.header import read_header

        return read_header(self.path)


@dataclass
class Plan:
    recipe: Recipe  # resolved: experts pinned to NAME@VERSION and sha256
    choices: list[Choice]
    base_model: str
    base_revision: str | None
    weights: dict[str, list[int]] = field(default_factory=dict)  # weight -> indexes into choices
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(c.task for c in self.choices))

    def readers(self) -> list[Any]:
        from hubtool.format import ExpertReader

        return [ExpertReader(c.path) for c in self.choices]


def choose(catalog: Any, recipe: Recipe) -> list[Choice]:
    """The experts a recipe means, with why each was chosen; checks blobs, sha256 pins and bases."""
    if recipe.experts:
        choices = []
        for spec in recipe.experts:
            rec = catalog.get(spec.ref)
            if spec.sha256 and spec.sha256 != rec.sha256:
                raise HubError(
                    f"recipe expert {spec.ref}: sha256 {spec.sha256[:12]}… pinned, the catalog's {rec.ref} "
                    f"is {rec.sha256[:12]}…"
                )
            choices.append(Choice(rec.ref, rec.task, spec.weight, "named", rec, catalog.blob_path(rec)))
    else:
        choices = _query(catalog, recipe)
    refs = [c.ref for c in choices]
    if len(set(refs)) != len(refs):
        dup = next(r for r in refs if refs.count(r) > 1)
        raise HubError(f"expert {dup} is chosen twice; each expert may appear once in a compose")
    _check_one_base(choices, recipe.base_model)
    for c in choices:
        if not c.path.is_file():
            raise NotFoundError(f"{c.ref}: blob {c.path} is missing; run `hub verify`")
    return choices


def _query(catalog: Any, recipe: Recipe) -> list[Choice]:
    tasks: dict[str, float] = {}  # task -> weight of the --tasks item it came from
    for i, spec in enumerate(recipe.tasks):
        found = catalog.tasks_for(spec, with_experts=True)
        if not found:
            raise NotFoundError(f"--tasks {spec}: no task of category {spec!r} has an expert; {_have(catalog)}")
        for t in found:
            tasks.setdefault(t, recipe.task_weights[i] if recipe.task_weights else 1.0)
    choices = []
    for task, weight in tasks.items():
        candidates = [r for r in catalog.list(task=task, where=recipe.where) if r.kind != "merged"]
        if not candidates:
            why = f" matching --where {recipe.where!r}" if recipe.where else ""
            raise NotFoundError(f"task {task!r} has no expert{why}; {_have(catalog)}")
        rec, reason = _pick(candidates, task, recipe.pick)
        choices.append(Choice(rec.ref, task, weight, reason, rec, catalog.blob_path(rec)))
    return choices


def _have(catalog: Any) -> str:
    tasks = sorted({t for r in catalog.list() if r.kind != "merged" for t in r.tasks})
    return f"tasks with experts: {', '.join(tasks)}" if tasks else "the catalog has no experts"


def _pick(candidates: list[Any], task: str, pick: str) -> tuple[Any, str]:
    latest = max(candidates, key=lambda r: (r.created_at, r.version))
    n = len(candidates)
    if pick == "latest":
        return latest, f"latest of {n}"
    for metric in RANKING_METRICS:
        scored = [r for r in candidates if metric in (r.metrics.get(task) or {})]
        if scored:
            best = max(scored, key=lambda r: (r.metrics[task][metric], r.created_at, r.version))
            return best, f"best {metric} {best.metrics[task][metric]:.3g} of {n}"
    return latest, f"latest of {n} (none has a {'/'.join(RANKING_METRICS)} score)"


def _check_one_base(choices: list[Choice], wanted: str | None) -> None:
    bases = {(c.record.base_model, c.record.base_revision) for c in choices}
    if len(bases) > 1:
        by_base: dict[str, list[str]] = {}
        for c in choices:
            key = c.record.base_model + (f"@{c.record.base_revision}" if c.record.base_revision else "")
            by_base.setdefault(key, []).append(c.ref)
        listed = "; ".join(f"{b}: {', '.join(refs)}" for b, refs in sorted(by_base.items()))
        raise HubError(f"the chosen experts do not share one base model and revision ({listed})")
    base = next(iter(bases))[0]
    if wanted is not None and wanted != base:
        raise HubError(f"recipe base_model {wanted!r}, but the chosen experts are of {base!r}")


def make_plan(catalog: Any, recipe: Recipe) -> Plan:
    """Choose the experts and map every adapted weight to the experts that touch it (headers only)."""
    recipe.check()
    choices = choose(catalog, recipe)
    # Before anything is allocated per weight (overlap counts, merged values: [out * in] each): each
    # header's shapes must be the base's, or a 5 KB file could claim a weight of 2^40 entries.
    from hubtool.apply import check_against_base, local_base_shapes

    base_model = choices[0].record.base_model
    base_shapes = local_base_shapes(base_model)
    for c in choices:
        check_against_base({n: i["shape"] for n, i in c.header()["weights"].items()}, base_model, c.ref,
                           base_shapes=base_shapes)
    weights: dict[str, list[int]] = {}
    shapes: dict[str, tuple[int, int]] = {}
    for i, c in enumerate(choices):
        for name, info in c.header()["weights"].items():
            shape = tuple(info["shape"])
            if shapes.setdefault(name, shape) != shape:
                raise HubError(f"{c.ref}: weight {name} has shape {list(shape)}, other experts {list(shapes[name])}")
            weights.setdefault(name, []).append(i)
    first = choices[0].record
    resolved = Recipe(
        method=recipe.method, tasks=list(recipe.tasks), task_weights=recipe.task_weights, where=recipe.where,
        pick=recipe.pick,
        experts=[ExpertSpec(c.ref, c.weight, c.record.sha256) for c in choices],
        density=recipe.density, lam=recipe.lam, seed=recipe.seed, normalize=recipe.normalize, dtype=recipe.dtype,
        base_model=first.base_model,
    )
    return Plan(resolved, choices, first.base_model, first.base_revision, weights, shapes)


def overlap(plan: Plan) -> dict[str, list[int]]:
    """Per weight: [entries touched by exactly 1 expert, by 2, ..., by N] (reads positions, not the base)."""
    import torch

    readers = plan.readers()
    n = len(plan.choices)
    out: dict[str, list[int]] = {}
    for name, idx in plan.weights.items():
        shape = plan.shapes[name]
        count = torch.zeros(shape[0] * shape[1], dtype=torch.int16)
        for i in idx:
            pos, _ = readers[i].read(name).entries()
            count[pos] += 1
        out[name] = torch.bincount(count.long(), minlength=n + 1)[1:].tolist()
    return out
