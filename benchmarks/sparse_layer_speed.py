"""One adapted layer alone: where a training step's adapter time goes, method against method.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sparse_layer_speed.py [--reps 40] [--threads 1] [--small]

SmolLM2-135M's target shapes (q_proj [576, 576], k_proj/v_proj [192, 576]), N = 8 x 128 rows, fp32,
keep ratio 0.05, deterministic algorithms on (as the Trainer runs on CPU). One "step" of a layer is
forward + backward of a fixed upstream gradient (dL/dx is always needed: the layers below train) +
an in-place change of the trainable tensors (as an optimizer step does, so a folded layer refreshes).

    floor          F.linear on the frozen W; backward gives dL/dx only (what every adapter pays)
    sparse         ours, mask frozen, W + D folded into W in place (the Trainer's path)
    sparse-copy    ours, W + D built into a fresh copy of W in forward and again in backward (before)
    block-sparse   ours, 16 x 16 tiles, folded
    lora           PEFT's lora.Linear, r = 4, alpha 16
    full           ours, a dense fp32 delta on W (full fine-tuning of this weight)
    masked-dense   the paper's code (benchmarks/train_memory.py's MaskedDenseDelta): W x + (D ⊙ M) x

and the kept-entry gradient alone, three ways: sampled_addmm on the CSR pattern rebuilt each call
(what `sparse` runs), the same on a pattern kept between calls, and dense gᵀx then a gather. Methods are
interleaved rep by rep; the table gives medians of wall time and of this thread's CPU time
(time.thread_time: with 1 thread, the work done whatever else the shared cores run; the fairer
figure on a loaded machine) and their ratios to the floor of the same shape.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

SHAPES = {"q_proj": (576, 576), "k_proj": (192, 576)}
KEEP = 0.05


def make_layers(out_f: int, in_f: int) -> dict[str, nn.Module]:
    from peft import LoraConfig
    from peft.tuners.lora.layer import Linear as PeftLoraLinear
    from train_memory import MaskedDenseDelta

    from hubtool.sparse.layers import FullLayer, SparseLayer
    from hubtool.sparse.masks import select

    gen = torch.Generator().manual_seed(0)
    base = nn.Linear(in_f, out_f, bias=False).requires_grad_(False)
    scores = torch.rand((out_f, in_f), generator=gen)
    layers: dict[str, nn.Module] = {"floor": base}
    for name, block in (("sparse", None), ("sparse-copy", None), ("block-sparse", 16)):
        layer = SparseLayer(nn.Linear(in_f, out_f, bias=False).requires_grad_(False), block_size=block)
        layer.weight.data.copy_(base.weight)
        layer.freeze(select(scores, KEEP, block))
        layer.values.data.normal_(0, 1e-3, generator=gen)
        layer.fold_weights(name != "sparse-copy")
        layers[name] = layer
    lora_base = nn.Linear(in_f, out_f, bias=False).requires_grad_(False)
    lora_base.weight.data.copy_(base.weight)
    config = LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0)
    layers["lora"] = PeftLoraLinear(lora_base, "default", config, r=4, lora_alpha=16)
    full_base = nn.Linear(in_f, out_f, bias=False).requires_grad_(False)
    full_base.weight.data.copy_(base.weight)
    layers["full"] = FullLayer(full_base)
    peer = MaskedDenseDelta(base, KEEP)  # shares the frozen base; its mask: the same random top-k
    mask = torch.zeros(out_f * in_f)
    mask[select(scores, KEEP, None)] = 1.0
    peer.weight_mask = nn.Parameter(mask.view(out_f, in_f), requires_grad=False)
    layers["masked-dense"] = peer
    return layers


def step(layer: nn.Module, x: torch.Tensor, g: torch.Tensor) -> None:
    y = layer(x)
    y.backward(g)
    x.grad = None
    with torch.no_grad():
        for p in layer.parameters():
            if p.requires_grad:
                p.add_(p.grad, alpha=-1e-6)  # stands in for the optimizer's in-place update
                p.grad = None


def grad_variants(out_f: int, in_f: int, g: torch.Tensor, x: torch.Tensor):
    from hubtool.kernels import reference
    from hubtool.sparse.masks import select

    kept = select(torch.rand((out_f, in_f), generator=torch.Generator().manual_seed(0)), KEEP, None)
    pattern = reference.csr_pattern(kept, (out_f, in_f))
    return {
        "grad: sampled, kept CSR": lambda: reference.sparse_grad_values(g, x, kept, (out_f, in_f), pattern),
        "grad: sampled, rebuilt CSR": lambda: reference.sparse_grad_values(g, x, kept, (out_f, in_f)),
        "grad: dense gᵀx + gather": lambda: (g.t() @ x).view(-1)[kept],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", type=int, default=8 * 128, help="N, the batch x sequence rows")
    ap.add_argument("--small", action="store_true", help="5 reps (a smoke run)")
    args = ap.parse_args()
    reps = 5 if args.small else args.reps
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    print(f"one layer, N = {args.rows} rows, fp32, keep {KEEP}, {args.threads} thread(s), deterministic on; "
          f"median of {reps} interleaved reps, ms")
    for shape_name, (out_f, in_f) in SHAPES.items():
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(args.rows, in_f, generator=gen).requires_grad_(True)
        g = torch.randn(args.rows, out_f, generator=gen)
        runs = {name: (lambda layer=layer, x=x, g=g: step(layer, x, g)) for name, layer in make_layers(out_f, in_f).items()}
        runs |= grad_variants(out_f, in_f, g, x.detach())
        times: dict[str, list[float]] = {name: [] for name in runs}
        cpu: dict[str, list[float]] = {name: [] for name in runs}
        for fn in runs.values():  # warm-up: first folds, allocator, MKL's first call
            fn()
        for _ in range(reps):
            for name, fn in runs.items():
                t0, c0 = time.perf_counter(), time.thread_time()
                fn()
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.thread_time() - c0)
        med = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
        cpu_ms = {name: statistics.median(ts) * 1e3 for name, ts in cpu.items()}
        print(f"\n{shape_name} [{out_f}, {in_f}]")
        print(f"  {'method':28s} {'wall ms':>10s} {'x floor':>8s} {'cpu ms':>8s} {'x floor':>8s} {'cpu - floor':>12s}")
        for name, ms in med.items():
            c = cpu_ms[name]
            print(f"  {name:28s} {ms:10.3f} {ms / med['floor']:8.2f} {c:8.3f} "
                  f"{c / cpu_ms['floor']:8.2f} {c - cpu_ms['floor']:12.3f}")
        for label, t in (("wall", med), ("cpu", cpu_ms)):
            print(f"  {label}: sparse {t['masked-dense'] / t['sparse']:.2f}x faster than masked-dense, "
                  f"{t['sparse'] / t['lora']:.2f}x lora, {t['sparse-copy'] / t['sparse']:.2f}x faster than sparse-copy; "
                  f"overhead over the floor: sparse {t['sparse'] - t['floor']:.2f} ms, lora {t['lora'] - t['floor']:.2f}, "
                  f"masked-dense {t['masked-dense'] - t['floor']:.2f}")


if __name__ == "__main__":
    main()
