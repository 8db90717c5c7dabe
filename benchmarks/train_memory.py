"""Memory at scale: what a sparse expert keeps while it trains, against the paper code's masked dense delta.

A Phi-3-mini-shaped base model cut to a few layers (Phi3Config with Phi-3-mini's sizes: hidden 3072,
intermediate 8192, 32 heads, vocab 32064; random fp32 weights made here), targets qkv (the fused
qkv_proj, W [9216, 3072]), keep ratio 0.05, batch 1 x 64 tokens. Each method runs in its own
subprocess: the mask is chosen, a few real training steps run with it frozen (AdamW, clip 0.1), and
right after the last optimizer step (gradients and optimizer state both alive) every live tensor
that is not a base-model weight is counted and itemised:

    trainable   parameters with requires_grad (our kept values; the peer's dense delta)
    grad        their .grad
    optimizer   optimizer.state (AdamW exp_avg, exp_avg_sq, step)
    mask/index  buffers, frozen parameters, tensor attributes and tensors held by gradient hooks
                of the adapter modules (our kept positions; the peer's dense masks and indices)
    other       any other live tensor found by the garbage collector (a leak detector: should be 0)

Bytes are storage bytes, each storage counted once. RSS is read from /proc/self/status: "model" is
VmRSS right after the base model is built; "peak RSS" is VmHWM from then to the end (mask selection
and any dense phase included); "frozen steps" is VmHWM over the frozen-mask steps after the first
(the high-water mark is reset through /proc/self/clear_refs), i.e. the steady state of training.

    .venv/bin/python benchmarks/train_memory.py [--layers 4] [--steps 3] [--keep-ratio 0.05]

The peer ("masked dense", the approach of the paper's published code, microsoft/mttl): a faithful
re-implementation, written here, of the `sparse_mask_adapter` modifier as of the paper, from reading
  mttl/models/modifiers/sparse_mask.py   (SparseMaskAdapter registered as "sparse_mask_adapter",
                                          mod_forward, preprocess_for_mask_update,
                                          revert_weight_grad_and_update_mask, hook_factory,
                                          get_regular_sparse_mask, make_sparse_model_during_training)
  mttl/models/modifiers/sparse_utils/sparse_linear.py   (MaskedLinear, the later "mls_sparse_adapter":
                                          the same dense delta + dense binary_mask in the weight dtype)
What it keeps per target weight [out, in]:
  - sparse_layer.weight: the delta, an nn.Parameter of torch.zeros(shape), i.e. dense fp32, full size
  - sparse_layer.weight_mask: an nn.Parameter(requires_grad=False) of 0./1. in fp32, full size
    (rebuilt by zeros_like(weight) + scatter_add_ of ones at the kept positions)
  - keep_mask_idx: int64 kept positions [nnz] (torch.where(mask.flatten() == 1)[0], mask_cat "scatter")
  - a gradient hook `grads * keep_mask` on the delta whose closure holds the selection's keep_mask,
    a second dense fp32 [out, in] tensor (`(grad >= threshold).float()`), alive as long as the hook
  - the dense fp32 gradient of the delta (the hook zeroes it outside the mask but it stays dense) and
    AdamW's dense exp_avg / exp_avg_sq (weight_mask is excluded from the optimizer by
    non_trainable_param_patterns and has no gradient)
Mask selection is its SNIP step: weight_mask = ones, requires_grad; one forward/backward; keep the
int(keep_ratio * numel) largest *signed* weight_mask.grad entries (ties at the threshold kept).
Its block variant stores the same dense tensors (its MatrixBlockIndexer also swaps in/out, so it
cannot tile a non-square W correctly); the peer is measured with regular sparsity only.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn

from hubtool.kernels.fold import Fold

METHODS = {  # name -> what runs in the subprocess
    "base model only": "base",
    "ours sparse (snip, frozen)": "sparse",
    "ours sparse (sensitivity, 1 dense step)": "sparse-sensitivity",
    "ours block-sparse B=16 (snip)": "block-sparse",
    "peer masked dense (mttl)": "peer",
}
SEQ_LEN = 64


# --- the base model and its data ------------------------------------------------------------------


def phi3_mini(layers: int) -> nn.Module:
    """Phi-3-mini's shapes, `layers` decoder layers, random fp32 weights (seeded: same model each run)."""
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(0)
    config = Phi3Config(
        hidden_size=3072,
        intermediate_size=8192,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32064,
        num_hidden_layers=layers,
        tie_word_embeddings=False,
    )
    return Phi3ForCausalLM(config).float()


def token_batches(n: int, vocab: int = 32064) -> list[tuple[list[int], list[int]]]:
    """n examples of SEQ_LEN random tokens, every token scored (labels = input_ids)."""
    gen = torch.Generator().manual_seed(1)
    rows = torch.randint(0, vocab, (n, SEQ_LEN), generator=gen).tolist()
    return [(row, row) for row in rows]


# --- the peer: mttl's masked dense delta -----------------------------------------------------------


class MaskedDenseDelta(nn.Module):
    """y = layer(x) + x (D ⊙ M)ᵀ; D dense fp32 [out, in] trainable, M dense fp32 [out, in] 0/1."""

    def __init__(self, layer: nn.Linear, keep_ratio: float):
        super().__init__()
        self.layer = layer  # the base Linear, frozen and untouched
        shape = tuple(layer.weight.shape)
        self.delta = nn.Parameter(torch.zeros(shape))  # fp32 whatever the base dtype, as mttl
        self.weight_mask = nn.Parameter(torch.ones(shape), requires_grad=False)
        self.keep_mask_idx: torch.Tensor | None = None  # int64 [nnz] after selection
        self.keep_ratio = keep_ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sparse_out = F.linear(x.float(), self.delta * self.weight_mask)
        return self.layer(x) + sparse_out.to(x.dtype)

    def begin_mask_update(self) -> None:
        """SNIP: the delta is frozen and the all-ones mask itself gets a (dense) gradient."""
        self.delta.requires_grad_(False)
        self.weight_mask = nn.Parameter(torch.ones_like(self.weight_mask), requires_grad=True)

    @torch.no_grad()
    def end_mask_update(self) -> None:
        """Top int(k * numel) signed mask gradients -> fp32 0/1 mask, index list, masking grad hook."""
        score = self.weight_mask.grad
        n_keep = int(score.numel() * self.keep_ratio)
        threshold = torch.topk(score.flatten(), n_keep, sorted=True).values[-1]
        self.set_mask((score >= threshold).float())  # [out, in] fp32

    @torch.no_grad()
    def set_mask(self, keep_mask: torch.Tensor) -> None:
        """The state after a selection, from a dense fp32 0/1 keep_mask [out, in]."""
        self.delta.requires_grad_(True)
        self.keep_mask_idx = torch.where(keep_mask.flatten() == 1)[0]
        weight_mask = torch.zeros_like(self.delta)
        weight_mask.flatten().scatter_add_(0, self.keep_mask_idx, torch.ones(self.keep_mask_idx.shape))
        self.weight_mask = nn.Parameter(weight_mask, requires_grad=False)
        self.delta.register_hook(_mask_grad_hook(keep_mask))


def _mask_grad_hook(keep_mask: torch.Tensor):
    # A factory, as mttl's hook_factory: the closure keeps its own dense keep_mask alive.
    def hook(grad: torch.Tensor) -> torch.Tensor:
        return grad * keep_mask

    return hook


def run_peer(model: nn.Module, steps: int, keep_ratio: float) -> None:
    from hubtool.sparse.adapters import _replace
    from hubtool.sparse.targets import find_targets

    model.requires_grad_(False)
    wrapped = []
    for name in find_targets(model, "qkv"):
        module = MaskedDenseDelta(model.get_submodule(name), keep_ratio)
        _replace(model, name, module)
        wrapped.append(module)
    data = token_batches(steps + 2)
    batch = lambda i: {"input_ids": torch.tensor([data[i][0]]), "labels": torch.tensor([data[i][1]])}
    params = [m.delta for m in wrapped]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)

    def train_step(i: int) -> None:
        model(**batch(i)).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.1)
        optimizer.step()  # the measuring hook runs here
        optimizer.zero_grad(set_to_none=True)

    model.train()
    # The delta starts at zero, so the mask gradient (= delta * dL/dW_eff) is zero everywhere: like
    # mttl, train densely (mask all ones) before the first selection, here for one step.
    train_step(0)
    for m in wrapped:  # SNIP selection on one batch (make_sparse_model_during_training)
        m.begin_mask_update()
    model(**batch(1)).loss.backward()
    for m in wrapped:
        m.end_mask_update()
    for i in range(2, steps + 2):
        train_step(i)


def run_ours(model: nn.Module, method: str, steps: int, keep_ratio: float) -> dict:
    from hubtool.sparse.adapters import Adapter
    from hubtool.sparse.config import AdapterConfig
    from hubtool.sparse.trainer import TrainConfig, Trainer

    sensitivity = method == "sparse-sensitivity"
    config = AdapterConfig(
        method="block-sparse" if method == "block-sparse" else "sparse",
        targets="qkv",
        keep_ratio=keep_ratio,
        mask_score="sensitivity" if sensitivity else "snip",
        mask_interval=1,
        mask_steps=1,  # sensitivity: select after dense step 1, frozen from step 2 on
    )
    adapter = Adapter.apply(model, config)
    total = steps + 1 if sensitivity else steps
    train_cfg = TrainConfig(max_steps=total, batch_size=1, quiet=True, eval_every=10**9, save_every=10**9)
    Trainer(model, adapter, token_batches(total), config=train_cfg).fit()
    return {"kept": sum(int(layer.values.numel()) for layer in adapter.layers.values())}


# --- counting bytes -------------------------------------------------------------------------------


def storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def count_state(model: nn.Module, optimizer: torch.optim.Optimizer, base: set[int]) -> dict:
    """Itemised bytes of every live non-base tensor: {category: {item: bytes}}."""
    seen = set(base)
    items: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def add(category: str, item: str, t: torch.Tensor | None) -> None:
        if not torch.is_tensor(t) or t.layout != torch.strided or storage_key(t) in seen:
            return
        seen.add(storage_key(t))
        items[category][f"{item} {str(t.dtype).removeprefix('torch.')}"] += t.untyped_storage().nbytes()

    for module in model.modules():
        for name, p in module._parameters.items():
            if p is None:
                continue
            add("trainable" if p.requires_grad else "mask/index", name, p)
            add("grad", f"{name}.grad", p.grad)
            for hook in (getattr(p, "_backward_hooks", None) or {}).values():
                for cell in hook.__closure__ or ():
                    add("mask/index", f"{name} grad-hook mask", cell.cell_contents)
        for name, b in module._buffers.items():
            add("mask/index", name, b)
        for name, value in vars(module).items():
            add("mask/index", name, value)
            if isinstance(value, Fold):  # W + D folded into W: the base entries it restores W from
                add("mask/index", f"{name}.base", value.base)
                add("mask/index", f"{name}.positions", value.positions)
                add("mask/index", f"{name}.take", value.take)
    for state in optimizer.state.values():
        for key, value in state.items():
            add("optimizer", key, value)
    for obj in gc.get_objects():  # whatever is left: should be nothing of size
        if isinstance(obj, torch.Tensor):
            add("other", "unaccounted", obj)
    return {cat: dict(sorted(v.items())) for cat, v in items.items()}


def rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, MB."""
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    return kb / 1024


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM to the current RSS (Linux)
        f.write("5")


# --- one method per subprocess --------------------------------------------------------------------


def worker(method: str, layers: int, steps: int, keep_ratio: float) -> dict:
    from torch.optim.optimizer import register_optimizer_step_post_hook

    torch.set_num_threads(1)
    model = phi3_mini(layers)
    model_rss = rss_mb("VmRSS")
    reset_peak_rss()
    base = {storage_key(p) for p in model.parameters()} | {storage_key(b) for b in model.buffers()}
    result: dict = {"method": method, "model_rss_mb": model_rss}
    if method == "base":
        with torch.no_grad():
            model(torch.tensor([token_batches(1)[0][0]]))
    else:
        seen_steps = [0]
        last = steps + 1 if method in ("sparse-sensitivity", "peer") else steps

        def measure(optimizer, args, kwargs) -> None:  # after optimizer.step(): grads and state alive
            seen_steps[0] += 1
            if seen_steps[0] == last - steps + 1:  # first step with the mask frozen is done
                result["setup_peak_rss_mb"] = rss_mb("VmHWM")  # selection and any dense phase
                reset_peak_rss()
            if seen_steps[0] == last:
                result["frozen_peak_rss_mb"] = rss_mb("VmHWM")
                result["bytes"] = count_state(model, optimizer, base)

        handle = register_optimizer_step_post_hook(measure)
        if method == "peer":
            run_peer(model, steps, keep_ratio)
            result["kept"] = sum(
                int(m.keep_mask_idx.numel()) for m in model.modules() if isinstance(m, MaskedDenseDelta)
            )
        else:
            result.update(run_ours(model, method, steps, keep_ratio))
        handle.remove()
    result["peak_rss_mb"] = max(rss_mb("VmHWM"), result.get("setup_peak_rss_mb", 0.0))
    return result


# --- the table ------------------------------------------------------------------------------------

CATEGORIES = ("trainable", "grad", "optimizer", "mask/index", "other")


def mb(n: float) -> str:
    return f"{n / 2**20:9.1f}"


def print_table(results: dict[str, dict], layers: int, steps: int, keep_ratio: float) -> None:
    print(
        f"Phi-3-mini shapes, {layers} layers, fp32, targets qkv (W [9216, 3072] x {layers}), "
        f"keep ratio {keep_ratio}, batch 1x{SEQ_LEN}, {steps} steps with the mask frozen, 1 thread\n"
    )
    head = f"{'method':40} {'kept':>10}" + "".join(f" {c + ' MB':>13}" for c in CATEGORIES)
    print(
        head + f" {'total MB':>9} {'B/kept':>7} {'peak RSS':>9} {'- model':>8} {'frozen steps - model':>21}"
    )
    totals = {}
    for label, r in results.items():
        cats = {c: sum(r.get("bytes", {}).get(c, {}).values()) for c in CATEGORIES}
        total = sum(cats.values())
        totals[label] = (total, cats["trainable"] + cats["optimizer"])
        kept = r.get("kept")
        per_kept = f"{total / kept:7.1f}" if kept else f"{'':7}"
        print(
            f"{label:40} {kept or '':>10}"
            + "".join(f" {mb(cats[c]):>13}" for c in CATEGORIES)
            + f" {mb(total)} {per_kept} {r['peak_rss_mb']:9.0f} {r['peak_rss_mb'] - r['model_rss_mb']:8.0f}"
            + (f" {r['frozen_peak_rss_mb'] - r['model_rss_mb']:21.0f}" if "frozen_peak_rss_mb" in r else "")
        )
    print("\nitemised (MB):")
    for label, r in results.items():
        for cat, rows in r.get("bytes", {}).items():
            for item, n in rows.items():
                print(f"  {label:40} {cat:11} {item:36} {mb(n)}")
    peer = totals.get("peer masked dense (mttl)")
    if peer:
        print("\nratio ours / peer   (all state)   (trainable + optimizer)")
        for label, (total, core) in totals.items():
            if label.startswith("ours"):
                print(f"  {label:40} {total / peer[0]:7.4f}   {core / peer[1]:7.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="training steps with the mask frozen")
    parser.add_argument("--keep-ratio", type=float, default=0.05)
    parser.add_argument("--only", nargs="*", choices=list(METHODS.values()), help="run these methods only")
    parser.add_argument("--worker", choices=list(METHODS.values()), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.layers, args.steps, args.keep_ratio)))
        return
    results = {}
    for label, method in METHODS.items():
        if args.only and method not in args.only:
            continue
        argv = [sys.executable, __file__, "--worker", method, "--layers", str(args.layers)]
        argv += ["--steps", str(args.steps), "--keep-ratio", str(args.keep_ratio)]
        done = subprocess.run(argv, check=True, capture_output=True, text=True)
        results[label] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  ran {label}", file=sys.stderr, flush=True)
    print_table(results, args.layers, args.steps, args.keep_ratio)


if __name__ == "__main__":
    main()
