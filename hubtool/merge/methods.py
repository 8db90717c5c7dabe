"""Merge methods: small plain functions in a registry. Adding a method is one decorated function.

Every method merges ONE weight at a time, in sparse form: it gets each expert's entries for that
weight, (sorted flat positions [nnz_t] int64, fp32 values [nnz_t]) — never a dense copy of an expert —
and returns a Merged: the merged delta on the union of the experts' positions. LoRA and full deltas
arrive as entries at every position of W (they touch all of it), so mixed kinds need no special case.

    @merge_method("my-mean", params=("lam",))
    def my_mean(x: WeightInputs, p: MergeParams) -> Merged:
        '''One line for `hub compose --help`.'''
        s = weighted_sums(x)                        # Σ w_t v_t, Σ_{t covering} w_t: [out, in] each
        return Merged(s.total / len(x.entries), s.covered)   # -0.0 / N stays -0.0 off the union

The helpers below (weighted_sums, agreeing_sums, coverage_counts, stack, trim_to_density,
trim_to_own_density, drop_and_rescale) are the building blocks the methods share; they follow the
published definitions (TIES: Yadav et al. 2023; DARE: Yu et al. 2024; task arithmetic: Ilharco et al.
2023; overlap-mean: Arnob et al. 2025; Iso-C: Marczak et al. 2025) and mergekit's conventions (density is
a fraction of the weight's entries, except sparse-ties' which is of each expert's own; weights are
normalised by their sum where the method averages). One method, iso-c, returns a dense result (every
entry of W; `MergeMethod.dense`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class _LazyTorch:
    """`torch` for this module, imported on first use: `hub compose --help` lists the registry's methods
    (their names, parameters and one-line docs) without paying for torch."""

    def __getattr__(self, name: str) -> Any:
        import torch as real

        globals()["torch"] = real  # later calls go straight to the module
        return getattr(real, name)


torch: Any = _LazyTorch()


@dataclass
class Merged:
    """One weight's merged delta: fp32 values [out, in] (-0.0 off the union, so W + values leaves
    those entries bit for bit) and the union, bool [numel].

    The model writer adds `values` into W in one pass; a merged expert keeps `entries()`."""

    values: torch.Tensor
    covered: torch.Tensor

    def entries(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sorted flat positions [U'] int64, values [U']) of the union, entries that merged to 0 dropped."""
        flat = self.values.reshape(-1)
        keep = self.covered.reshape(-1) & (flat != 0)
        pos = keep.nonzero().squeeze(1)
        return pos, flat[pos]

    @classmethod
    def from_entries(cls, shape: tuple[int, int], positions: torch.Tensor, values: torch.Tensor) -> Merged:
        dense = torch.full((shape[0] * shape[1],), -0.0, dtype=torch.float32)  # -0.0: the identity of +
        dense[positions] = values.float()
        covered = torch.zeros(shape[0] * shape[1], dtype=torch.bool)
        covered[positions] = True
        return cls(dense.view(shape), covered)


@dataclass
class MergeParams:
    density: float | None = None  # ties / dare-* / magnitude-prune: fraction of W's entries kept
    lam: float | None = None  # lambda: scale of the merged delta (task-arithmetic default 0.4, others 1)
    seed: int = 0  # dare-*: the random drop is a function of (seed, expert, weight)
    normalize: bool | None = None  # divide by the (agreeing) experts' weights; None: the method's default


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
    dense: bool = False  # the result covers every entry of W (iso-c), not only the experts' union


METHODS: dict[str, MergeMethod] = {}


def merge_method(name: str, *, params: tuple[str, ...] = (), defaults: dict[str, float] | None = None,
                 dense: bool = False):
    """Register `fn(x: WeightInputs, p: MergeParams) -> Merged` under `name`; `dense=True` for a method
    whose result covers all of W (the writer and merged experts handle it; tests check the union otherwise)."""

    def register(fn: Callable[[WeightInputs, MergeParams], Merged]):
        doc = (fn.__doc__ or "").strip().splitlines()[0]
        METHODS[name] = MergeMethod(name, fn, params, doc, defaults or {}, dense)
        return fn

    return register


# --- building blocks ----------------------------------------------------------------------------------
# Work buffers are dense over W ([out, in] fp32, bool [numel]): O(numel + entries) per weight, no sort,
# no [N, U] matrix, so 20 experts on a 28 M-entry weight cost a few weight-sized buffers. The adds go
# through hubtool.kernels (torch on CPU, Triton on GPU); positions are unique per expert, so no two
# adds of one call collide.


@dataclass
class Sums:
    total: torch.Tensor  # Σ_t w_t v_t, fp32 [out, in]; -0.0 off the union (adding -0.0 changes nothing)
    weight: torch.Tensor  # Σ_t w_t over the experts counted at each entry, [out, in] (a count when all w_t = 1)
    covered: torch.Tensor  # bool [numel]: some expert has the entry
    unit: float = 1.0  # the common weight when `weight` holds counts

    def ratio(self) -> torch.Tensor:
        """total / weight where weight != 0, else -0.0 (entries no counted expert touches)."""
        out = self.total / (self.weight if self.unit == 1.0 else self.weight * self.unit)
        return out.nan_to_num_(nan=-0.0, posinf=0.0, neginf=0.0)  # 0/0 off the union; x/0 where weights cancel


_WORK: dict[tuple[tuple[int, int], str], torch.Tensor] = {}  # reused buffers: no page faults per weight


def _buffer(shape: tuple[int, int], kind: str, dtype: torch.dtype, fill: float) -> torch.Tensor:
    """A work buffer of this shape, reused across weights (one per shape and role), filled with `fill`.
    The caller owns it until it asks for the same (shape, role) again."""
    key = (tuple(shape), kind)
    buf = _WORK.get(key)
    if buf is None or buf.dtype != dtype:
        if len(_WORK) > 8:
            _WORK.clear()
        buf = _WORK[key] = torch.empty(shape, dtype=dtype)
    return buf.fill_(fill)


def _counts(x: WeightInputs, entries, kind: str) -> tuple[torch.Tensor, float] | None:
    """When every expert has the same weight, Σ w_t over the experts at an entry is w × their count:
    count in int16 (a quarter of the memory traffic of fp32), scale later."""
    ws = set(x.w.tolist())
    if len(ws) != 1 or len(entries) >= 2**15:
        return None
    count = _buffer(x.shape, kind, torch.int16, 0)
    for pos, _ in entries:
        if pos.numel():
            count.view(-1).index_put_((pos,), torch.ones(pos.numel(), dtype=torch.int16), accumulate=True)
    return count, ws.pop()


def weighted_sums(x: WeightInputs, entries=None) -> Sums:
    """Σ_t w_t v_t and Σ_{t covering the entry} w_t over the experts' entries, and their union."""
    from hubtool.kernels import scatter_add_  # torch on CPU, Triton on GPU

    entries = x.entries if entries is None else entries
    total = _buffer(x.shape, "total", torch.float32, -0.0)  # [out, in], what the kernels take
    for w, (pos, val) in zip(x.w.tolist(), entries):
        if pos.numel():
            scatter_add_(total, pos, val, w)
    counted = _counts(x, entries, "count")
    if counted is not None:
        count, unit = counted
        return Sums(total, count, (count != 0).view(-1), unit)
    weight = _buffer(x.shape, "weight", torch.float32, 0.0)
    covered = torch.zeros(x.numel, dtype=torch.bool)
    for w, (pos, _) in zip(x.w.tolist(), entries):
        if pos.numel():
            scatter_add_(weight, pos, torch.ones(pos.numel()), w)
            covered[pos] = True
    return Sums(total, weight, covered)


def agreeing_sums(x: WeightInputs, entries=None) -> Sums:
    """TIES' disjoint sums: elect the sign of Σ w_t v_t per entry (0 counts as +), then sum w_t v_t and
    w_t over only the experts whose value has the elected sign. A value of exactly 0 agrees with nothing."""
    entries = x.entries if entries is None else entries
    first = weighted_sums(x, entries)
    sign = torch.where(first.total >= 0, 1.0, -1.0).reshape(-1)  # [numel]
    covered = first.covered.clone()  # the next sums reuse first's buffers
    agreeing = []
    for pos, val in entries:
        agree = torch.sign(val) == sign[pos] if pos.numel() else torch.zeros(0, dtype=torch.bool)
        agreeing.append((pos[agree], val[agree]))
    num = weighted_sums(x, agreeing)
    return Sums(num.total, num.weight, covered, num.unit)


def stack(x: WeightInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(union [U], values [N, U] fp32 with 0 where an expert is absent, covered [N, U] bool): every
    expert's values side by side, for methods that need more than sums (costs N x U memory). Return
    `Merged.from_entries(x.shape, union, merged)`."""
    mark = torch.zeros(x.numel, dtype=torch.bool)
    for pos, _ in x.entries:
        mark[pos] = True
    union = mark.nonzero().squeeze(1)
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


def _top_k(pos: torch.Tensor, val: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest-magnitude entries, in position order; among equal magnitudes the lower positions
    (a stable sort over position-ordered entries), so the result is deterministic."""
    if val.numel() <= k:
        return pos, val
    keep = torch.sort(val.abs(), descending=True, stable=True).indices[:k].sort().values
    return pos[keep], val[keep]


def trim_to_density(entries: list[tuple[torch.Tensor, torch.Tensor]], density: float, numel: int):
    """Each expert keeps its int(density * numel) largest-magnitude entries (density of the whole weight,
    mergekit's convention: a 5% expert is not trimmed by density 0.2)."""
    k = max(0, int(density * numel))
    return [_top_k(pos, val, k) for pos, val in entries]


def trim_to_own_density(entries: list[tuple[torch.Tensor, torch.Tensor]], density: float):
    """Each expert keeps its int(density * nnz_t) largest-magnitude entries: density of ITS OWN kept
    entries, so density 0.2 trims a 5% expert to 1% of W (a LoRA/full delta, nnz_t = numel, as ties)."""
    return [_top_k(pos, val, max(0, int(density * val.numel()))) for pos, val in entries]


def coverage_counts(x: WeightInputs, entries=None, kind: str = "cover") -> torch.Tensor:
    """The UNWEIGHTED number of experts whose entries include each position, int16 [out, in] (int32 from
    2**15 experts): the `count` of rescaled-overlap-mean, whatever the weights w_t."""
    entries = x.entries if entries is None else entries
    dtype = torch.int16 if len(entries) < 2**15 else torch.int32
    count = _buffer(x.shape, kind, dtype, 0)
    for pos, _ in entries:
        if pos.numel():
            count.view(-1).index_put_((pos,), torch.ones(pos.numel(), dtype=dtype), accumulate=True)
    return count


def drop_and_rescale(x: WeightInputs, density: float, seed: int):
    """DARE: each entry survives with probability `density` and is rescaled by 1/density (as the DARE
    paper does; mergekit rescales to keep each tensor's L1 norm, equal on average). The draw is seeded by
    (seed, expert, weight), so a merge is reproducible and does not depend on the other experts."""
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


def _scaled(values: torch.Tensor, scale: float, covered: torch.Tensor) -> Merged:
    """values * scale as a Merged that owns its tensor, with -0.0 kept off the union (a negative scale
    would turn -0.0 into +0.0, which is not the identity of addition for -0.0 weights)."""
    out = values * scale if scale != 1.0 else values.clone()  # a copy: the work buffers are reused
    if scale < 0:
        out.view(-1).masked_fill_(~covered, -0.0)
    return Merged(out, covered)


def _linear(x: WeightInputs, p: MergeParams, *, normalize: bool) -> Merged:
    """λ Σ_t w_t D_t, divided by Σ_t w_t when normalising (mergekit's linear merge)."""
    s = weighted_sums(x)
    scale = _lam(p) / (float(x.w.sum()) if (p.normalize if p.normalize is not None else normalize) else 1.0)
    return _scaled(s.total, scale, s.covered)


def _disjoint(x: WeightInputs, p: MergeParams, *, normalize: bool) -> Merged:
    """Elect signs, then sum the agreeing experts' weighted values, divided by their weights when
    normalising (the disjoint mean)."""
    s = agreeing_sums(x)
    merged = s.ratio() if (p.normalize if p.normalize is not None else normalize) else s.total
    return _scaled(merged, _lam(p), s.covered)


# --- the methods (defaults as in mergekit, whose users expect them, unless the paper says otherwise) ------


@merge_method("overlap-mean", params=("lam",))
def overlap_mean(x: WeightInputs, p: MergeParams) -> Merged:
    """Each entry averaged over only the experts whose mask covers it (the paper's merge)."""
    s = weighted_sums(x)
    return _scaled(s.ratio(), _lam(p), s.covered)


@merge_method("mean", params=("lam",))
def mean(x: WeightInputs, p: MergeParams) -> Merged:
    """Sum of the deltas divided by the number of experts (by Σ weights when weighted)."""
    return _linear(x, p, normalize=True)


@merge_method("task-arithmetic", params=("lam",), defaults={"lam": 0.4})
def task_arithmetic(x: WeightInputs, p: MergeParams) -> Merged:
    """Sum of the (weighted) deltas times lambda (default 0.4, the paper's)."""
    s = weighted_sums(x)
    return _scaled(s.total, _lam(p, 0.4), s.covered)


@merge_method("ties", params=("density", "lam", "normalize"), defaults={"density": 0.2})
def ties(x: WeightInputs, p: MergeParams) -> Merged:
    """Trim each delta to its top-density entries by magnitude, elect signs, disjoint mean."""
    return _disjoint(_with(x, trim_to_density(x.entries, p.density, x.numel)), p, normalize=True)


@merge_method("dare-ties", params=("density", "lam", "seed", "normalize"), defaults={"density": 0.5})
def dare_ties(x: WeightInputs, p: MergeParams) -> Merged:
    """Seeded random drop to density and rescale (DARE), elect signs, sum the agreeing experts."""
    return _disjoint(_with(x, drop_and_rescale(x, p.density, p.seed)), p, normalize=False)


@merge_method("dare-linear", params=("density", "lam", "seed", "normalize"), defaults={"density": 0.5})
def dare_linear(x: WeightInputs, p: MergeParams) -> Merged:
    """Seeded random drop to density and rescale (DARE), then the weighted sum."""
    return _linear(_with(x, drop_and_rescale(x, p.density, p.seed)), p, normalize=False)


@merge_method("magnitude-prune", params=("density", "lam", "normalize"), defaults={"density": 0.2})
def magnitude_prune(x: WeightInputs, p: MergeParams) -> Merged:
    """Trim each delta to its top-density entries by magnitude, then the weighted mean."""
    return _linear(_with(x, trim_to_density(x.entries, p.density, x.numel)), p, normalize=True)


@merge_method("rescaled-overlap-mean", params=("lam",))
def rescaled_overlap_mean(x: WeightInputs, p: MergeParams) -> Merged:
    """lambda * sum_t w_t D_t / (number of experts covering the entry): weights scale even unshared entries."""
    # overlap-mean divides by Σ_{t covering} w_t, which cancels w_t wherever one expert alone covers an
    # entry; here the divisor is the unweighted count, so w_t (compose --weights) acts as a per-expert λ_t.
    # With every w_t = 1 the divisor is the same count overlap-mean uses, so the result is bit for bit equal.
    from hubtool.kernels import scatter_add_

    total = _buffer(x.shape, "total", torch.float32, -0.0)  # Σ_t w_t v_t, [out, in]; -0.0 off the union
    for w, (pos, val) in zip(x.w.tolist(), x.entries):
        if pos.numel():
            scatter_add_(total, pos, val, w)
    count = coverage_counts(x)  # [out, in]
    s = Sums(total, count, (count != 0).view(-1))
    return _scaled(s.ratio(), _lam(p), s.covered)


@merge_method("sparse-ties", params=("density", "lam", "normalize"), defaults={"density": 0.2})
def sparse_ties(x: WeightInputs, p: MergeParams) -> Merged:
    """ties, trimming each delta to density x ITS OWN kept entries (not x W's), then signs, disjoint mean."""
    return _disjoint(_with(x, trim_to_own_density(x.entries, p.density)), p, normalize=True)


@merge_method("iso-c", params=("lam",), dense=True)
def iso_c(x: WeightInputs, p: MergeParams) -> Merged:
    """Iso-C: SVD of sum_t w_t D_t, every singular value set to their mean, times lambda (dense result)."""
    # Marczak et al. 2025, "No Task Left Behind: Isotropic Model Merging with Common and Task-Specific
    # Subspaces". Δ = Σ_t w_t D_t = U S V^T (thin SVD, k = min(out, in) singular values); the merge is
    # λ U diag(S̄) V^T with S̄ = mean(S) on all k: the spectrum flattened, so no task's directions are
    # drowned by the dominant ones. U [out, k] and V^T [k, in] are dense, so the result covers all of W
    # (memory: a few weight-sized fp32 buffers; no expert is made dense on its own).
    delta = weighted_sums(x).total + 0.0  # [out, in]; + 0.0: -0.0 off the union -> 0.0, and a copy
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)  # u [out, k], s [k], vh [k, in]
    merged = (u * (s.mean() * _lam(p))) @ vh  # [out, in]
    return Merged(merged, torch.ones(x.numel, dtype=torch.bool))


def merge_weight(method: str, x: WeightInputs, p: MergeParams) -> Merged:
    """Run a registered method on one weight."""
    return METHODS[method].fn(x, p)
