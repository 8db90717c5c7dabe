"""Index bits per kept entry: ours against raw int32, PEFT SHiRA and the information bound.

For each weight shape and keep ratio, draws a uniformly random mask of k = round(ratio * n) positions
and encodes it with hubtool's automatic encoding choice (the encoding's whole payload is counted,
parameters and padding included). The bound is log2(C(n, k)) / k: no code can do better on average
over all masks. A second table packs the mask with bf16 values into a real expert file and reports
file bytes per kept entry (safetensors header and metadata included) against SHiRA's 12 bytes
(int32 [2, nnz] coordinates + fp32 values).

    .venv/bin/python benchmarks/bits_per_entry.py [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from hubtool.format import Expert, SparseDelta, pack_bytes
from hubtool.format.encodings import decode, encode_best

RATIOS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
SHAPES = {  # [out, in]
    "smollm2 q_proj 576x576": (576, 576),
    "smollm2 k/v_proj 192x576": (192, 576),
    "phi-3 qkv_proj 9216x3072": (9216, 3072),
}


def bound_bits(n: int, k: int) -> float:
    """log2(C(n, k)) / k, via lgamma so it works for n in the millions."""
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2) / k


def random_mask(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)

    print(
        f"{'shape':26} {'keep':>6} {'k':>9} {'encoding':>10} {'ours':>6} {'int32':>5} {'SHiRA':>5} "
        f"{'bound':>6} {'ours/bound':>10} {'decode ms':>9}"
    )
    worst = 0.0
    file_rows = []
    for label, (rows, cols) in SHAPES.items():
        n = rows * cols
        for ratio in RATIOS:
            k = round(ratio * n)
            positions = random_mask(rng, n, k)
            name, payload = encode_best(positions, n)
            start = time.perf_counter()
            assert np.array_equal(decode(payload, n, k, name), positions)
            ms = 1000 * (time.perf_counter() - start)
            ours, bound = 8 * len(payload) / k, bound_bits(n, k)
            worst = max(worst, ours / bound)
            print(
                f"{label:26} {ratio:6.3f} {k:9d} {name:>10} {ours:6.2f} {32:5d} {64:5d} "
                f"{bound:6.2f} {ours / bound:10.3f} {ms:9.1f}"
            )
            if label.startswith("smollm2 q_proj") or ratio in (0.01, 0.05):
                values = torch.randn(k).to(torch.bfloat16)
                delta = SparseDelta((rows, cols), torch.from_numpy(positions), values, "v1:0123456789abcdef")
                expert = Expert(
                    "bench", "bench", "sparse", "bench-base", {"w.weight": delta}, keep_ratio=ratio
                )
                file_rows.append((label, ratio, k, len(pack_bytes(expert)) / k))
        print()
    print(f"worst ours/bound: {worst:.3f} (target <= 1.10)\n")

    print(
        f"{'shape':26} {'keep':>6} {'k':>9} {'file B/entry (bf16)':>20} {'SHiRA B/entry':>14} {'x smaller':>9}"
    )
    for label, ratio, k, per_entry in file_rows:
        print(f"{label:26} {ratio:6.3f} {k:9d} {per_entry:20.3f} {12:14d} {12 / per_entry:9.2f}")


if __name__ == "__main__":
    main()
