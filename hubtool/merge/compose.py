"""`compose(...)`: a catalog query -> a plan -> a merged model folder or a merged expert (what `hub compose` calls).

    from hubtool import compose
    result = compose(tasks=["qa", "summarize"], out="merged")                 # HF model folder
    result = compose(tasks=["qa"], method="ties", density=0.2, as_expert="qa-ties")  # catalog expert
    result = compose(config="recipe.yml", dry_run=True)                        # just the plan

Everything that can be checked is checked before any tensor is read: the recipe, the output path or
expert name, the experts (one base model and revision), their blobs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubtool import checks
from hubtool.data.metrics import HEADLINE
from hubtool.errors import HubError
from hubtool.merge.plan import Plan, make_plan, overlap
from hubtool.merge.recipe import ExpertSpec, Recipe

# The metric retention is reported on, per task: the first the single expert has.


@dataclass
class ComposeResult:
    plan: Plan
    out: Path | None = None  # the model folder written
    record: Any | None = None  # the merged expert registered
    overlap: dict[str, list[int]] | None = None  # dry run: per-weight entries touched by 1..N experts
    output_bytes: int | None = None  # dry run: estimated size of what would be written
    evaluation: list[dict[str, Any]] = field(default_factory=list)  # --eval rows, one per task


def build_recipe(
    tasks: list[str] | str | None = None,
    *,
    experts: list[str] | str | None = None,
    method: str | None = None,
    where: str | None = None,
    pick: str | None = None,
    weights: list[float] | None = None,
    density: float | None = None,
    lam: float | None = None,
    seed: int | None = None,
    normalize: bool | None = None,
    dtype: str | None = None,
    config: str | os.PathLike | None = None,
) -> Recipe:
    """A recipe from a YAML file and/or arguments; arguments given override the file's values."""
    recipe = Recipe.from_yaml(config) if config is not None else Recipe()
    tasks = checks.items(tasks)
    refs = checks.items(experts)
    if tasks:
        recipe.tasks, recipe.experts = tasks, ([] if not refs else recipe.experts)
    if refs:
        recipe.experts = [ExpertSpec(r) for r in refs]
    if weights is not None and recipe.tasks and not refs:
        if len(weights) != len(recipe.tasks):
            raise HubError(f"--weights: {len(weights)} numbers for {len(recipe.tasks)} --tasks items; give one each")
        recipe.task_weights = [float(w) for w in weights]
    elif weights is not None:
        if len(weights) != len(recipe.experts):
            raise HubError(f"--weights: {len(weights)} numbers for {len(recipe.experts)} experts")
        for spec, w in zip(recipe.experts, weights):
            spec.weight = float(w)
    for key, value in (("method", method), ("where", where), ("pick", pick), ("density", density), ("lam", lam),
                       ("seed", seed), ("normalize", normalize), ("dtype", dtype)):
        if value is not None:
            setattr(recipe, key, value)
    return recipe.check("compose" if config is None else str(config))


def compose(
    tasks: list[str] | str | None = None,
    *,
    experts: list[str] | str | None = None,
    method: str | None = None,
    where: str | None = None,
    pick: str | None = None,
    weights: list[float] | None = None,
    density: float | None = None,
    lam: float | None = None,
    seed: int | None = None,
    normalize: bool | None = None,
    dtype: str | None = None,
    config: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    as_expert: str | None = None,
    dry_run: bool = False,
    catalog: Any = None,
    threads: int = 2,
    progress: Any = None,
    evaluate: bool = False,
) -> ComposeResult:
    """Merge the experts a query selects into a model folder (`out`) or a merged expert (`as_expert`).
    With `evaluate` (evaluate_result follows), the experts' stored eval settings are checked first, so
    a bad one stops the compose before anything is written."""
    from hubtool.hub.pull import hub_download
    from hubtool.registry import Catalog
    from hubtool.registry.lookup import NAME

    recipe = build_recipe(tasks, experts=experts, method=method, where=where, pick=pick, weights=weights,
                          density=density, lam=lam, seed=seed, normalize=normalize, dtype=dtype, config=config)
    if not dry_run and (out is None) == (as_expert is None):
        raise HubError("compose: give exactly one of --out DIR (a model folder) or --as-expert NAME")
    out_path = None
    if out is not None:
        out_path = Path(out).expanduser().absolute()
        if out_path.exists() and (not out_path.is_dir() or any(out_path.iterdir())):
            raise HubError(f"--out {out}: {out_path} already exists; expected a new (or empty) folder")
    if as_expert is not None and not NAME.fullmatch(as_expert):
        raise HubError(f"--as-expert {as_expert!r}: expected letters, digits, '.', '_' or '-' (at most 128)")
    cat = Catalog.open(catalog, download=hub_download())
    plan = make_plan(cat, recipe)
    if evaluate:
        for choice in plan.choices:
            eval_settings(choice)
    result = ComposeResult(plan)
    if dry_run:
        result.overlap = overlap(plan)
        result.output_bytes = _estimate_bytes(plan, result.overlap, model=as_expert is None)
        return result
    from hubtool.merge import execute

    if out_path is not None:
        result.out = execute.write_model(plan, out_path, threads=threads, progress=progress,
                                         card=lambda folder: write_card(plan, folder))
        return result
    result.record = register_merged(cat, plan, as_expert, threads=threads, progress=progress)
    return result


def register_merged(cat: Any, plan: Plan, name: str, *, threads: int = 2, progress: Any = None) -> Any:
    """Build the merged expert and register it with lineage rows to its parents."""
    from hubtool.api import register_expert
    from hubtool.merge.execute import merged_expert

    expert = merged_expert(plan, name, threads=threads, progress=progress)
    parents = [{"ref": c.ref, "weight": c.weight, "role": f"merge:{plan.recipe.method}"} for c in plan.choices]
    return register_expert(cat, expert, name=name, task=plan.tasks[0], tasks=plan.tasks[1:], parents=parents,
                           tags=["merged", plan.recipe.method])


def _estimate_bytes(plan: Plan, counts: dict[str, list[int]], *, model: bool) -> int:
    """A model folder: the base's weights at the output dtype. A merged expert: ~2.75 bytes per
    union entry (bf16 value + compressed position), the measured packed size at keep ratio 0.05; for a
    dense method (iso-c) every entry of every merged weight, stored as a full delta at the parents' dtype."""
    from hubtool.merge.methods import METHODS

    if not model and METHODS[plan.recipe.method].dense:
        dtypes = {c.header()["value_dtype"] for c in plan.choices}  # as merged_expert chooses it
        itemsize = 4 if "float32" in dtypes else 2
        return sum(int(r) * int(c) for r, c in (plan.shapes[w] for w in plan.weights)) * itemsize
    if not model:
        return int(sum(sum(c) for c in counts.values()) * 2.75)
    from safetensors import safe_open

    from hubtool.merge.execute import base_folder, shard_layout

    folder = base_folder(plan.base_model)
    total = 0
    size = {"bfloat16": 2, "float16": 2, "float32": 4}.get(plan.recipe.dtype or "", None)
    for shard, names in shard_layout(folder):
        with safe_open(str(folder / shard), framework="pt") as f:
            for n in names:
                sl = f.get_slice(n)
                numel = 1
                for d in sl.get_shape():
                    numel *= d
                total += numel * (size or _itemsize(sl.get_dtype()))
    return total


def _itemsize(dtype: str) -> int:
    return {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "U8": 1, "I8": 1, "BOOL": 1}.get(dtype, 4)


# --- the model card ------------------------------------------------------------------------------------


def write_card(plan: Plan, folder: Path) -> None:
    """README.md with HF model-card metadata (base_model, base_model_relation: merge, parents, recipe)."""
    from huggingface_hub import ModelCard, ModelCardData

    from hubtool.hub.card import base_hub_id
    from hubtool.merge.execute import provenance

    tasks = plan.tasks
    # The Hub checks base_model names a real model: the embedded base's Hub id; a local folder has none.
    hub_base = base_hub_id(plan.base_model)
    data = ModelCardData(
        base_model=hub_base,
        base_model_relation="merge",
        library_name="transformers",
        tags=["hubtool", "merge", "sparse-experts", plan.recipe.method, *tasks],
        hubtool=provenance(plan),
    )
    parents = "\n".join(
        f"| {c.ref} | {c.task} | {c.record.kind} | {c.weight:g} | `{c.record.sha256[:12]}` | {c.reason} |"
        for c in plan.choices
    )
    text = (
        f"---\n{data.to_yaml()}\n---\n\n"
        f"# Merged model: {', '.join(tasks)}\n\n"
        f"{len(plan.choices)} hubtool experts merged into `{plan.base_model}` with `{plan.recipe.method}`.\n\n"
        "| expert | task | kind | weight | sha256 | chosen |\n|---|---|---|---|---|---|\n"
        f"{parents}\n\n"
        "## Recipe\n\nReproduce this model with `hub compose --config hubtool_recipe.yml --out DIR`:\n\n"
        f"```yaml\n{plan.recipe.to_yaml()}```\n"
    )
    ModelCard(text).save(folder / "README.md")


def recipe_from_card(folder: str | os.PathLike) -> Recipe:
    """The recipe embedded in a composed folder's model card (the YAML block under '## Recipe')."""
    import yaml
    from huggingface_hub import ModelCard

    card = ModelCard.load(Path(folder) / "README.md")
    meta = card.data.to_dict().get("hubtool") or {}
    if "recipe" not in meta:
        raise HubError(f"{folder}/README.md: no hubtool recipe in the model card metadata")
    return Recipe.from_dict(yaml.safe_load(yaml.safe_dump(meta["recipe"])), f"{folder}/README.md")


# --- evaluating the result ------------------------------------------------------------------------------

# The eval settings train() stores under config["eval"], and what each may hold (None: the default).
_EVAL_KEYS = ("split", "limit", "max_new_tokens", "max_prompt_tokens")


def eval_settings(choice: Any) -> dict[str, Any]:
    """The settings the chosen expert was scored with (its config["eval"]), checked: a mapping of split
    (train | validation | test), limit (a whole number >= 0, or null: all), max_new_tokens (>= 1) and
    max_prompt_tokens (>= 1, or null). A record from elsewhere (a pull, an import) may hold anything."""
    from hubtool.data.files import SPLITS
    from hubtool.errors import shown

    config = choice.record.config
    raw = config.get("eval") if isinstance(config, dict) else None
    where = f"expert {choice.ref}: config.eval"
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise HubError(f"{where}: expected a mapping of {', '.join(_EVAL_KEYS)}, got {shown(raw, 60)}")
    settings = {k: raw[k] for k in _EVAL_KEYS if raw.get(k) is not None}
    split = settings.get("split")
    if split is not None and split not in SPLITS:
        raise HubError(f"{where}.split: expected train, validation or test, got {shown(split, 60)}")
    for key, low in (("limit", 0), ("max_new_tokens", 1), ("max_prompt_tokens", 1)):
        value = settings.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise HubError(f"{where}.{key}: expected a whole number of at least {low}, got {shown(value, 60)}")
    return settings



def evaluate_result(
    result: ComposeResult,
    *,
    catalog: Any = None,
    limit: int | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 8,
) -> list[dict[str, Any]]:
    """Score the merged model on every task it covers, next to each single expert's stored score and
    the base model's; retention = merged / single expert, in percent, on the task's headline metric.

    Each task is scored with the settings its expert was scored with at training (split, limit,
    max_new_tokens, from the expert's config), so the two numbers are comparable; `limit` and
    `max_new_tokens` override them. Stored on the merged expert, or in the folder's hubtool.json."""
    import json

    import torch

    from hubtool.apply import apply_expert
    from hubtool.data import load_task
    from hubtool.evaluate import score
    from hubtool.models import load_base
    from hubtool.registry import Catalog

    cat = Catalog.open(catalog)
    plan = result.plan
    stored = {c.ref: eval_settings(c) for c in plan.choices}  # bad settings fail before the model loads
    tasks = {t: load_task(t, catalog=cat) for t in plan.tasks}  # a bad task fails before the model loads
    if result.out is not None:
        model, tokenizer = load_base(str(result.out), dtype=torch.float32)
    else:
        model, tokenizer = load_base(plan.base_model, dtype=torch.float32)
        apply_expert(model, cat.load(result.record.ref))
    if tokenizer is None:
        raise HubError(f"{result.out or plan.base_model}: no tokenizer files; evaluation needs one")
    rows = []
    for task, data in tasks.items():
        choice = next(c for c in plan.choices if c.task == task)
        settings = stored[choice.ref]
        kept = settings.get("limit", 200)  # 0: the expert was never scored; score the merge on 200
        n = limit if limit is not None else (200 if kept == 0 else kept)
        new_tokens = max_new_tokens if max_new_tokens is not None else settings.get("max_new_tokens", 64)
        split = settings.get("split", "test")
        scored = score(model, tokenizer, data, split=split, limit=n, batch_size=batch_size,
                       max_new_tokens=new_tokens, max_prompt_tokens=settings.get("max_prompt_tokens"))
        merged = scored.metrics
        single = (choice.record.metrics or {}).get(task, {})
        base = cat.base_metrics(plan.base_model, task)
        metric = next((m for m in HEADLINE if m in merged and m in single), next(iter(merged), None))
        retention = None
        if metric is not None and single.get(metric):
            retention = 100.0 * merged[metric] / single[metric]
        rows.append({"task": task, "expert": choice.ref, "metric": metric, "merged": merged.get(metric),
                     "single": single.get(metric), "base": base.get(metric), "retention": retention,
                     "scores": merged, "examples": int(scored.run["n"]), "split": split})
        if result.record is not None:  # an --as-expert merge: its metrics and per-example outcomes, as any expert's
            scored.store(cat, result.record.ref)
    if result.out is not None:
        from hubtool.fileio import atomic_write
        from hubtool.merge.execute import PROVENANCE_FILE

        path = Path(result.out) / PROVENANCE_FILE
        data = json.loads(path.read_text()) | {"evaluation": rows}
        with atomic_write(path) as f:
            f.write((json.dumps(data, indent=2) + "\n").encode())
    result.evaluation = rows
    return rows
