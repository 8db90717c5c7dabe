"""mergekit as an outside oracle: our task-arithmetic and ties give the weights mergekit gives on the same inputs.

A tiny random Llama (fp32) and 3 sparse experts; for mergekit every expert is materialised as a dense model
folder (base + delta, fp32, so the inputs are the same numbers), merged through mergekit's Python API on the
CPU without a tokenizer. Skipped when mergekit is absent (`pip install -e '.[bench]'`).

Conventions checked here, where the two tools agree (mergekit 0.1.5):
  task-arithmetic  base + lambda * Σ w_t D_t; no normalisation by Σ w (mergekit `normalize` defaults to false)
  ties             each D_t trimmed to its int(density * numel(W)) largest magnitudes (density counts W's
                   entries, not the expert's kept entries), the sign of Σ w_t D_t elected per entry (>= 0 is
                   +), then Σ w_t D_t / Σ w_t over the nonzero entries that agree, times lambda
  mean             Σ w_t D_t / Σ w_t, which is mergekit's `linear` (normalize true) of the dense models
Defaults differ and are passed explicitly: our task-arithmetic lambda defaults to 0.4 (mergekit 1.0), our ties
density to 0.2 (mergekit 1.0, no trimming).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("mergekit")
# mergekit's lazy unpickler touches numpy.core at import; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:numpy.core is deprecated:DeprecationWarning")

from tiny import make_tiny_llama

from hubtool.delta import Expert, SparseDelta
from hubtool.format import fingerprint, pack
from hubtool.merge.compose import compose
from hubtool.registry import Catalog

TARGETS = ("q_proj", "k_proj", "v_proj")
WEIGHTS = [1.0, 0.5, 2.0]  # unequal, so weighting in the sum, the sign election and the mean all matter


def _state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _make_expert(model, base: Path, name: str, seed: int, keep: float = 0.3) -> Expert:
    gen = torch.Generator().manual_seed(seed)
    deltas = {}
    for wname, w in model.named_parameters():
        if not (wname.endswith(".weight") and any(t in wname for t in TARGETS)):
            continue
        shape = tuple(w.shape)
        n = shape[0] * shape[1]
        idx = torch.randperm(n, generator=gen)[: int(keep * n)].sort().values
        deltas[wname] = SparseDelta(shape, idx, torch.randn(idx.numel(), generator=gen) * 0.05, fingerprint(w))
    return Expert(name=name, task=name, kind="sparse", base_model=str(base.resolve()), deltas=deltas,
                  keep_ratio=keep, value_dtype="float32", targets="qkv")


@pytest.fixture
def setup(hub_home, tmp_path):
    """(catalog, expert refs, the experts, base folder, dense expert folders)."""
    base = tmp_path / "base"
    model = make_tiny_llama(base)
    cat = Catalog(blobs=hub_home / "blobs")
    experts, refs, dense = [], [], []
    base_state = _state(base)
    for i in range(3):
        expert = _make_expert(model, base, f"e{i}", seed=10 + i)
        path = tmp_path / f"e{i}.safetensors"
        pack(expert, path)
        refs.append(cat.register(path).ref)
        experts.append(expert)
        # the dense "fine-tuned model" mergekit reads: every tensor of the base, plus the delta
        folder = tmp_path / f"dense{i}"
        state = {k: v.clone() for k, v in model.state_dict().items()}
        for name, d in expert.deltas.items():
            d.add_to_(state[name])
        model.save_pretrained(folder, state_dict=state)
        assert set(_state(folder)) == set(base_state)
        dense.append(folder)
    return cat, refs, experts, base, dense


def _mergekit(method: str, base: Path | None, dense: list[Path], out: Path, *, lam: float | None = None,
              density: float | None = None):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    models = []
    for folder, w in zip(dense, WEIGHTS):
        params = {"weight": w} if density is None else {"weight": w, "density": density}
        models.append({"model": str(folder), "parameters": params})
    config = {"merge_method": method, "models": models, "dtype": "float32", "out_dtype": "float32"}
    if base is not None:
        config["base_model"] = str(base)
    if lam is not None:
        config["parameters"] = {"lambda": lam}
    config = MergeConfiguration.model_validate(config)
    run_merge(config, str(out), options=MergeOptions(device="cpu", copy_tokenizer=False, write_model_card=False,
                                                      quiet=True))
    return _state(out)


def _assert_same(ours: dict, theirs: dict, base: dict, adapted: set[str]) -> None:
    assert set(ours) == set(theirs)
    for name, got in ours.items():
        # both sides compute in fp32: far inside bf16 tolerance (a relative 2^-8)
        torch.testing.assert_close(got, theirs[name], rtol=1e-5, atol=1e-6, msg=name)
        if name in adapted:
            assert not torch.equal(got, base[name]), f"{name} was not changed by the merge"
        else:
            assert torch.equal(got, base[name]), f"{name} is not an adapted weight but changed"


def test_task_arithmetic_matches_mergekit(setup, tmp_path):
    cat, refs, experts, base, dense = setup
    ours = compose(experts=refs, weights=WEIGHTS, method="task-arithmetic", lam=0.7, out=tmp_path / "ours",
                   catalog=cat)
    theirs = _mergekit("task_arithmetic", base, dense, tmp_path / "mk", lam=0.7)
    _assert_same(_state(ours.out), theirs, _state(base), set(experts[0].deltas))


def test_ties_matches_mergekit(setup, tmp_path):
    cat, refs, experts, base, dense = setup
    density = 0.2  # below the experts' keep ratio 0.3, so trimming removes entries
    ours = compose(experts=refs, weights=WEIGHTS, method="ties", density=density, lam=0.9, out=tmp_path / "ours",
                   catalog=cat)
    theirs = _mergekit("ties", base, dense, tmp_path / "mk", lam=0.9, density=density)
    base_state = _state(base)
    got = _state(ours.out)
    _assert_same(got, theirs, base_state, set(experts[0].deltas))
    # the trim really bit: the merged delta is not the untrimmed TIES merge
    untrimmed = compose(experts=refs, weights=WEIGHTS, method="ties", density=1.0, lam=0.9,
                        out=tmp_path / "untrimmed", catalog=cat)
    name = next(iter(experts[0].deltas))
    assert not torch.allclose(_state(untrimmed.out)[name], got[name])


def test_mean_matches_mergekit_linear(setup, tmp_path):
    cat, refs, experts, base, dense = setup
    ours = compose(experts=refs, weights=WEIGHTS, method="mean", out=tmp_path / "ours", catalog=cat)
    theirs = _mergekit("linear", None, dense, tmp_path / "mk")  # Σ w_t (W + D_t) / Σ w_t, no base model
    _assert_same(_state(ours.out), theirs, _state(base), set(experts[0].deltas))
