"""Merge methods: small plain functions in a registry. Adding a method is one decorated function.

Every method merges ONE weight at a time, in sparse form: it gets each expert's entries for that
weight, (sorted flat positions [nnz_t] int64, fp32 values [nnz_t]), and returns the merged delta's
entries on the union of the experts' positions. LoRA and full deltas arrive as entries at every
position of W (they touch all of it), so mixed kinds need no special case: the union is then all of W.

    @merge_method("my-method", params=("density",))
    def my_method(x: WeightInputs, p: MergeParams) -> Merged:
        union, total, cover = weighted_sums(x)    # [U] each: Σ w_t v_t, Σ_{covering} w_t
        return union, total / len(x.entries)

The helpers below (weighted_sums, disjoint_sums, stack, trim_to_density, drop_and_rescale) are the
building blocks the methods share; they follow the published definitions (TIES: Yadav et al. 2023; DARE: Yu et al. 2024;
task arithmetic: Ilharco et al. 2023; overlap-mean: Arnob et al. 2025) and mergekit's conventions
(density is a fraction of the weight's entries; weights are normalised by their sum where the method
averages).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

Merged = tuple[torch.Tensor, torch.Tensor]  # (sorted flat positions [U] int64, fp32 values [U])


@dataclass
class MergeParams:
    density: float | None = None  # ties / dare-* / magnitude-prune: fraction of W's entries kept
    lam: float | None = None  # lambda: scale of the merged delta (task-arithmetic default 0.4, others 1)
    seed: int = 0  # dare-*: the random drop is a function of (seed, expert, weight)


@dataclass
class WeightInputs:
    """One weight's inputs: N experts' entries (empty tensors for an expert that does not touch it)."""

    name: str
    shape: tuple[int, int]
    entries: list[tuple[torch.Tensor, torch.Tensor]]
    w: torch.Tensor  # fp32 [N] per-expert weights
    experts: list[str] = field(default_factory=list)  # refs, for seeding and messages

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: Callable[[WeightInputs, MergeParams], Merged]
    params: tuple[str, ...]  # which MergeParams fields it reads (the others are refused)
    doc: str
    defaults: dict[str, float]


METHODS: dict[str, MergeMethod] = {}


def merge_method(name: str, *, params: tuple[str, ...] = (), defaults: dict[str, float] | None = None):
    """Register `fn(x: WeightInputs, p: MergeParams) -> Merged` under `name`."""

    def register(fn: Callable[[WeightInputs, MergeParams], Merged]):
        METHODS[name] = MergeMethod(name, fn, params, (fn.__doc__ or "").strip().splitlines()[0], defaults or {})
        return fn

    return register


# --- building blocks ----------------------------------------------------------------------------------
# Work buffers are dense over W ([numel], fp32 or bool): O(numel + entries) per weight with no sort and
# no [N, U] matrix, so 20 experts on a 28 M-entry weight cost three weight-sized buffers.


def union_positions(entries: list[tuple[torch.Tensor, torch.Tensor]], numel: int) -> torch.Tensor:
    """Sorted unique positions covered by any expert, [U] int64."""
    mark = torch.zeros(numel, dtype=torch.bool)
    for pos, _ in entries:
        mark[pos] = True
    return mark.nonzero().squeeze(1)


def weighted_sums(x: WeightInputs, entries=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(union [U], Σ_t w_t v_t [U], Σ_{t covering the entry} w_t [U]) over the experts' entries."""
    from hubtool.kernels import scatter_add_  # torch on CPU, Triton on GPU

    entries = x.entries if entries is None else entries
    total = torch.zeros(x.shape, dtype=torch.float32)  # [out, in], what the kernels take; flat positions
    cover = torch.zeros(x.shape, dtype=torch.float32)
    mark = torch.zeros(x.numel, dtype=torch.bool)
    for w, (pos, val) in zip(x.w.tolist(), entries):
        if pos.numel():
            scatter_add_(total, pos, val, w)  # positions are unique per expert: no two adds collide
            scatter_add_(cover, pos, torch.ones(pos.numel()), w)
            mark[pos] = True
    union = mark.nonzero().squeeze(1)
    return union, total.view(-1)[union], cover.view(-1)[union]


def disjoint_sums(x: WeightInputs, entries=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TIES' disjoint merge: elect the sign of Σ w_t v_t per entry, then (union, Σ w_t v_t and Σ w_t
    over only the experts whose value has the elected sign). A value of exactly 0 agrees with nothing."""
    from hubtool.kernels import scatter_add_

    entries = x.entries if entries is None else entries
    union, total, _ = weighted_sums(x, entries)
    sign = torch.zeros(x.numel, dtype=torch.float32)
    sign[union] = torch.where(total >= 0, 1.0, -1.0)
    num = torch.zeros(x.shape, dtype=torch.float32)
    den = torch.zeros(x.shape, dtype=torch.float32)
    for w, (pos, val) in zip(x.w.tolist(), entries):
        if pos.numel():
            agree = torch.sign(val) == sign[pos]
            p, v = pos[agree], val[agree]
            scatter_add_(num, p, v, w)
            scatter_add_(den, p, torch.ones(p.numel()), w)
    return union, num.view(-1)[union], den.view(-1)[union]


def stack(x: WeightInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(union [U], values [N, U] fp32 with 0 where an expert is absent, covered [N, U] bool): every
    expert's values side by side, for methods that need more than sums. Costs N x U memory."""
    union = union_positions(x.entries, x.numel)
    rank = torch.full((x.numel,), -1, dtype=torch.int64)
    rank[union] = torch.arange(union.numel())
    n = len(x.entries)
    values = torch.zeros(n, union.numel(), dtype=torch.float32)
    covered = torch.zeros(n, union.numel(), dtype=torch.bool)
    for t, (pos, val) in enumerate(x.entries):
        if pos.numel():
            slot = rank[pos]
            values[t, slot] = val
            covered[t, slot] = True
    return union, values, covered


def trim_to_density(entries: list[tuple[torch.Tensor, torch.Tensor]], density: float, numel: int):
    """Each expert keeps its round(density * numel) largest-magnitude entries (ties: lower position)."""
    k = max(0, int(density * numel))
    out = []
    for pos, val in entries:
        if val.numel() > k:
            keep = torch.topk(val.abs(), k, sorted=False).indices.sort().values
            pos, val = pos[keep], val[keep]
        out.append((pos, val))
    return out


def drop_and_rescale(x: WeightInputs, density: float, seed: int):
    """DARE: each entry survives with probability `density` and is rescaled by 1/density. The draw is
    seeded by (seed, expert, weight), so a merge is reproducible and does not depend on other experts."""
    out = []
    for ref, (pos, val) in zip(x.experts or [str(i) for i in range(len(x.entries))], x.entries):
        digest = hashlib.sha256(f"{seed}|{ref}|{x.name}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
        keep = torch.rand(val.numel(), generator=gen) < density
        out.append((pos[keep], val[keep] / density))
    return out


def _with(x: WeightInputs, entries) -> WeightInputs:
    return WeightInputs(x.name, x.shape, entries, x.w, x.experts)


def _lam(p: MergeParams, default: float = 1.0) -> float:
    return default if p.lam is None else p.lam


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den where den != 0, else 0 (an entry no counted expert touches)."""
    return torch.where(den != 0, num / torch.where(den != 0, den, 1.0), 0.0)


def _linear(x: WeightInputs, lam: float) -> Merged:
    """Σ_t w_t D_t / Σ_t w_t, times lam (mergekit's normalised linear merge)."""
    union, total, _ = weighted_sums(x)
    return union, total / float(x.w.sum()) * lam


def _disjoint_mean(x: WeightInputs, lam: float) -> Merged:
    """Elect signs, then average each entry over the experts that agree with it."""
    union, num, den = disjoint_sums(x)
    return union, _ratio(num, den) * lam


# --- the methods --------------------------------------------------------------------------------------


@merge_method("overlap-mean", params=("lam",))
def overlap_mean(x: WeightInputs, p: MergeParams) -> Merged:
    """Each entry averaged over only the experts whose mask covers it (the paper's merge)."""
    union, total, cover = weighted_sums(x)
    return union, _ratio(total, cover) * _lam(p)


@merge_method("mean", params=("lam",))
def mean(x: WeightInputs, p: MergeParams) -> Merged:
    """Sum of the deltas divided by the number of experts (by Σ weights when weighted)."""
    return _linear(x, _lam(p))


@merge_method("task-arithmetic", params=("lam",), defaults={"lam": 0.4})
def task_arithmetic(x: WeightInputs, p: MergeParams) -> Merged:
    """Sum of the (weighted) deltas times lambda (default 0.4)."""
    union, total, _ = weighted_sums(x)
    return union, total * _lam(p, 0.4)


@merge_method("ties", params=("density", "lam"), defaults={"density": 0.2})
def ties(x: WeightInputs, p: MergeParams) -> Merged:
    """Trim each delta to its top-density entries by magnitude, elect signs, disjoint mean."""
    return _disjoint_mean(_with(x, trim_to_density(x.entries, p.density, x.numel)), _lam(p))


@merge_method("dare-ties", params=("density", "lam", "seed"), defaults={"density": 0.5})
def dare_ties(x: WeightInputs, p: MergeParams) -> Merged:
    """Seeded random drop to density and rescale (DARE), then sign election and disjoint mean."""
    return _disjoint_mean(_with(x, drop_and_rescale(x, p.density, p.seed)), _lam(p))


@merge_method("dare-linear", params=("density", "lam", "seed"), defaults={"density": 0.5})
def dare_linear(x: WeightInputs, p: MergeParams) -> Merged:
    """Seeded random drop to density and rescale (DARE), then the weighted mean."""
    return _linear(_with(x, drop_and_rescale(x, p.density, p.seed)), _lam(p))


@merge_method("magnitude-prune", params=("density", "lam"), defaults={"density": 0.2})
def magnitude_prune(x: WeightInputs, p: MergeParams) -> Merged:
    """Trim each delta to its top-density entries by magnitude, then the weighted mean."""
    return _linear(_with(x, trim_to_density(x.entries, p.density, x.numel)), _lam(p))


def merge_weight(method: str, x: WeightInputs, p: MergeParams) -> Merged:
    """Run a registered method on one weight; drops entries that merged to exactly zero."""
    union, merged = METHODS[method].fn(x, p)
    keep = merged != 0
    return union[keep], merged[keep]
