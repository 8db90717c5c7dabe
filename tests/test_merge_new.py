"""The merge methods of issue 14 §3 (rescaled-overlap-mean, sparse-ties, iso-c) against dense references
built by hand with torch, iso-c's dense result through `hub compose`, and the merge diagnostics
(coverage_histogram, oracle_mask) on small hand-built experts with known answers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from test_merge_methods import ref_disjoint
from tiny import make_tiny_llama

from hubtool.delta import BlockSparseDelta, Expert, FullDelta, LoraDelta, SparseDelta
from hubtool.errors import HubError
from hubtool.merge.diagnostics import coverage_histogram, oracle_mask
from hubtool.merge.methods import (
    METHODS,
    MergeParams,
    WeightInputs,
    merge_weight,
    trim_to_density,
    trim_to_own_density,
)

SHAPE = (6, 10)
NUMEL = SHAPE[0] * SHAPE[1]


def inputs(D, M, w=None, shape=SHAPE) -> WeightInputs:
    w = torch.ones(len(D)) if w is None else torch.tensor(w, dtype=torch.float32)
    ents = []
    for d, m in zip(D, M):
        pos = m.reshape(-1).nonzero().squeeze(1)
        ents.append((pos, d.reshape(-1)[pos].float()))
    return WeightInputs("layer.weight", shape, ents, w, [f"e{i}@1" for i in range(len(D))])


def run(method, x, **p) -> torch.Tensor:
    merged = merge_weight(method, x, MergeParams(**p))
    union, values = merged.entries()
    out = torch.zeros(x.numel)
    out[union] = values
    torch.testing.assert_close(out.view(x.shape), merged.values + 0.0)  # entries and dense form agree
    return out.view(x.shape)


@pytest.fixture
def case():
    """Three experts [3, 6, 10] with partly overlapping masks, a sign conflict at [0, 2]."""
    gen = torch.Generator().manual_seed(11)
    masks = [torch.rand(SHAPE, generator=gen) < 0.4 for _ in range(3)]
    masks[0][0, :3] = True
    masks[1][0, :5] = True
    masks[2][0, 2:6] = True
    deltas = [torch.randn(SHAPE, generator=gen) * m for m in masks]
    deltas[0][0, 2], deltas[1][0, 2], deltas[2][0, 2] = 1.0, -3.0, 0.5
    return torch.stack(deltas), torch.stack(masks)


# --- rescaled-overlap-mean --------------------------------------------------------------------------------


@pytest.mark.parametrize("w,lam", [([1.0, 1.0, 1.0], 1.0), ([0.5, 2.0, 1.0], 1.0), ([2.0, 0.0, -1.0], 0.7)])
def test_rescaled_overlap_mean_matches_the_dense_reference(case, w, lam):
    D, M = case
    wt = torch.tensor(w)
    count = M.sum(0)  # [6, 10]: experts covering each entry, whatever their weights
    ref = torch.where(count > 0, lam * (D * wt[:, None, None]).sum(0) / count.clamp_min(1), 0.0)
    torch.testing.assert_close(run("rescaled-overlap-mean", inputs(D, M, w), lam=lam), ref)


def test_rescaled_overlap_mean_with_unit_weights_is_overlap_mean_bit_for_bit(case):
    D, M = case
    x = inputs(D, M)
    a = merge_weight("rescaled-overlap-mean", x, MergeParams())
    b = merge_weight("overlap-mean", x, MergeParams())
    assert torch.equal(a.values.view(torch.int32), b.values.view(torch.int32))  # -0.0 off the union too
    assert torch.equal(a.covered, b.covered)
    a = merge_weight("rescaled-overlap-mean", x, MergeParams(lam=1.0))
    assert torch.equal(a.values.view(torch.int32), b.values.view(torch.int32))


def test_weights_scale_the_entries_one_expert_alone_covers(case):
    """The defect of overlap-mean that made the tuned merge a no-op: there w_t cancels on unshared entries."""
    D, M = case
    only0 = M[0] & ~M[1] & ~M[2]
    shared = M[0] & M[1] & ~M[2]
    assert only0.any() and shared.any()
    x = inputs(D, M, [3.0, 1.0, 1.0])
    rescaled, om = run("rescaled-overlap-mean", x), run("overlap-mean", x)
    torch.testing.assert_close(rescaled[only0], 3.0 * D[0][only0])
    torch.testing.assert_close(om[only0], D[0][only0])  # overlap-mean: the weight cancels
    torch.testing.assert_close(rescaled[shared], (3.0 * D[0] + D[1])[shared] / 2)


# --- sparse-ties --------------------------------------------------------------------------------------


def test_sparse_ties_trims_each_expert_relative_to_its_own_kept_entries():
    gen = torch.Generator().manual_seed(5)
    numel = 400  # a [20, 20] weight
    sizes = [20, 7, 1, 0]  # 5% of W, fewer, one entry, none
    entries = []
    for n in sizes:
        pos = torch.randperm(numel, generator=gen)[:n].sort().values
        entries.append((pos, torch.randn(n, generator=gen)))
    for density, want in [(0.2, [4, 1, 0, 0]), (0.5, [10, 3, 0, 0]), (1.0, [20, 7, 1, 0])]:
        trimmed = trim_to_own_density(entries, density)
        assert [p.numel() for p, _ in trimmed] == want  # int(density * nnz_t)
        for (pos, val), (kp, kv) in zip(entries, trimmed):
            assert torch.equal(kp, kp.sort().values) and set(kp.tolist()) <= set(pos.tolist())
            if kv.numel():  # the kept are the largest magnitudes of this expert
                assert kv.abs().min() >= val.abs().sort(descending=True).values[kv.numel() - 1]
    # ties' density counts W's entries: 0.2 * 400 = 80 keeps all of every expert
    assert [p.numel() for p, _ in trim_to_density(entries, 0.2, numel)] == sizes


def ref_trim_own(D, M, density):
    """Per expert: keep the int(density * |M_t|) largest |D_t| among its own kept positions."""
    out = torch.zeros_like(D)
    for t in range(D.shape[0]):
        k = int(density * int(M[t].sum()))
        score = torch.where(M[t], D[t].abs(), torch.tensor(-1.0)).reshape(-1)  # outside the mask: never kept
        keep = torch.topk(score, k).indices
        out[t].view(-1)[keep] = D[t].reshape(-1)[keep]
    return out


@pytest.mark.parametrize("density,w,normalize,lam", [
    (0.2, [1.0, 1.0, 1.0], None, None),
    (0.5, [1.0, 2.0, 0.5], None, 0.8),
    (0.3, [1.0, 2.0, 0.5], False, None),
    (1.0, [1.0, 1.0, 2.0], None, None),
])
def test_sparse_ties_matches_the_dense_reference(case, density, w, normalize, lam):
    D, M = case
    wt = torch.tensor(w)
    ref = ref_disjoint(ref_trim_own(D, M, density), wt, normalize=normalize is not False) * (1.0 if lam is None else lam)
    got = run("sparse-ties", inputs(D, M, w), density=density, normalize=normalize, lam=lam)
    torch.testing.assert_close(got, ref)


def test_sparse_ties_trims_where_ties_does_not():
    """A 5% expert: ties at density 0.2 is sign election alone; sparse-ties keeps a fifth of each."""
    gen = torch.Generator().manual_seed(2)
    shape = (20, 20)
    M = torch.stack([torch.zeros(400, dtype=torch.bool).index_fill_(0, torch.randperm(400, generator=gen)[:20], True)
                     for _ in range(2)]).view(2, *shape)
    D = torch.randn(2, *shape, generator=gen) * M
    x = inputs(D, M, shape=shape)
    ties = run("ties", x, density=0.2)
    sparse = run("sparse-ties", x, density=0.2)
    assert int((ties != 0).sum()) == int(M.any(0).sum())  # nothing trimmed
    assert int((sparse != 0).sum()) <= 8 and int((sparse != 0).sum()) >= 4  # 4 per expert, maybe shared
    torch.testing.assert_close(sparse, ref_disjoint(ref_trim_own(D, M, 0.2), torch.ones(2)))


# --- iso-c --------------------------------------------------------------------------------------------


def ref_iso_c(D, w, lam):
    """Iso-C in float64: SVD of the dense weighted sum, every singular value replaced by their mean."""
    delta = (D.double() * torch.tensor(w, dtype=torch.float64)[:, None, None]).sum(0)  # [out, in]
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)  # u [out, k], s [k], vh [k, in]
    return (lam * s.mean() * u @ vh).float(), s


@pytest.mark.parametrize("w,lam", [([1.0, 1.0, 1.0], 1.0), ([0.5, 2.0, 1.0], 0.3)])
def test_iso_c_matches_a_dense_svd_reference(case, w, lam):
    D, M = case
    ref, s = ref_iso_c(D, w, lam)
    merged = merge_weight("iso-c", inputs(D, M, w), MergeParams(lam=None if lam == 1.0 else lam))
    assert bool(merged.covered.all())  # dense: every entry of W, not only the union
    torch.testing.assert_close(merged.values, ref, rtol=1e-4, atol=1e-5)
    # the merged spectrum is flat: all min(out, in) singular values equal λ · mean(S)
    flat = torch.linalg.svdvals(merged.values.double())
    torch.testing.assert_close(flat, torch.full_like(flat, lam * float(s.mean())), rtol=1e-4, atol=1e-6)
    assert METHODS["iso-c"].dense and not METHODS["rescaled-overlap-mean"].dense


def test_iso_c_of_nothing_is_zero():
    zero = torch.zeros(1, *SHAPE)
    merged = merge_weight("iso-c", inputs(zero, zero != 0), MergeParams())
    assert bool((merged.values == 0).all())


# --- through compose: the dense result in a model folder and a merged expert ---------------------------


def _expert(model, base_path, name, task, seed, keep=0.1):
    from hubtool.format import fingerprint

    gen = torch.Generator().manual_seed(seed)
    deltas = {}
    for wname, p in model.named_parameters():
        if not wname.endswith(("q_proj.weight", "v_proj.weight")):
            continue
        shape = tuple(p.shape)
        n = shape[0] * shape[1]
        idx = torch.randperm(n, generator=gen)[: int(keep * n)].sort().values
        deltas[wname] = SparseDelta(shape, idx, torch.randn(idx.numel(), generator=gen) * 0.1, fingerprint(p.detach()))
    return Expert(name=name, task=task, kind="sparse", base_model=str(base_path.resolve()), deltas=deltas,
                  keep_ratio=keep, value_dtype="float32", targets="qv")


def test_iso_c_through_compose_out_as_expert_and_the_cli(tmp_path, hub_home):
    from safetensors.torch import load_file

    from hubtool.format import pack
    from hubtool.merge.compose import compose
    from hubtool.registry import Catalog

    base_path = tmp_path / "base"
    model = make_tiny_llama(base_path)
    cat = Catalog()
    experts = [_expert(model, base_path, "a", "squad", 1), _expert(model, base_path, "b", "xsum", 2)]
    refs = []
    for e in experts:
        pack(e, tmp_path / f"{e.name}.safetensors")
        refs.append(cat.register(tmp_path / f"{e.name}.safetensors").ref)
    w, lam = [1.0, 0.5], 0.6
    expected = {}
    for name in experts[0].deltas:
        D = torch.stack([e.deltas[name].to_dense() for e in experts])
        expected[name] = ref_iso_c(D, w, lam)[0]

    dry = compose(experts=refs, method="iso-c", lam=lam, weights=w, as_expert="iso", dry_run=True, catalog=cat)
    assert dry.output_bytes == sum(t.numel() for t in expected.values()) * 4  # dense fp32, not the union's size
    rec = compose(experts=refs, method="iso-c", lam=lam, weights=w, as_expert="iso", catalog=cat).record
    merged = cat.load(rec.ref)
    assert set(merged.deltas) == set(expected)
    for name, d in merged.deltas.items():
        assert isinstance(d, FullDelta)  # the union is all of W: stored dense
        torch.testing.assert_close(d.to_dense(), expected[name], rtol=1e-4, atol=1e-5)

    out = compose(experts=refs, method="iso-c", lam=lam, weights=w, out=tmp_path / "m", catalog=cat).out
    got = {}
    for f in out.glob("*.safetensors"):
        got.update(load_file(f))
    state = model.state_dict()
    for name, t in got.items():
        want = state[name] + expected[name] if name in expected else state[name]
        torch.testing.assert_close(t, want, rtol=1e-5, atol=1e-5)

    cli = subprocess.run([sys.executable, "-m", "hubtool", "compose", "--experts", ",".join(refs), "--method", "iso-c",
                          "--lambda", str(lam), "--weights", "1,0.5", "--as-expert", "iso-cli"],
                         capture_output=True, text=True, check=False)
    assert cli.returncode == 0, cli.stderr
    again = cat.load(cat.get("iso-cli").ref)
    for name, d in again.deltas.items():
        torch.testing.assert_close(d.to_dense(), merged.deltas[name].to_dense(), rtol=0, atol=0)


def test_compose_help_lists_every_registered_method():
    """The --method help is written out (hub --help imports no torch); it must not fall behind the registry."""
    out = subprocess.run([sys.executable, "-m", "hubtool", "compose", "--help"], capture_output=True, text=True,
                         check=False, env={**os.environ, "COLUMNS": "400", "TERM": "dumb"})
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    for name in METHODS:
        assert name in text, name


# --- diagnostics: coverage histogram ------------------------------------------------------------------


def _sparse(shape, pos, val):
    return SparseDelta(shape, torch.tensor(pos, dtype=torch.int64), torch.tensor(val, dtype=torch.float32))


def _hand_built():
    """w0 [2, 4] and w1 [2, 2]. A and B sparse; C sparse in w0 and full (all of W) in w1.
        w0 position:  0    1    2    5    7
        A            1   -2    3
        B                 1    1    1
        C                     10         1
        w1: A has 4.0 at 0; C is 0.5 everywhere."""
    a = {"w0": _sparse((2, 4), [0, 1, 2], [1.0, -2.0, 3.0]), "w1": _sparse((2, 2), [0], [4.0])}
    b = {"w0": _sparse((2, 4), [1, 2, 5], [1.0, 1.0, 1.0])}
    c = {"w0": _sparse((2, 4), [2, 7], [10.0, 1.0]), "w1": FullDelta((2, 2), torch.full((2, 2), 0.5))}
    return [Expert(name=n, task=n, kind="merged", base_model="tiny", deltas=d) for n, d in (("A", a), ("B", b), ("C", c))]


def test_coverage_histogram_weighted_by_magnitude():
    hist = coverage_histogram(_hand_built())
    # A: pos 0 alone |1|; pos 1 with B |2|; pos 2 with B and C |3|; w1 pos 0 with C (full) |4|: of 10
    assert hist["A"] == pytest.approx([0.1, 0.6, 0.3])
    assert hist["B"] == pytest.approx([1 / 3, 1 / 3, 1 / 3])  # pos 5 alone, pos 1 with A, pos 2 with A and C
    # C: pos 2 with A, B |10|; pos 7 alone |1|; w1: pos 0 with A |0.5|, three alone |1.5|: of 13
    assert hist["C"] == pytest.approx([2.5 / 13, 0.5 / 13, 10 / 13])


def test_coverage_histogram_by_count_and_by_ref():
    a, b, c = _hand_built()
    hist = coverage_histogram({"A@2": a, "B@1": b, "C@7": c}, weighted=False)
    assert list(hist) == ["A@2", "B@1", "C@7"]
    assert hist["A@2"] == pytest.approx([1 / 4, 2 / 4, 1 / 4])
    assert hist["C@7"] == pytest.approx([4 / 6, 1 / 6, 1 / 6])
    assert coverage_histogram([a]) == {"A": [1.0]}  # alone: everything is its own


def test_coverage_histogram_block_sparse_counts_only_entries_inside_w():
    # [3, 3] with 2x2 tiles: tile 3 (bottom right) has one entry inside W, position 8
    block = BlockSparseDelta((3, 3), 2, torch.tensor([3]), torch.tensor([[[5.0, 9.0], [9.0, 9.0]]]))
    e1 = Expert(name="blk", task="t", kind="block-sparse", base_model="tiny", deltas={"w": block})
    e2 = Expert(name="sp", task="u", kind="sparse", base_model="tiny", deltas={"w": _sparse((3, 3), [0, 8], [1.0, 3.0])})
    hist = coverage_histogram([e1, e2])
    assert hist["blk"] == pytest.approx([0.0, 1.0])  # the padding (9.0s) is not W's
    assert hist["sp"] == pytest.approx([0.25, 0.75])


def test_coverage_histogram_bad_input():
    a, b, _ = _hand_built()
    with pytest.raises(HubError, match="appears twice"):
        coverage_histogram([a, a])
    b.base_model = "other"
    with pytest.raises(HubError, match="one base model"):
        coverage_histogram([a, b])
    with pytest.raises(HubError, match="at least one"):
        coverage_histogram([])


# --- diagnostics: oracle mask -------------------------------------------------------------------------


def test_oracle_mask_keeps_the_merge_on_the_experts_own_positions(tmp_path):
    from hubtool.format import pack, unpack

    gen = torch.Generator().manual_seed(4)
    merged_dense = torch.randn(4, 6, generator=gen)
    merged = Expert(name="m", task="t", kind="merged", base_model="tiny", parents=["a@1", "b@1"],
                    value_dtype="float32", deltas={"w": FullDelta((4, 6), merged_dense), "v": _sparse((2, 2), [1], [7.0])})
    tiles = torch.tensor([1, 5])  # [4, 6] on 3x3 tiles is a 2x2 grid; tile 1 is rows 0-2, cols 3-5
    grid_shape = (4, 6)
    expert = Expert(name="a", task="squad", kind="merged", base_model="tiny", keep_ratio=0.1, deltas={
        "w": BlockSparseDelta(grid_shape, 3, tiles[:1], torch.ones(1, 3, 3)),
        "v": _sparse((2, 2), [0, 1], [1.0, 1.0]),
        "u": _sparse((2, 2), [3], [1.0]),  # a weight the merge does not touch: left out
    })
    oracle = oracle_mask(merged, expert)
    assert oracle.kind == "merged" and oracle.parents == ["a@1", "b@1"] and set(oracle.deltas) == {"w", "v"}
    w = oracle.deltas["w"]
    assert isinstance(w, BlockSparseDelta) and w.tiles.tolist() == [1]
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[0:3, 3:6] = True
    torch.testing.assert_close(w.to_dense(), merged_dense * mask)
    v = oracle.deltas["v"]
    assert v.indices.tolist() == [0, 1] and v.values.tolist() == [0.0, 7.0]  # 0 where the merge adds nothing
    pack(oracle, tmp_path / "o.safetensors")  # a valid expert: packs and reads back equal
    back = unpack(tmp_path / "o.safetensors")
    torch.testing.assert_close(back.deltas["w"].to_dense(), w.to_dense())


def test_oracle_mask_from_merge_weight_results():
    D = torch.zeros(2, *SHAPE)
    M = torch.zeros(2, *SHAPE, dtype=torch.bool)
    M[0, 0, :4] = True
    M[1, 0, 2:8] = True
    D[0][M[0]] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    D[1][M[1]] = 1.0
    merged = merge_weight("overlap-mean", inputs(D, M), MergeParams())
    pos = M[0].reshape(-1).nonzero().squeeze(1)
    expert = Expert(name="a", task="t", kind="sparse", base_model="tiny", deltas={"w": SparseDelta(SHAPE, pos, D[0].reshape(-1)[pos])})
    got = oracle_mask({"w": merged}, expert).deltas["w"]
    assert got.indices.tolist() == pos.tolist()
    assert got.values.tolist() == [1.0, 2.0, 2.0, 2.5]  # alone, alone, (3+1)/2, (4+1)/2


def test_oracle_mask_refuses_dense_experts_and_other_bases():
    merged = Expert(name="m", task="t", kind="merged", base_model="tiny", deltas={"w": FullDelta((2, 2), torch.ones(2, 2))})
    lora = Expert(name="l", task="t", kind="lora", base_model="tiny",
                  deltas={"w": LoraDelta((2, 2), torch.ones(1, 2), torch.ones(2, 1), 1.0)})
    with pytest.raises(HubError, match="expected a sparse or block-sparse expert"):
        oracle_mask(merged, lora)
    full = Expert(name="f", task="t", kind="full", base_model="tiny", deltas={"w": FullDelta((2, 2), torch.ones(2, 2))})
    with pytest.raises(HubError, match="full delta"):
        oracle_mask(merged, full)
    other = Expert(name="s", task="t", kind="sparse", base_model="elsewhere", deltas={"w": _sparse((2, 2), [0], [1.0])})
    with pytest.raises(HubError, match="base"):
        oracle_mask(merged, other)
    wrong = Expert(name="s", task="t", kind="sparse", base_model="tiny", deltas={"w": _sparse((3, 2), [0], [1.0])})
    with pytest.raises(HubError, match="shape"):
        oracle_mask(merged, wrong)
