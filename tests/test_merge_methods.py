"""Merge methods against dense references written out by hand on small tensors.

The references below work on dense [N, numel] deltas with explicit 0/1 masks, the way the papers define
the methods (and mergekit implements them); hubtool's methods work in sparse form on the union of
positions. They must agree on overlaps, sign conflicts, weights and densities.
"""

from __future__ import annotations

import pytest
import torch

from hubtool.merge.methods import METHODS, MergeParams, WeightInputs, drop_and_rescale, merge_weight

SHAPE = (6, 10)
NUMEL = SHAPE[0] * SHAPE[1]


def entries_from_dense(d: torch.Tensor, m: torch.Tensor):
    pos = m.reshape(-1).nonzero().squeeze(1)
    return pos, d.reshape(-1)[pos].float()


def inputs(deltas, masks, w=None) -> WeightInputs:
    w = torch.ones(len(deltas)) if w is None else torch.tensor(w, dtype=torch.float32)
    ents = [entries_from_dense(d, m) for d, m in zip(deltas, masks)]
    return WeightInputs("layer.weight", SHAPE, ents, w, [f"e{i}@1" for i in range(len(deltas))])


def run(method, x, **p) -> torch.Tensor:
    merged = merge_weight(method, x, MergeParams(**p))
    union, values = merged.entries()
    out = torch.zeros(NUMEL)
    out[union] = values
    torch.testing.assert_close(out.view(SHAPE), merged.values)  # entries and dense form agree
    return out.view(SHAPE)


@pytest.fixture
def case():
    """Three experts with partly overlapping masks, and sign conflicts on the overlaps."""
    gen = torch.Generator().manual_seed(3)
    masks = [torch.rand(SHAPE, generator=gen) < 0.4 for _ in range(3)]
    masks[1][0, :5] = True  # make sure every pair overlaps somewhere
    masks[0][0, :3] = True
    masks[2][0, 2:6] = True
    deltas = [torch.randn(SHAPE, generator=gen) * m for m in masks]
    deltas[0][0, 2], deltas[1][0, 2], deltas[2][0, 2] = 1.0, -3.0, 0.5  # a sign conflict, 2 vs 1
    return torch.stack(deltas), torch.stack(masks)


# --- dense references ----------------------------------------------------------------------------------


def ref_overlap_mean(D, M, w):
    return (D * w[:, None, None]).sum(0) / (M * w[:, None, None]).sum(0).clamp_min(1e-30) * (M.sum(0) > 0)


def ref_linear(D, w):
    return (D * w[:, None, None]).sum(0) / w.sum()


def ref_trim(D, density):
    k = int(density * NUMEL)
    out = torch.zeros_like(D)
    for t in range(D.shape[0]):
        flat = D[t].reshape(-1)
        keep = flat.abs().argsort(descending=True, stable=True)[:k]
        o = torch.zeros(NUMEL)
        o[keep] = flat[keep]
        out[t] = o.view(SHAPE)
    return out


def ref_disjoint(D, w, normalize=True):
    wd = D * w[:, None, None]
    sign = torch.where(wd.sum(0) >= 0, 1.0, -1.0)
    agree = torch.sign(D) == sign
    num = (wd * agree).sum(0)
    if not normalize:
        return num
    den = (w[:, None, None] * agree).sum(0)
    return torch.where(den > 0, num / den.clamp_min(1e-30), 0.0)


@pytest.mark.parametrize("w", [[1.0, 1.0, 1.0], [0.5, 2.0, 1.0]])
def test_overlap_mean_averages_over_covering_experts_only(case, w):
    D, M = case
    wt = torch.tensor(w)
    got = run("overlap-mean", inputs(D, M, w))
    torch.testing.assert_close(got, ref_overlap_mean(D, M, wt))
    # an entry only expert 0 touches keeps its full value (unweighted case): no dilution by N
    only0 = M[0] & ~M[1] & ~M[2]
    if w == [1.0, 1.0, 1.0]:
        torch.testing.assert_close(got[only0], D[0][only0])


@pytest.mark.parametrize("w", [[1.0, 1.0, 1.0], [0.5, 2.0, 1.0]])
def test_mean_is_sum_over_weight_total(case, w):
    D, M = case
    torch.testing.assert_close(run("mean", inputs(D, M, w)), ref_linear(D, torch.tensor(w)))


def test_task_arithmetic_is_lambda_times_sum(case):
    D, M = case
    w = torch.tensor([1.0, 0.5, 2.0])
    torch.testing.assert_close(run("task-arithmetic", inputs(D, M, w.tolist())), 0.4 * (D * w[:, None, None]).sum(0))
    torch.testing.assert_close(run("task-arithmetic", inputs(D, M), lam=1.5), 1.5 * D.sum(0))


@pytest.mark.parametrize("density", [0.05, 0.2, 1.0])
def test_ties_trims_elects_and_takes_the_disjoint_mean(case, density):
    D, M = case
    w = torch.tensor([1.0, 1.0, 2.0])
    expected = ref_disjoint(ref_trim(D, density), w)
    torch.testing.assert_close(run("ties", inputs(D, M, w.tolist()), density=density), expected)


def test_ties_without_normalize_sums_the_agreeing_experts(case):
    D, M = case
    w = torch.tensor([1.0, 2.0, 0.5])
    got = run("ties", inputs(D, M, w.tolist()), density=0.3, normalize=False)
    torch.testing.assert_close(got, ref_disjoint(ref_trim(D, 0.3), w, normalize=False))


def test_trim_keeps_the_lower_positions_among_equal_magnitudes():
    from hubtool.merge.methods import trim_to_density

    pos = torch.arange(10)
    val = torch.tensor([1.0, -2.0, 2.0, 2.0, 0.5, -2.0, 3.0, 0.1, 2.0, 1.0])
    (kept, vals), = trim_to_density([(pos, val)], 0.3, 10)  # k = 3: 3.0, then the first two of the 2.0s
    assert kept.tolist() == [1, 2, 6] and vals.tolist() == [-2.0, 2.0, 3.0]


def test_ties_sign_conflict_is_resolved_by_the_weighted_sum(case):
    D, M = case
    got = run("ties", inputs(D, M), density=1.0)
    # at [0, 2]: 1.0, -3.0, 0.5 -> sum -1.5 elects "-", only expert 1 agrees
    assert got[0, 2].item() == pytest.approx(-3.0)


@pytest.mark.parametrize("density", [0.1, 0.3])
def test_magnitude_prune_is_trim_then_weighted_mean(case, density):
    D, M = case
    w = torch.tensor([2.0, 1.0, 1.0])
    torch.testing.assert_close(run("magnitude-prune", inputs(D, M, w.tolist()), density=density),
                               ref_linear(ref_trim(D, density), w))


@pytest.mark.parametrize("method", ["dare-linear", "dare-ties"])
def test_dare_drops_with_the_seeded_mask_and_rescales(case, method):
    D, M = case
    x = inputs(D, M)
    dropped = drop_and_rescale(x, 0.5, seed=7)
    Dd = torch.zeros_like(D)
    for t, (pos, val) in enumerate(dropped):
        Dd[t].view(-1)[pos] = val
        kept_share = pos.numel() / max(1, int(M[t].sum()))
        assert 0.0 < kept_share < 1.0  # some dropped, some kept
        torch.testing.assert_close(val, D[t].view(-1)[pos] * 2.0)  # rescaled by 1 / density
    # mergekit's defaults: DARE merges sum (weights are expected to say how much of each)...
    ref = (Dd * x.w[:, None, None]).sum(0) if method == "dare-linear" else ref_disjoint(Dd, x.w, normalize=False)
    torch.testing.assert_close(run(method, x, density=0.5, seed=7), ref)
    # ...and normalize=True makes them means
    ref = ref_linear(Dd, x.w) if method == "dare-linear" else ref_disjoint(Dd, x.w)
    torch.testing.assert_close(run(method, x, density=0.5, seed=7, normalize=True), ref)
    # same seed, same result; another seed, another drop
    torch.testing.assert_close(run(method, x, density=0.5, seed=7), run(method, x, density=0.5, seed=7))
    assert not torch.equal(run(method, x, density=0.5, seed=7), run(method, x, density=0.5, seed=8))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_merges_in_sparse_form(case, method):
    """Sparse inputs give a result on the union of their positions, nothing outside it (a dense method,
    iso-c, says so in the registry and covers all of W)."""
    D, M = case
    merged = merge_weight(method, inputs(D, M), MergeParams(density=0.5))
    union, _ = merged.entries()
    covered = M.any(0).reshape(-1).nonzero().squeeze(1)
    if METHODS[method].dense:
        assert bool(merged.covered.all()) and union.numel() > covered.numel()
    else:
        assert set(union.tolist()) <= set(covered.tolist())


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_single_expert_comes_back_unchanged_where_the_method_is_an_identity(case, method):
    D, M = case
    got = run(method, inputs(D[:1], M[:1]), density=1.0, lam=1.0)
    if method.startswith("dare") or method == "iso-c":
        return  # a random drop is never the identity; iso-c flattens even one expert's spectrum
    torch.testing.assert_close(got, D[0])


@pytest.mark.parametrize("method,lam", [("overlap-mean", 1.0), ("mean", -1.0), ("ties", 1.0), ("task-arithmetic", -0.5)])
def test_untouched_entries_keep_their_exact_bits(case, method, lam):
    """The model writer adds Merged.values over all of W: off the union it must be the identity, -0.0
    weights included (bf16 -0.0 + 0.0 would become +0.0)."""
    from hubtool.merge.execute import add_merged

    D, M = case
    W = torch.randn(SHAPE).bfloat16()
    W[~M.any(0)] = -0.0
    merged = merge_weight(method, inputs(D, M), MergeParams(density=0.5 if method == "ties" else None, lam=lam))
    out = add_merged(W, merged, torch.bfloat16)
    off = ~M.any(0)
    assert torch.equal(out[off].view(torch.int16), W[off].view(torch.int16))
    assert torch.signbit(out[off].float()).all()


def test_compose_help_lists_the_registry_without_importing_torch() -> None:
    """`hub compose --help` is built from METHODS (a new method shows up by itself), and reading the registry
    costs no torch: methods.py imports it on a method's first call."""
    import os
    import subprocess
    import sys

    code = ("import sys; from hubtool.merge.methods import METHODS; import hubtool.cli.compose as c; "
            "print(sorted(METHODS)); print('torch' in sys.modules)")
    lines = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert lines[0] == str(sorted(METHODS)) and lines[1] == "False"
    out = subprocess.run([sys.executable, "-m", "hubtool", "compose", "--help"], capture_output=True, text=True,
                         check=True, env={**os.environ, "COLUMNS": "400"}).stdout  # fmt: skip
    flat = " ".join(out.split())
    for name in METHODS:
        assert name in flat, name
    assert "overlap-mean (default)" in flat
