"""`train(...)`: one expert from a task, end to end (what `hub train` calls).

    base model + task data -> tokenized examples -> Adapter + Trainer -> expert -> evaluate
    -> pack to <out_dir>/<name>.safetensors -> register in the catalog with config, data fingerprint, metrics

Each step is another module's job (hubtool.models, hubtool.data, hubtool.sparse, hubtool.evaluate,
hubtool.format, hubtool.registry); this file only wires them. Imports are inside the function so
`import hubtool.train` costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from hubtool.delta.kinds import DEFAULT_LR, MASKED_EXPERT_KINDS, get_kind
from hubtool.sparse.config import AdapterConfig, TrainConfig, check_fields, checked

__all__ = ["AdapterConfig", "TrainConfig", "TrainResult", "train"]


@dataclass
class TrainResult:
    name: str
    task: str
    kind: str
    path: Path | None  # the packed expert (None when interrupted)
    record: Any | None  # the catalog's ExpertRecord when registered
    metrics: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    steps: int = 0
    interrupted: bool = False  # Ctrl-C: a checkpoint was saved, run again with resume=True
    out_dir: Path | None = None


def expert_name(task: str, kind: str, name: str | None = None) -> str:
    """The expert's name, checked: `name`, else "<task's base name>-<kind>" (a task folder's name or a
    task file's stem, never its path). A HubError unless it is a catalog name (lookup.NAME): the name
    becomes $HUB_HOME/runs/<name>/<name>.safetensors, so "../x" or "/abs/dir" must never get that far."""
    from hubtool.errors import HubError
    from hubtool.registry.lookup import NAME

    rule = "letters, digits, '.', '_' or '-', starting with a letter or digit, at most 128"
    if name is not None:
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise HubError(f"--name {name!r}: expected an expert name ({rule}), not a path")
        return name
    path = Path(task).expanduser()
    stem = path.stem if path.is_file() else (path.resolve().name if path.is_dir() else path.name)
    default = f"{stem}-{kind}"
    if not NAME.fullmatch(default):
        raise HubError(
            f"--task {task!r}: the default expert name {default!r} is not a name ({rule}); pass --name NAME"
        )
    return default


def train(
    task: str,
    *,
    adapter: AdapterConfig | None = None,
    training: TrainConfig | None = None,
    data: str | Path | None = None,
    base: str = "smollm2-135m",
    category: str | None = None,
    name: str | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    catalog: Any = None,
    register: bool = True,
    quiet: bool = False,
    trust_remote_code: bool = False,
    avoid: Sequence[str] = (),
    avoid_catalog: bool = False,
    avoid_beta: float | str | None = None,
    method: str | None = None,
    **settings: Any,
) -> TrainResult:
    """Train, evaluate, pack and register one expert.

    adapter: what is trained (AdapterConfig: kind, targets, keep ratio, mask, rank/alpha, block size);
    training: how (TrainConfig: steps, batch size, lr, seeds, max length, data caps, eval limit). Every
    setting is declared once, with its default, help and rule, in hubtool.sparse.config; `hub train`'s
    options are generated from the same fields. A setting may also be given by its field name as a
    keyword (train("boolq", keep_ratio=0.1, max_steps=40)): it replaces that field of `adapter` or
    `training` (seed: training's). The adapter's seed is the run's seed, TrainConfig.seed.

    `data` is a JSONL/CSV file or task folder that overrides the task's own data; `catalog` is a URL or an
    open Catalog; training.max_train / max_val cap the training and validation examples (the first N of
    each split, so the choice is deterministic); training.eval_limit caps the test examples scored at the
    end (0 skips evaluation). The base model's own code (its config's auto_map) runs only with
    trust_remote_code=True.

    avoid / avoid_catalog / avoid_beta: catalog-aware masks (`hub train --avoid`, see resolve_avoid):
    every mask selection ranks score / (1 + avoid_beta * c), c = how many of those experts keep the
    entry; avoid_beta >= 0 or inf (default 1; inf: disjoint masks while free entries last). They fill in
    adapter.avoid and adapter.avoid_beta.

    method: the old name of adapter.kind (`--method`), still accepted."""
    adapter, training = _configs(adapter, training, settings)
    kind, option = adapter.kind, "--kind"
    if method is not None:
        if kind not in ("sparse", method):
            from hubtool.errors import HubError

            raise HubError(f"--kind {kind} and --method {method}: --method is the old name of --kind; give one")
        kind, option = method, "--method"
    # Before any work: the kind, then the name (it becomes the run folder and the packed file's name).
    get_kind(kind, option)
    name = expert_name(task, kind, name)
    # The settings by their declared rules (as `hub train` parses them), the message naming the option.
    check_fields(adapter)
    check_fields(training)
    # [] until resolved below: checks the kind and beta before anything is loaded
    adapter_cfg = replace(adapter, kind=kind, seed=training.seed, avoid=[] if avoid or avoid_catalog else None,
                          avoid_beta=avoid_beta)
    from hubtool.models import base_id, load_base, resolve_base
    from hubtool.paths import hub_home
    from hubtool.registry.task_loader import load_task

    run_dir = Path(out_dir) if out_dir is not None else hub_home() / "runs" / name
    # With `data`, `task` names that data's task; a name found nowhere offline is looked up in the
    # catalog's tasks table, where earlier training recorded its data source and category.
    task_data = load_task(data or task, name=task if data else None, catalog=catalog)
    if register:
        _check_task(task_data.name, category)  # before the model loads: recording the task must not fail
    cat = None
    if catalog is not None and hasattr(catalog, "register"):
        cat = catalog
    avoided: Avoided | None = None
    if adapter_cfg.avoid is not None:  # before the model loads: a bad --avoid fails in a second
        from hubtool.hub.pull import hub_download
        from hubtool.registry import Catalog

        cat = cat or Catalog(catalog, download=hub_download())
        avoided = resolve_avoid(cat, avoid, every=avoid_catalog, base_model=base_id(base), task=task_data.name)
        adapter_cfg.avoid = [r.ref for r in avoided.counted]
    # Before the weights load: the targets exist and --block-size / --rank fit them (the base's config).
    check_against_base(base, adapter_cfg, trust_remote_code=trust_remote_code)
    import torch  # the checks above but the last stay torch-free, so a bad setting fails at once

    from hubtool.data.prompts import build_training_example
    from hubtool.errors import HubError
    from hubtool.evaluate import pad_id
    from hubtool.format import pack
    from hubtool.sparse.adapters import Adapter
    from hubtool.sparse.trainer import TrainConfig as LoopConfig
    from hubtool.sparse.trainer import Trainer

    # fp32 weights everywhere: deltas of ~lr size vanish when added to a bf16 weight. On GPU the
    # matmuls still run in bf16 under autocast.
    device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    model, tokenizer = load_base(base, dtype=torch.float32, device=device, trust_remote_code=trust_remote_code)
    if tokenizer is None:
        raise HubError(f"base model {base}: no tokenizer files; training needs one to encode the task")
    _, revision = resolve_base(base)
    encode = lambda examples: [build_training_example(tokenizer, ex, training.max_length) for ex in examples]
    train_ids = encode(task_data.train[:training.max_train])
    val_ids = encode(task_data.validation[:training.max_val])

    train_cfg = LoopConfig(
        max_steps=training.max_steps,
        epochs=training.epochs,
        batch_size=training.batch_size,
        grad_accum=training.grad_accum,
        lr=training.lr if training.lr is not None else DEFAULT_LR[kind],
        max_grad_norm=training.max_grad_norm,
        seed=training.seed,
        pad_id=pad_id(tokenizer),
        quiet=quiet,
    )
    coverage = None
    if avoided is not None and avoided.counted:  # counts built once per weight, on the device, by Adapter.apply
        from hubtool.sparse.masks import Coverage

        coverage = Coverage(avoided.sources(cat), adapter_cfg.avoid_beta)
    adapter = Adapter.apply(model, adapter_cfg, coverage=coverage)
    fit = Trainer(model, adapter, train_ids, val_ids, train_cfg, out_dir=run_dir).fit(resume=resume)

    config = {
        "training": {k: v for k, v in vars(train_cfg).items() if k != "quiet"} | {"max_length": training.max_length},
        "data": {
            "task": task_data.name,
            "source": task_data.source,
            "sizes": task_data.sizes,
            "sha256": data_fingerprint(task_data),
        },
        "steps": fit.steps,
        "best_step": fit.best_step,
        # How the stored scores were measured: compose --eval scores a merge the same way.
        "eval": {"split": "test", "limit": training.eval_limit, "max_new_tokens": training.max_new_tokens,
                 "max_prompt_tokens": training.max_length},
    }
    if avoided is not None:
        config["avoid"] = avoided.summary(adapter_cfg.to_dict()["avoid_beta"], coverage)
    result = TrainResult(
        name,
        task_data.name,
        kind,
        None,
        None,
        config=config,
        steps=fit.steps,
        interrupted=fit.interrupted,
        out_dir=run_dir,
    )
    # Data-parallel: every rank trained the same expert; rank 0 alone evaluates, packs and registers it.
    if fit.interrupted or int(os.environ.get("RANK", "0")) != 0:
        return result

    metrics: dict[str, float] = {"train_loss": fit.train_loss or float("nan")}
    if fit.best_val_loss is not None:
        metrics["val_loss"] = fit.best_val_loss
    scored = None
    if training.eval_limit != 0 and task_data.test:
        from hubtool.evaluate import score

        # Prompts cut to the training window, as in training: the expert is scored on what it learnt from.
        # Folded (W + D in W, restored on leaving): plain matmuls instead of a fresh W + D per forward.
        with adapter.folded():
            scored = score(model, tokenizer, task_data, split="test", limit=training.eval_limit,
                           batch_size=training.batch_size, max_new_tokens=training.max_new_tokens,
                           max_prompt_tokens=training.max_length)
        metrics |= scored.metrics
    result.metrics = metrics

    expert = adapter.to_expert(
        name, task_data.name, base_model=base_id(base), base_revision=revision, config=config
    )
    expert.metrics = {task_data.name: metrics}
    if avoided is not None:  # lineage: the experts this one's masks were steered away from
        expert.parents = [{"ref": r.ref, "role": "avoid", "weight": None} for r in avoided.counted]
    result.path = run_dir / f"{name}.safetensors"
    pack(expert, result.path)
    if register:
        from hubtool.registry import Catalog

        cat = cat or Catalog(catalog)
        result.record = cat.register(result.path, metrics={task_data.name: metrics}, config=config)
        if scored is not None:  # the per-example outcomes too: `hub eval --compare` pairs them
            scored.store(cat, result.record.ref)
        cat.record_task(task_data, category=category)  # the task's one home: `hub eval --task` finds it
    return result


def _configs(adapter: AdapterConfig | None, training: TrainConfig | None,
             settings: dict[str, Any]) -> tuple[AdapterConfig, TrainConfig]:
    """train()'s adapter and training configs with the settings given by field name put in, each checked
    by its field's rule first (so a bad one names its option); a name that is neither's: a TypeError."""
    adapter = AdapterConfig() if adapter is None else adapter
    training = TrainConfig() if training is None else training
    if not isinstance(adapter, AdapterConfig) or not isinstance(training, TrainConfig):
        raise TypeError("train(): adapter= takes an AdapterConfig and training= a TrainConfig")
    ours = {f.name for f in fields(TrainConfig)}
    theirs = {f.name for f in fields(AdapterConfig)} - ours - {"avoid", "avoid_beta", "extra"}
    unknown = sorted(set(settings) - ours - theirs)
    if unknown:
        raise TypeError(f"train() got an unexpected keyword argument {unknown[0]!r}")
    training = checked(TrainConfig, {k: v for k, v in settings.items() if k in ours}, training)
    adapter = checked(AdapterConfig, {k: v for k, v in settings.items() if k in theirs}, adapter)
    if adapter.seed not in (0, training.seed):
        from hubtool.errors import HubError

        raise HubError(f"adapter seed {adapter.seed} and training seed {training.seed}: the run has one seed, "
                       "TrainConfig.seed (--seed)")
    return adapter, training


def check_against_base(base: str, adapter: AdapterConfig, *, trust_remote_code: bool = False) -> dict[str, tuple[int, int]]:
    """The target weights' [out, in] from the base's config alone (a model built on the meta device: no
    weight is read), checked against the adapter: a HubError naming --targets when none match, --block-size
    when a B x B tile is larger than a target weight on both sides, --rank when it exceeds min(out, in)
    of a target weight (B @ A already spans every [out, in] matrix there). Without these bounds a typo
    such as --block-size 100000 asks for 10^10 entries per weight before the first step."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from hubtool.errors import HubError
    from hubtool.models import quiet_transformers, resolve_base
    from hubtool.sparse.targets import target_shapes

    source, _ = resolve_base(base)
    trust = bool(trust_remote_code)
    try:
        with quiet_transformers():  # from_config's notes on a meta model are not the user's business
            config = AutoConfig.from_pretrained(source, trust_remote_code=trust)
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        hint = "; pass --trust-remote-code only if you trust that code" if "trust_remote_code" in str(err) else ""
        raise HubError(f"--base {base}: cannot read its config: {first[:300]}{hint}") from None
    try:
        shapes = target_shapes(model, adapter.targets)
    except HubError as err:
        raise HubError(f"--{err}") from None
    for name, (rows, cols) in shapes.items():
        if adapter.kind == "block-sparse" and adapter.block_size > max(rows, cols):
            raise HubError(
                f"--block-size {adapter.block_size}: larger than target weight {name} [{rows}, {cols}] of "
                f"{base} on both sides; expected at most {max(rows, cols)}"
            )
        if adapter.kind == "lora" and adapter.rank > min(rows, cols):
            raise HubError(
                f"--rank {adapter.rank}: more than min(out, in) of target weight {name} [{rows}, {cols}] of "
                f"{base}; expected at most {min(rows, cols)}"
            )
    return shapes


# Kinds whose experts keep a set of positions; LoRA and full deltas cover every entry of their weights.
MASKED_KINDS = MASKED_EXPERT_KINDS


@dataclass
class Avoided:
    """The experts `--avoid` / `--avoid-catalog` mean, resolved: `counted` shape the masks; `skipped`
    (LoRA, full) cover every entry, so counting them would divide every score alike and change nothing."""

    asked: list[str]
    every: bool
    counted: list[Any]  # ExpertRecords, sorted by ref
    skipped: list[Any]

    def sources(self, catalog: Any) -> list[tuple[str, Path]]:
        """(ref, blob file) of each counted expert, the blob checked against its sha256."""
        from hubtool.errors import HubError, NotFoundError
        from hubtool.fileio import sha256_file

        out = []
        for rec in self.counted:
            path = catalog.blob_path(rec)
            if not path.is_file():
                raise NotFoundError(f"--avoid {rec.ref}: blob {path} is missing; run `hub verify`")
            if sha256_file(path) != rec.sha256:
                raise HubError(f"--avoid {rec.ref}: blob {path} does not match its sha256; run `hub verify`")
            out.append((rec.ref, path))
        return out

    def summary(self, beta: float | str, coverage: Any) -> dict[str, Any]:
        """What the expert's config records (provenance; JSON-safe: beta inf is the string "inf")."""
        return {
            "experts": [r.ref for r in self.counted],
            "beta": beta,
            "asked": list(self.asked),
            "catalog": self.every,
            "skipped": [f"{r.ref} ({r.kind}: covers every entry)" for r in self.skipped],
            "dense_weights_skipped": {ref: len(ws) for ref, ws in (coverage.dense if coverage else {}).items()},
            "covered_share": round(coverage.covered_share(), 6) if coverage else 0.0,
        }


def resolve_avoid(catalog: Any, items: Sequence[str] | str, *, every: bool, base_model: str, task: str) -> Avoided:
    """What `--avoid ITEM,...` and `--avoid-catalog` mean in `catalog`, for an expert of `task` on
    `base_model`; a HubError naming --avoid and the item when one means nothing.

    An item is, in this order: an expert ref (NAME, NAME@VERSION, NAME@ALIAS; it must be of the same
    base model), else a task or a category (Catalog.tasks_for): per task, the expert `hub compose
    --tasks` would pick (best by its task metric, else the latest) among the sparse ones of this base
    model, or among all when it has none (a LoRA/full one is then reported as skipped). An item that
    yields no expert is an error. --avoid-catalog adds every expert version of this base model except
    merged ones (their positions are their parents') and the experts of `task` itself (an expert is
    never merged with another of its own task)."""
    from hubtool.errors import HubError, NotFoundError, shown
    from hubtool.merge.plan import _pick

    if isinstance(items, str):
        items = items.split(",")
    found: dict[str, Any] = {}
    for item in items:
        text = item.strip() if isinstance(item, str) else ""
        if not text:
            raise HubError(f"--avoid {shown(item, 40)}: expected a task, a category or an expert NAME[@VERSION]")
        rec = None
        try:
            rec = catalog.get(text)
        except HubError as err:
            if "@" in text:
                raise HubError(f"--avoid {text}: {err}") from None
        if rec is not None:
            if rec.base_model != base_model:
                raise HubError(f"--avoid {text}: {rec.ref} is an expert of base model {rec.base_model}, not {base_model}")
            found.setdefault(rec.ref, rec)
            continue
        try:
            tasks = catalog.tasks_for(text, with_experts=True)
        except NotFoundError as err:
            raise HubError(f"--avoid {text}: no expert of that name, and {err}") from None
        picked = []
        for t in tasks:
            candidates = [r for r in catalog.list(task=t, base=base_model) if r.kind != "merged"]
            masked = [r for r in candidates if r.kind in MASKED_KINDS]
            if candidates:
                picked.append(_pick(masked or candidates, t, "best")[0])
        if not picked:
            what = "task" if tasks == [text] else "category"
            raise HubError(f"--avoid {text}: no expert of {what} {text!r} on base model {base_model}")
        for rec in picked:
            found.setdefault(rec.ref, rec)
    if every:
        for rec in catalog.list(base=base_model):
            if rec.kind != "merged" and task not in rec.tasks:
                found.setdefault(rec.ref, rec)
    recs = sorted(found.values(), key=lambda r: (r.name, r.version))
    return Avoided(
        asked=[str(i) for i in items],
        every=every,
        counted=[r for r in recs if r.kind in MASKED_KINDS],
        skipped=[r for r in recs if r.kind not in MASKED_KINDS],
    )


def _check_task(task: str, category: str | None) -> None:
    """The task and its category become catalog names: a HubError naming the field unless they are."""
    from hubtool.data.tasks import check_category
    from hubtool.errors import HubError
    from hubtool.registry.lookup import NAME

    if not NAME.fullmatch(task):
        raise HubError(
            f"--task {task!r}: expected a task name (letters, digits, '.', '_' or '-'); "
            "with --data, --task names the new task"
        )
    check_category(category, "--category")


def data_fingerprint(task_data: Any) -> str:
    """sha256 of the examples as trained on (every split, in order): two experts with the same
    fingerprint saw the same data."""
    digest = hashlib.sha256()
    for split in ("train", "validation", "test"):
        for ex in task_data.split(split):
            row = [split, ex.input, ex.output, ex.options, ex.answers]
            digest.update(json.dumps(row, ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()


class _CallableModule(types.ModuleType):
    """`from hubtool import train` gives this module once `hubtool.train` has been imported (Python binds
    a package's submodule over its lazy attribute): calling it calls train()."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
