"""The experiment as independent jobs against one catalog, each keyed by its full config.

    sweep   hub train ...            the lr sweep: each kind at a few multiples of its paper lr, one task
    train   hub train ...            one expert per (held-in task, kind, seed)
    eval    hub eval ...             the base and every expert on its own task
    compose hub compose --as-expert  every kind x method x subset size (2, 4, ..., N)
    eval    hub eval ...             every merged expert on its tasks (all N: also the held-out ones)
    tune    hub experiment --stage tune   beyond the paper: overlap-mean with per-task weights tuned
                                          on validation loss

A job's output is a catalog row whose name carries a hash of everything that made it (base model and
revision, task data sha256, every training or merge setting), so a job is done exactly when that row
(or that metric row) exists: a rerun, or a run stopped and started again, skips it. A job is also a
plain command line (`argv`), so a scheduler can run the plan on many machines against one catalog.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass, field
from typing import Any

from hubtool.experiment.presets import (
    DEFAULT_MAX_NEW_TOKENS,
    KINDS,
    MAX_NEW_TOKENS,
    SPARSE_KINDS,
    TUNED,
    Kind,
    Preset,
    subset_sizes,
)

TRAIN_TOKENS_PER_S = 150.0  # measured here in `hub experiment` runs (220 tokens/s in the step itself; padding, loading)
FORWARD_TOKENS_PER_S = 450.0  # scoring options, fp32, batch 8: measured in these runs
NEW_TOKENS_PER_S = 45.0


def digest(obj: Any) -> str:
    """8 hex digits of sha256 over canonical JSON: the cache key carried in a job's output name."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


@dataclass
class Task:
    """A task of the experiment: how commands name it (ref) and what it is (loaded once)."""

    name: str
    ref: str  # a task name or folder, as passed to --task
    data: Any  # TaskData
    sha256: str
    held_out: bool = False

    @property
    def max_new_tokens(self) -> int:
        return MAX_NEW_TOKENS.get(self.data.category or "", DEFAULT_MAX_NEW_TOKENS)

    def tokens(self, max_length: int) -> float:
        """Rough tokens per training example (prompt + answer + chat template), for the ETA."""
        rows = self.data.train[:20] or self.data.test[:20]
        chars = sum(len(e.input) + len(e.output) for e in rows) / max(1, len(rows))
        return min(max_length, chars / 4 + 30)


@dataclass
class Job:
    stage: str
    key: str  # the expert name it makes, or "eval:<target>:<task>"
    argv: list[str]
    cost: float  # estimated seconds, for the ETA
    deps: list[str] = field(default_factory=list)

    def command(self) -> str:
        return shlex.join(self.argv)


@dataclass
class TrainJob(Job):
    task: Task | None = None
    kind: Kind | None = None
    seed: int = 0
    lr: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)  # train()'s: base, adapter, training


@dataclass
class EvalJob(Job):
    target: str | None = None  # an expert name; None: the base model
    task: Task | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # the evaluate() keyword arguments


@dataclass
class ComposeJob(Job):
    kind: str = ""
    method: str = ""
    experts: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    weights: list[float] | None = None  # None: the method's defaults; a tune job fills them in


@dataclass
class Plan:
    jobs: list[Job]
    complete: bool  # False: the lr sweep is not done, so the training jobs are not known yet
    lrs: dict[str, float]  # kind -> the learning rate its experts train with
    sweep: dict[str, dict[float, str]]  # kind -> lr -> sweep expert name
    experts: dict[tuple[str, str, int], str]  # (task, kind, seed) -> expert name
    merges: list[ComposeJob]


class Planner:
    """Builds the job list from a preset and what the catalog already holds (the sweep's results)."""

    def __init__(self, preset: Preset, tasks: list[Task], *, base: str, base_key: dict[str, Any],
                 catalog_url: str, catalog: Any) -> None:
        self.preset, self.tasks, self.base, self.catalog_url, self.catalog = preset, tasks, base, catalog_url, catalog
        self.base_key = base_key  # base model id and revision: part of every cache key
        self.held_in = [t for t in tasks if not t.held_out]

    # --- the jobs -------------------------------------------------------------------------------------

    def train_job(self, task: Task, kind: Kind, seed: int, lr: float, stage: str = "train") -> TrainJob:
        p = self.preset
        from hubtool.sparse.config import AdapterConfig, TrainConfig

        adapter = AdapterConfig(kind=kind.method, targets=kind.targets, keep_ratio=p.keep_ratio, rank=p.rank,
                                alpha=p.alpha, block_size=p.block_size, mask_interval=p.mask_interval,
                                mask_steps=p.mask_steps, seed=seed)
        training = TrainConfig(max_steps=p.steps, batch_size=p.batch_size, lr=lr, seed=seed,
                               max_length=p.max_length, max_train=p.max_train, max_val=p.max_val, eval_limit=0)
        settings = {"base": self.base, "adapter": adapter, "training": training}
        # The cache key: these names and values exactly (a change would retrain every cached expert;
        # tests/test_train_options.py pins one).
        key = {
            "base": self.base_key, "method": kind.method, "targets": kind.targets, "keep_ratio": p.keep_ratio,
            "max_steps": p.steps, "batch_size": p.batch_size, "lr": lr, "seed": seed, "max_length": p.max_length,
            "max_train": p.max_train, "max_val": p.max_val, "rank": p.rank, "alpha": p.alpha,
            "block_size": p.block_size, "mask_interval": p.mask_interval, "mask_steps": p.mask_steps,
            "task": task.name, "data": task.sha256,
        }  # fmt: skip
        if kind.method in ("lora", "full"):  # settings that do not change these kinds' training
            for unused in ("keep_ratio", "block_size", "mask_interval", "mask_steps"):
                key.pop(unused)
        if kind.method != "lora":
            key.pop("rank"), key.pop("alpha")
        name = f"{task.name}-{kind.label}-s{seed}-{digest(key)}"
        argv = ["hub", "train", "--task", task.ref, "--base", self.base, "--method", kind.method,
                "--targets", kind.targets, "--keep-ratio", str(p.keep_ratio), "--max-steps", str(p.steps),
                "--batch-size", str(p.batch_size), "--lr", repr(lr), "--seed", str(seed),
                "--max-length", str(p.max_length), "--max-train", str(p.max_train), "--max-val", str(p.max_val),
                "--rank", str(p.rank), "--alpha", f"{p.alpha:g}", "--block-size", str(p.block_size),
                "--mask-interval", str(p.mask_interval), "--mask-steps", str(p.mask_steps),
                "--eval-limit", "0", "--name", name, "--quiet", "--catalog", self.catalog_url]  # fmt: skip
        tokens = p.steps * p.batch_size * task.tokens(p.max_length)
        val = 5 * p.max_val * task.tokens(p.max_length) / FORWARD_TOKENS_PER_S
        return TrainJob(stage, name, argv, tokens / TRAIN_TOKENS_PER_S + val + 15, [], task, kind, seed, lr, settings)

    def eval_job(self, target: str | None, task: Task) -> EvalJob:
        p = self.preset
        n = min(p.eval_limit, len(task.data.test))
        settings = {"split": "test", "limit": p.eval_limit, "max_new_tokens": task.max_new_tokens,
                    "batch_size": p.batch_size, "max_prompt_tokens": p.max_length}
        what = ["--base", self.base] if target is None else [target]
        argv = ["hub", "eval", *what, "--task", task.ref, "--limit", str(p.eval_limit),
                "--max-new-tokens", str(task.max_new_tokens), "--max-prompt-tokens", str(p.max_length),
                "--batch-size", str(p.batch_size), "--catalog", self.catalog_url]  # fmt: skip
        ex = task.data.test[0] if task.data.test else None
        if ex is not None and ex.options:
            cost = n * len(ex.options) * task.tokens(p.max_length) / FORWARD_TOKENS_PER_S
        else:
            cost = n * task.max_new_tokens / NEW_TOKENS_PER_S + n * task.tokens(p.max_length) / FORWARD_TOKENS_PER_S
        return EvalJob("eval", f"eval:{target or 'base'}:{task.name}", argv, cost + 1,
                       [] if target is None else [target], target, task, settings)

    def compose_job(self, kind: str, method: str, experts: list[str], tasks: list[str], *,
                    tuned: bool = False) -> ComposeJob:
        label = "tuned" if tuned else method
        key = {"experts": experts, "method": method, "tuned": list(self.preset.tune_weights) if tuned else None}
        if tuned:
            key["merge"] = "rescaled-overlap-mean"  # the weights act outside the ratio (runner.TUNED_METHOD)
        name = f"merge-{kind}-{label}-n{len(experts)}-{digest(key)}"
        if tuned:
            argv = ["hub", "experiment", "--preset", self.preset.name, *self.preset.overrides, "--stage", "tune",
                    "--catalog", self.catalog_url]
            cost = (1 + len(self.preset.tune_weights) * len(tasks)) * sum(
                self.preset.max_val * t.tokens(self.preset.max_length) / FORWARD_TOKENS_PER_S
                for t in self.held_in)
        else:
            argv = ["hub", "compose", "--experts", ",".join(experts), "--method", method,
                    "--as-expert", name, "--catalog", self.catalog_url]
            cost = 3.0 + len(experts)
        return ComposeJob("tune" if tuned else "compose", name, argv, cost, list(experts), kind,
                          TUNED if tuned else method, list(experts), list(tasks))

    # --- the plan -------------------------------------------------------------------------------------

    def plan(self) -> Plan:
        p = self.preset
        jobs: list[Job] = []
        lrs: dict[str, float] = {}
        sweep: dict[str, dict[float, str]] = {}
        complete = True
        for label in p.kinds:
            kind = KINDS[label]
            if not p.sweep:
                lrs[label] = kind.lr * p.lr_factor
                continue
            runs = {kind.lr * f: self.train_job(self.held_in[0], kind, p.merge_seed, kind.lr * f, "sweep") for f in p.sweep}
            sweep[label] = {lr: j.key for lr, j in runs.items()}
            jobs += runs.values()
            losses = {lr: self._val_loss(j.key) for lr, j in runs.items()}
            if any(v is None for v in losses.values()):
                complete = False
            else:
                lrs[label] = min(losses, key=lambda lr: (losses[lr], lr))
        for task in self.tasks:
            jobs.append(self.eval_job(None, task))
        experts: dict[tuple[str, str, int], str] = {}
        merges: list[ComposeJob] = []
        if not complete:
            return Plan(_unique(jobs), False, lrs, sweep, experts, merges)
        for task in self.held_in:
            for label in p.kinds:
                for seed in p.seeds if label in p.seed_kinds else (p.merge_seed,):
                    job = self.train_job(task, KINDS[label], seed, lrs[label])
                    experts[(task.name, label, seed)] = job.key
                    jobs += [job, self.eval_job(job.key, task)]
        sizes = subset_sizes(len(self.held_in)) if p.subsets else [len(self.held_in)]
        for label in p.kinds:
            for method in p.methods:
                if method == "overlap-mean" and label not in SPARSE_KINDS:
                    continue  # every entry is covered by every expert: the same merge as mean
                for n in sizes:
                    merges.append(self._merge(label, method, n, experts))
        if p.tune and "sparse" in p.kinds:
            merges.append(self._merge("sparse", "overlap-mean", len(self.held_in), experts, tuned=True))
        for merge in merges:
            jobs.append(merge)
            scored = self.tasks if len(merge.experts) == len(self.held_in) else [
                t for t in self.held_in if t.name in merge.tasks]
            jobs += [self.eval_job(merge.key, t) for t in scored]
        return Plan(_unique(jobs), True, lrs, sweep, experts, merges)

    def _merge(self, label: str, method: str, n: int, experts: dict, tuned: bool = False) -> ComposeJob:
        tasks = [t.name for t in self.held_in[:n]]
        return self.compose_job(label, method, [experts[(t, label, self.preset.merge_seed)] for t in tasks], tasks, tuned=tuned)

    def _val_loss(self, name: str) -> float | None:
        from hubtool.errors import NotFoundError

        try:
            rec = self.catalog.get(name)
        except NotFoundError:
            return None
        return next((m["val_loss"] for m in rec.metrics.values() if "val_loss" in m), None)


def _unique(jobs: list[Job]) -> list[Job]:
    """Each key once (the sweep's paper-lr run is also the first task's training run)."""
    seen: dict[str, Job] = {}
    for job in jobs:
        seen.setdefault(job.key, job)
    return list(seen.values())
