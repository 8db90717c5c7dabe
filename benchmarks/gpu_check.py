"""One GPU check (issue 15 §7), for the day a machine with an NVIDIA GPU is lent: under 8 minutes, one table.

    PYTHONPATH=. python3 benchmarks/gpu_check.py            # on the GPU machine, from the repo root
    PYTHONPATH=. python3 benchmarks/gpu_check.py --smoke    # anywhere: every section on CPU, tiny shapes,
                                                            # Triton in its interpreter (checks this script)

Needs only torch, transformers, safetensors, numpy, triton and this repo on PYTHONPATH (no catalog, no
internet, no GGUF). Without a CUDA GPU it says so and exits 0. Sections:

  tests    pytest -k cuda on the test files that have CUDA cases (grep "cuda" in tests/test_*.py)
  kernels  each Triton kernel (hubtool.kernels.triton_sparse) against the torch path on the same GPU, at
           real shapes: SmolLM2-135M q_proj [576, 576] and k/v_proj [192, 576], Phi-3-mini qkv_proj
           [9216, 3072]; keep ratio 0.05, 16 x 16 tiles, N = 1024 token rows. Checked (scatter-adds bit for
           bit, gradients to 1e-4 of their largest entry), then timed: ratio = triton / torch (< 1: faster)
  train    one training step (forward, backward, clip, AdamW) of the floor (every weight frozen, backward
           down to the embeddings), sparse, block-sparse, LoRA r=4 and full fine-tuning of q/k/v, as
           hub train runs them on a GPU (fp32 weights, bf16 autocast, sparse kinds folded), on a
           SmolLM2-135M-shaped LlamaForCausalLM built from its config (random weights); batch 16 x 512
           random tokens. Ratios: step time x floor, x LoRA (benchmarks/train_speed.py is the CPU study)
  compose  the streaming merge of `hub compose` (benchmarks/compose_scale.py's profile: merge + add and
           round per weight) of 20 random sparse experts (keep 0.05, compose_common.random_sparse) into
           Phi-3-mini-shaped qkv_proj weights, on the CPU as compose runs today and with the same
           library calls on the GPU (scatter-adds through Triton); the merged weights must agree bit
           for bit; ratio = GPU / CPU time per weight

Exit status: 0 when every check passed (or no GPU), 1 when one failed or a section raised.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # train_speed, compose_common: the sibling benchmarks

# SmolLM2-135M(-Instruct)'s config, as hubtool converts it ($HUB_HOME/models/smollm2-135m/config.json)
SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
           "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152, "max_position_embeddings": 8192,
           "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": True, "hidden_act": "silu",
           "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
KERNEL_SHAPES = {"smollm2 q_proj": (576, 576), "smollm2 k/v_proj": (192, 576), "phi-3-mini qkv_proj": (9216, 3072)}
PHI3_QKV = (9216, 3072)
TRAIN_METHODS = ("floor", "sparse", "block-sparse", "lora", "full")
KEEP, BLOCK, N_ROWS = 0.05, 16, 1024
GRAD_TOL = 1e-4  # |triton - torch| / max |torch| for the fp32 gradients (sums in another order)

Row = tuple[str, str, str, str, str]  # section, case, measured, ratio, check ("ok", "FAILED ...", "skipped ...")


# --- kernels ------------------------------------------------------------------------------------------------


def kernel_cases(device: str, shape: tuple[int, int], block: int = BLOCK, n_rows: int = N_ROWS, seed: int = 0):
    """(a weight [out, in], [(kernel, triton fn, torch fn, exact)]) on one weight shape. Each fn takes the
    weight to work on (the scatter-adds add into it in place; the gradients ignore it) and returns what to
    compare: give it a copy to check, the same buffer to time."""
    import torch

    from hubtool.delta.grid import TileGrid
    from hubtool.kernels import reference
    from hubtool.kernels import triton_sparse as tk

    gen = torch.Generator(device=device).manual_seed(seed)
    out_f, in_f = shape
    numel = out_f * in_f
    kept = torch.randperm(numel, device=device, generator=gen)[: max(1, int(KEEP * numel))].sort().values
    values = torch.randn(kept.numel(), device=device, generator=gen)
    cells = TileGrid(shape, block).cells
    tiles = torch.randperm(cells, device=device, generator=gen)[: max(1, int(KEEP * cells))]
    tiles[0] = cells - 1  # the bottom-right tile: the one W's edges cut when B does not divide them
    tiles = tiles.unique().sort().values
    tile_values = torch.randn(tiles.numel(), block, block, device=device, generator=gen)
    w = torch.randn(shape, device=device, generator=gen)
    g = torch.randn(n_rows, out_f, device=device, generator=gen)
    x = torch.randn(n_rows, in_f, device=device, generator=gen)
    pattern = reference.csr_pattern(kept, shape)
    return w, [
        ("scatter-add", lambda w: tk.sparse_scatter_add_(w, kept, values, 0.5),
         lambda w: reference.sparse_scatter_add_(w, kept, values, 0.5), True),
        ("kept-entry grad", lambda w: tk.sparse_grad_values(g, x, kept, shape),
         lambda w: reference.sparse_grad_values(g, x, kept, shape, pattern), False),
        (f"block-add B={block}", lambda w: tk.block_scatter_add_(w, tiles, tile_values, block, -2.0),
         lambda w: reference.block_scatter_add_(w, tiles, tile_values, block, -2.0), True),
        (f"block grad B={block}", lambda w: tk.block_grad_values(g, x, tiles, shape, block),
         lambda w: reference.block_grad_values(g, x, tiles, shape, block), False),
    ]


def check_kernels(device: str, shape: tuple[int, int], block: int = BLOCK, n_rows: int = N_ROWS) -> dict[str, str]:
    """{kernel: 'ok' or what differs} for one shape (tests/test_gpu_check.py's CUDA case calls this)."""
    w, cases = kernel_cases(device, shape, block, n_rows)
    return {name: compare(tri(w.clone()), tor(w.clone()), exact) for name, tri, tor, exact in cases}


def compare(got, want, exact: bool) -> str:
    """'ok', or what differs: exact results bit for bit, gradients within GRAD_TOL of their scale."""
    import torch

    if got.shape != want.shape:
        return f"FAILED shape {tuple(got.shape)} != {tuple(want.shape)}"
    if exact:
        differ = int((got != want).sum())
        return "ok" if differ == 0 else f"FAILED {differ:,} entries differ"
    scale = float(want.abs().max()) or 1.0
    err = float((got.double() - want.double()).abs().max()) / scale
    ok = err <= GRAD_TOL and bool(torch.isfinite(got).all())
    return f"ok (rel {err:.1e})" if ok else f"FAILED rel error {err:.2e} > {GRAD_TOL:g}"


def timed(fn: Callable[[object], object], arg: object, device: str, reps: int) -> float:
    """Milliseconds per call of fn(arg), after one warm-up call (CUDA events on a GPU)."""
    import torch

    fn(arg)
    if device == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn(arg)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(arg)
    return (time.perf_counter() - t0) * 1000 / reps


def kernel_rows(device: str, shapes: dict[str, tuple[int, int]], reps: int, block: int = BLOCK,
                n_rows: int = N_ROWS) -> list[Row]:
    from hubtool.kernels import triton_sparse

    if not triton_sparse.triton_available():
        return [("kernels", "all", "-", "-", "skipped: triton is not installed (pip install 'hubtool[gpu]')")]
    rows = []
    for label, shape in shapes.items():
        w, cases = kernel_cases(device, shape, block, n_rows)
        for name, tri, tor, exact in cases:
            check = compare(tri(w.clone()), tor(w.clone()), exact)
            work = w.clone()  # timed calls add into one buffer: no copy of W inside the timing
            t_tri, t_tor = timed(tri, work, device, reps), timed(tor, work, device, reps)
            rows.append(("kernels", f"{label} {list(shape)} {name}", f"triton {t_tri:.3f} ms, torch {t_tor:.3f} ms",
                         f"{t_tri / t_tor:.2f}", check))
    return rows


# --- train step ------------------------------------------------------------------------------------------


def _model(device: str, config: dict):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**config))
    return model.float().train()


def _setup(method: str, model):
    """(trainable parameters, the context the steps run in), as hub train sets each kind up."""
    import contextlib

    from hubtool.sparse.adapters import Adapter
    from hubtool.sparse.config import AdapterConfig

    if method == "floor":  # train_speed.py's floor: nothing trains, backward still runs to the embeddings
        model.requires_grad_(False)
        model.get_input_embeddings().register_forward_hook(lambda module, args, out: out.requires_grad_(True))
        return [], contextlib.nullcontext()
    # mask_score "random" freezes the mask at apply time: the steady state of a sparse run
    cfg = AdapterConfig(method=method, targets="qkv", keep_ratio=KEEP, block_size=BLOCK, mask_score="random")
    adapter = Adapter.apply(model, cfg)
    return adapter.parameters(), adapter.folded()  # folded: as hubtool's Trainer runs its loop


def train_step_ms(method: str, device: str, config: dict, batch: int, seq: int, steps: int, warmup: int) -> tuple[float, int]:
    """(median ms per step, trainable parameters) of one method, bf16 autocast, fp32 weights."""
    import statistics

    import torch

    model = _model(device, config)
    params, context = _setup(method, model)
    opt = torch.optim.AdamW(params, lr=1e-4) if params else None
    ids = torch.randint(0, config["vocab_size"], (batch, seq), device=device,
                        generator=torch.Generator(device=device).manual_seed(0))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times = []
    with context:
        for step in range(warmup + steps):
            sync()
            t0 = time.perf_counter()
            with torch.autocast(device, dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            if opt is not None:
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
            sync()
            if not torch.isfinite(loss):
                raise RuntimeError(f"{method}: loss {float(loss)} at step {step}")
            if step >= warmup:
                times.append((time.perf_counter() - t0) * 1000)
    trainable = sum(p.numel() for p in params)
    del model, params, opt, context
    if device == "cuda":
        torch.cuda.empty_cache()
    return statistics.median(times), trainable


def train_rows(device: str, config: dict, batch: int, seq: int, steps: int, warmup: int) -> list[Row]:
    ms = {}
    rows = []
    for method in TRAIN_METHODS:
        ms[method], trainable = train_step_ms(method, device, config, batch, seq, steps, warmup)
        rows.append([method, trainable])
    out = []
    for method, trainable in rows:
        t = ms[method]
        out.append(("train", f"{method} ({trainable:,} trainable)",
                    f"{t:.1f} ms/step, {batch * seq / t * 1000:,.0f} tok/s",
                    f"x floor {t / ms['floor']:.2f}, x lora {t / ms['lora']:.2f}", "ok"))
    return out


# --- compose ---------------------------------------------------------------------------------------------


def merge_one(base, entries, device: str):
    """compose's per-weight work (compose_scale.profile_child): overlap-mean of the experts' entries, then
    the fp32 add into the base weight rounded once to bf16. Returns the merged bf16 weight on the CPU."""
    import torch

    from hubtool.merge import methods
    from hubtool.merge.execute import add_merged

    methods._WORK.clear()  # its reused work buffers are made on the default device: one set per device
    with torch.device(device):
        moved = [(p.to(device), v.to(device)) for p, v in entries]
        w = torch.ones(len(entries), dtype=torch.float32)
        inputs = methods.WeightInputs("w", tuple(base.shape), moved, w, [f"e{i}" for i in range(len(entries))])
        merged = methods.merge_weight("overlap-mean", inputs, methods.MergeParams())
        out = add_merged(base.to(device), merged, torch.bfloat16).cpu()
    methods._WORK.clear()
    return out


def compose_rows(device: str, shape: tuple[int, int], n_experts: int, weights: int) -> list[Row]:
    import torch
    from compose_common import random_sparse

    cpu_s = dev_s = 0.0
    checks = []
    for j in range(weights):
        base = (torch.randn(shape, generator=torch.Generator().manual_seed(j)) * 0.02).to(torch.bfloat16)
        entries = [random_sparse(shape, KEEP, 7000 + 100 * i + j) for i in range(n_experts)]
        merge_one(base, entries, device)  # warm-up (Triton compiles, caches fill)
        t0 = time.perf_counter()
        on_cpu = merge_one(base, entries, "cpu")
        t1 = time.perf_counter()
        on_dev = merge_one(base, entries, device)
        if device == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        cpu_s, dev_s = cpu_s + t1 - t0, dev_s + t2 - t1
        differ = int((on_cpu.view(torch.int16) != on_dev.view(torch.int16)).sum())  # bits, -0.0 included
        checks.append(differ)
    check = "ok" if not any(checks) else f"FAILED {sum(checks):,} entries differ from the CPU merge"
    return [("compose", f"overlap-mean of {n_experts} experts into {weights} x {list(shape)} bf16",
             f"cpu {cpu_s / weights * 1000:.0f} ms/weight, {device} {dev_s / weights * 1000:.0f} ms/weight",
             f"{dev_s / cpu_s:.2f}", check)]


# --- tests -----------------------------------------------------------------------------------------------


def test_rows(timeout: int) -> list[Row]:
    """pytest -k cuda over the test files that have CUDA cases."""
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                   if re.search(r"def test_\w*cuda", p.read_text(errors="replace")))
    if not files:
        return [("tests", "pytest -k cuda", "-", "-", "skipped: no test has a CUDA case")]
    try:
        import pytest  # noqa: F401
    except ImportError:
        return [("tests", "pytest -k cuda", "-", "-", "skipped: pytest is not installed")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda", *files]
    t0 = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    ok = done.returncode == 0 and "passed" in summary and "skipped" not in summary
    if not ok:
        print(done.stdout[-3000:], done.stderr[-2000:], sep="\n", file=sys.stderr)
    return [("tests", f"pytest -k cuda {' '.join(files)}", f"{summary} ({time.perf_counter() - t0:.0f} s)", "-",
             "ok" if ok else "FAILED (output above)")]


# --- main ------------------------------------------------------------------------------------------------


def run_section(name: str, fn: Callable[[], list[Row]]) -> list[Row]:
    t0 = time.perf_counter()
    print(f"[{name}] running", file=sys.stderr, flush=True)
    try:
        rows = fn()
    except Exception as e:  # noqa: BLE001  (one broken section must not hide the others' results)
        traceback.print_exc()
        rows = [(name, "-", "-", "-", f"FAILED {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")]
    print(f"[{name}] {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return rows


def print_table(rows: list[Row]) -> None:
    head = ("section", "case", "measured", "ratio", "check")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
    print(line(head))
    print("-" * len(line(head)))
    for r in rows:
        print(line(r))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true",
                    help="every section on CPU at tiny shapes, Triton interpreted (checks this script, no GPU)")
    ap.add_argument("--sections", default="tests,kernels,train,compose", help="comma-separated subset")
    args = ap.parse_args()
    sections = args.sections.split(",")
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported (hubtool.kernels.triton_sparse)
    try:
        import torch
    except ImportError:
        print("no GPU check here: torch is not installed")
        return 0
    if not args.smoke and not torch.cuda.is_available():
        print(f"no CUDA GPU here (torch {torch.__version__}, torch.cuda.is_available() is False): "
              "nothing to check; run this on a machine with an NVIDIA GPU")
        return 0

    started = time.perf_counter()
    if args.smoke:
        device, what = "cpu", f"CPU smoke run (tiny shapes, TRITON_INTERPRET=1), torch {torch.__version__}"
        tiny = {**SMOLLM2, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 256}
        plan = {"kernels": lambda: kernel_rows(device, {"edges": (40, 52)}, reps=1, block=16, n_rows=37),
                "train": lambda: train_rows(device, tiny, batch=2, seq=16, steps=1, warmup=1),
                "compose": lambda: compose_rows(device, (48, 40), n_experts=3, weights=1)}
    else:
        device = "cuda"
        try:
            import triton

            tri = f"triton {triton.__version__}"
        except ImportError:
            tri = "no triton"
        what = f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}, {tri}"
        plan = {"tests": lambda: test_rows(timeout=240),
                "kernels": lambda: kernel_rows(device, KERNEL_SHAPES, reps=20),
                "train": lambda: train_rows(device, SMOLLM2, batch=16, seq=512, steps=10, warmup=3),
                "compose": lambda: compose_rows(device, PHI3_QKV, n_experts=20, weights=2)}
    rows: list[Row] = []
    for name in sections:
        if name in plan:
            rows += run_section(name, plan[name])
    print(f"\n{what}; {time.perf_counter() - started:.0f} s")
    print_table(rows)
    failed = [r for r in rows if r[4].startswith("FAILED")]
    print(f"\n{len(failed)} check(s) failed" if failed else "\nevery check passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
