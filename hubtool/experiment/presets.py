"""What an experiment runs: the adapter kinds, the tasks, the merge methods and the sizes, per preset.

Sizes are chosen for the machine this was built on (2 CPU cores: training ~220 tokens/s for every
kind, greedy generation ~45 new tokens/s at batch 8), so `quick` fits in about 30 minutes and `full`
in a few hours. Every number here goes into the experts' config (and so into their cache keys).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hubtool.delta.kinds import KIND
from hubtool.errors import HubError


@dataclass(frozen=True)
class Kind:
    """One adapter kind of the experiment: how `hub train` is called for it."""

    label: str  # the row name in the results table
    method: str  # hub train --method
    targets: str  # hub train --targets
    lr: float  # the paper's learning rate for it


# The paper's five: every adapter kind of the registry on qkv (sparse k=0.05, block-sparse, LoRA r=4
# alpha 16, full fine-tuning of the same weights), and sparse on the MLP instead of qkv. Learning rates
# are the registry's, the paper's (1e-4, full 3e-5).
KINDS: dict[str, Kind] = {
    k.label: k
    for k in (
        *(Kind(name, name, "qkv", spec.lr) for name, spec in KIND.items()),
        Kind("sparse-mlp", "sparse", "mlp", KIND["sparse"].lr),
    )
}
# overlap-mean only differs from mean for these
SPARSE_KINDS = tuple(label for label, k in KINDS.items() if KIND[k.method].sparse)

# Merge methods in the order the table lists them. For a dense kind (LoRA, full) every entry is
# covered by every expert, so overlap-mean *is* mean there and is not run twice.
EXPERIMENT_METHODS = ("overlap-mean", "mean", "ties", "task-arithmetic", "dare-ties", "magnitude-prune")

# Beyond the paper: overlap-mean with per-task weights chosen on validation loss (see runner.tune).
TUNED = "overlap-mean+tuned"

# Longest generated answer per task category (tasks with options are scored without generating).
MAX_NEW_TOKENS = {"summarize": 48, "qa": 24, "math": 12}
DEFAULT_MAX_NEW_TOKENS = 24


@dataclass(frozen=True)
class Preset:
    name: str
    held_in: tuple[str, ...]  # task names or task folders, trained on and merged
    held_out: tuple[str, ...]  # never trained on: scored on the merged models only
    kinds: tuple[str, ...]
    methods: tuple[str, ...]
    subsets: bool = True  # also merge the first 2, 4, ... of the held-in experts
    seeds: tuple[int, ...] = (0,)  # seeds of the single-task rows of the kinds in seed_kinds
    seed_kinds: tuple[str, ...] = ("sparse", "lora")
    base: str = "smollm2-135m"
    keep_ratio: float = 0.05
    rank: int = 4
    alpha: float = 16.0
    block_size: int = 16
    steps: int = 20  # optimizer steps per expert, equal for every kind
    batch_size: int = 8
    max_length: int = 128  # tokens per training example; eval prompts are cut to it too
    # The paper re-selects the mask during the first of 5 epochs, then trains the frozen mask: the same
    # proportions here, re-selection every mask_interval steps in the first fifth of the steps.
    mask_fraction: float = 0.2
    mask_interval: int = 2
    max_train: int = 1000  # first N training examples (equal data for every kind)
    max_val: int = 32  # validation examples: best checkpoint, the lr sweep and the tuned merge
    eval_limit: int = 30  # test examples per task
    # The learning-rate sweep: factors of each kind's paper lr, tried on one held-in task, chosen by
    # validation loss. Empty: the paper's learning rates as they are.
    sweep: tuple[float, ...] = (1.0, 10.0)
    tune: bool = True  # run the beyond-the-paper tuned merge (sparse kind, all N)
    tune_weights: tuple[float, ...] = (0.5, 1.5, 2.0)  # the per-task weights tried against 1.0
    description: str = ""
    # --- the n8 protocol (issue 14; hubtool/experiment/n8.py), read only when protocol == "n8" ---
    protocol: str = "paper"  # "paper": the quick/full plan of jobs (jobs.py); "n8": n8.py's steps
    spares: tuple[str, ...] = ()  # tasks that replace a held-in task failing the pilot gate, in order
    gate: float = 5.0  # points the seed-0 sparse expert must gain over the base on validation
    val_limit: int = 64  # validation examples per task for the gate and the λ sweeps
    lam_factors: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)  # λ sweep: factors of each method's default λ
    lr_factor: float = 1.0  # without a sweep: each kind trains at lr_factor x its paper learning rate
    avoid_beta: float = float("inf")  # catalog-aware masks of the avoid step (inf: disjoint masks)
    low_keep: float = 0.01  # the keep step's keep ratio
    # The command line's changes to the preset ("--tasks", "a,b", ...): part of the commands that
    # re-create its jobs and of the report section's name, so a custom run never overwrites the preset's.
    overrides: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """The report's name for this run: the preset, or the preset and its changes."""
        return self.name if not self.overrides else f"{self.name} {' '.join(self.overrides)}"

    @property
    def merge_seed(self) -> int:
        """The seed of the experts that are merged, and of the kinds trained with one seed only: the
        smallest of `seeds` (0 unless --seeds leaves it out)."""
        return min(self.seeds)

    @property
    def mask_steps(self) -> int:
        return max(1, int(self.steps * self.mask_fraction))

    @property
    def uses_smoke_model(self) -> bool:
        return self.base == "smoke"


PRESETS: dict[str, Preset] = {
    # A tiny random model and generated tasks (hubtool.experiment.smoke): the whole pipeline in
    # well under a minute; `make test` runs it.
    "smoke": Preset(
        name="smoke",
        held_in=("smoke-first", "smoke-last", "smoke-vowel"),
        held_out=("smoke-count",),
        kinds=("sparse", "lora"),
        methods=("overlap-mean", "mean", "ties"),
        base="smoke",
        steps=6,
        batch_size=8,
        max_length=32,
        max_train=200,
        max_val=16,
        eval_limit=16,
        tune_weights=(0.5, 2.0),
        description="tiny random Llama, generated tasks: checks the pipeline, not the claims",
    ),
    # About 30 minutes here: 4 held-in tasks from 3 categories, 2 held-out, the three kinds the
    # paper compares on qkv, the three merge methods it reports, one seed. Its tasks, sizes and sweep
    # are the full preset's first ones, so every job of `quick` is also a job of `full` (same cache
    # keys in the same catalog): running quick is running the first part of full.
    "quick": Preset(
        name="quick",
        held_in=("sst2", "cola", "commonsenseqa", "squad"),
        held_out=("openbookqa", "piqa"),
        kinds=("sparse", "lora", "full"),
        methods=("overlap-mean", "mean", "ties"),
        tune_weights=(0.5, 2.0),
        description="4 held-in tasks, 2 held-out, sparse / LoRA / full on qkv, 3 methods, 1 seed",
    ),
    # Several hours: 9 held-in tasks over all five categories, 4 held-out, all kinds and methods,
    # subsets, 3 seeds for the single-task sparse and LoRA rows.
    "full": Preset(
        name="full",
        held_in=("sst2", "cola", "commonsenseqa", "squad", "xsum", "trec", "boolq", "siqa", "gsm8k"),
        held_out=("openbookqa", "piqa", "mmlu", "nq_open"),
        kinds=tuple(KINDS),
        methods=EXPERIMENT_METHODS,
        seeds=(0, 1, 2),
        tune_weights=(0.5, 2.0),
        description="9 held-in tasks over 5 categories, 4 held-out, all kinds and methods, 3 seeds",
    ),
    # Issue 14's protocol: 8 held-in tasks over 5 categories (a pilot gate replaces a task whose seed-0
    # sparse expert gains < 5 points on validation), 3 held-out, up to 200 test examples per task, 40
    # steps, seeds 0 and 1 for sparse and LoRA; the λ of every kind's main merge chosen on validation;
    # the improvement rows (rescaled overlap-mean, sparse TIES, Iso-C, routing, catalog-aware masks,
    # keep ratio 0.01). The learning rates are 10x the paper's: what the quick preset's sweep chose for
    # every kind (validation loss on sst2; docs/results.md), so no sweep is run again.
    "n8": Preset(
        name="n8",
        held_in=("sst2", "trec", "boolq", "commonsenseqa", "siqa", "piqa", "squad", "xsum"),
        held_out=("openbookqa", "mmlu", "nq_open"),
        spares=("cola", "gsm8k"),
        kinds=("sparse", "lora", "full"),
        methods=("overlap-mean", "task-arithmetic", "ties"),
        seeds=(0, 1),
        steps=40,
        sweep=(),
        lr_factor=10.0,
        eval_limit=200,
        val_limit=64,
        tune_weights=(0.5, 2.0),
        protocol="n8",
        description="8 held-in tasks, 3 held-out, sparse / LoRA / full, 200 test examples, 40 steps, seeds 0,1; "
                    "intervals, λ on validation, improvement rows",
    ),
    # The n8 protocol on the smoke world: every step of it in a couple of minutes (make test runs it).
    "smoke-n8": Preset(
        name="smoke-n8",
        held_in=("smoke-first", "smoke-last", "smoke-vowel"),
        held_out=("smoke-count",),
        kinds=("sparse", "lora"),
        methods=("overlap-mean", "task-arithmetic", "ties"),
        base="smoke",
        seeds=(0, 1),
        steps=6,
        max_length=32,
        max_train=200,
        max_val=8,
        eval_limit=8,
        val_limit=6,
        sweep=(),
        lr_factor=10.0,
        gate=-100.0,
        lam_factors=(1.0, 2.0),
        tune_weights=(2.0,),
        protocol="n8",
        description="the n8 protocol's every step on the smoke world: checks the pipeline, not the claims",
    ),
}


def get_preset(
    name: str,
    *,
    tasks: list[str] | None = None,
    held_out: list[str] | None = None,
    seeds: list[int] | None = None,
    kinds: list[str] | None = None,
    methods: list[str] | None = None,
) -> Preset:
    """A preset, with the command line's overrides; a HubError naming the option for a bad value."""
    if name not in PRESETS:
        raise HubError(f"--preset {name!r}: expected one of {', '.join(PRESETS)}")
    preset = PRESETS[name]
    changes: dict[str, object] = {}
    flags: list[str] = []
    for flag, value in (("--tasks", tasks), ("--seeds", seeds), ("--kinds", kinds), ("--methods", methods)):
        if value:
            flags += [flag, ",".join(map(str, value))]
    for task in held_out or []:
        flags += ["--held-out", task]
    if held_out is not None and not held_out:
        flags += ["--held-out", ""]
    if tasks:
        if len(tasks) < 2:
            raise HubError(f"--tasks: {len(tasks)} task given; merging needs at least 2")
        changes["held_in"] = tuple(tasks)
    if held_out is not None:
        changes["held_out"] = tuple(held_out)
    if seeds is not None and not seeds:
        raise HubError("--seeds: expected at least one seed, e.g. 0 or 0,1")
    if seeds:
        if any(s < 0 or s >= 2**31 for s in seeds):
            raise HubError(f"--seeds {','.join(map(str, seeds))}: expected integers from 0 to 2147483647")
        changes["seeds"] = tuple(dict.fromkeys(seeds))
    if kinds:
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            raise HubError(f"--kinds: unknown kind {unknown[0]!r}; expected some of {', '.join(KINDS)}")
        changes["kinds"] = tuple(dict.fromkeys(kinds))
    if methods:
        unknown = [m for m in methods if m not in EXPERIMENT_METHODS]
        if unknown:
            raise HubError(f"--methods: unknown method {unknown[0]!r}; expected some of {', '.join(EXPERIMENT_METHODS)}")
        changes["methods"] = tuple(dict.fromkeys(methods))
    preset = replace(preset, **changes, overrides=tuple(flags))
    overlap = set(preset.held_in) & set(preset.held_out)
    if overlap:
        raise HubError(f"--held-out: {min(overlap)!r} is also held-in; a held-out task is never trained on")
    return preset


def subset_sizes(n: int) -> list[int]:
    """2, 4, 8, ... below n, then n: how many experts each merge takes."""
    sizes, k = [], 2
    while k < n:
        sizes.append(k)
        k *= 2
    return [*sizes, n]


__all__ = ["EXPERIMENT_METHODS", "KINDS", "PRESETS", "Kind", "Preset", "get_preset", "subset_sizes"]
