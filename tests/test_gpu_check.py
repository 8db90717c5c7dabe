"""benchmarks/gpu_check.py (issue 15 §7): without a GPU it says so and exits 0; its --smoke run takes every
section through the CPU (Triton interpreted); and, where a CUDA GPU is, the compiled Triton kernels agree
with the torch path at the edge shapes of tests/test_kernels.py (gpu_check.py runs this file's CUDA case)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
# (shape, B): sizes that are not multiples of the block (128 kept entries, 32 token rows per loop step)
# or of the tile, a tile larger than W, and B >= 16 (tl.dot) and below it (the broadcast product)
EDGE_CASES = [((17, 40), 6), ((40, 48), 16), ((5, 3), 8), ((300, 200), 16), ((33, 65), 32)]


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=600, check=False)


def test_without_a_gpu_it_says_so_and_exits_0():
    done = _run(CUDA_VISIBLE_DEVICES="")  # torch then sees no GPU, here or on a GPU machine
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("no CUDA GPU here") and "Traceback" not in done.stderr, done.stdout


def test_smoke_run_takes_every_section_through_the_cpu():
    done = _run("--smoke", CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.splitlines()]
    by_section = {s: [r for r in rows if r and r[0] == s] for s in ("kernels", "train", "compose")}
    assert len(by_section["kernels"]) == 4 and len(by_section["compose"]) == 1
    assert [r[1] for r in by_section["train"]] == ["floor", "sparse", "block-sparse", "lora", "full"]
    assert all("ok" in r for rs in by_section.values() for r in rs), done.stdout
    assert done.stdout.rstrip().endswith("every check passed")


def test_compare_tells_a_wrong_result_from_a_right_one():
    import torch

    sys.path.insert(0, str(SCRIPT.parent))
    from gpu_check import compare

    want = torch.randn(50, generator=torch.Generator().manual_seed(0))
    assert compare(want.clone(), want, exact=True) == "ok"
    off = want.clone()
    off[7] = torch.nextafter(off[7], torch.tensor(float("inf")))  # one ulp
    assert compare(off, want, exact=True) == "FAILED 1 entries differ"
    assert compare(off, want, exact=False).startswith("ok")  # a gradient: within its tolerance
    off[3] += 1.0
    assert compare(off, want, exact=False).startswith("FAILED rel error")
    assert compare(want[:49], want, exact=False).startswith("FAILED shape")


def test_triton_kernels_match_the_torch_path_on_cuda():
    """The compiled kernels (tests/test_kernels.py checks them interpreted, on CPU) on a real GPU. A fresh
    process: in this one, test_kernels.py may have switched triton to its interpreter."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("triton")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); from gpu_check import check_kernels; "
        "print(json.dumps([check_kernels('cuda', tuple(s), b, n_rows=37) for s, b in json.loads(sys.argv[2])]))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code, str(SCRIPT.parent), json.dumps(EDGE_CASES)], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    failed = {f"{case}: {k}": v for case, res in zip(EDGE_CASES, results) for k, v in res.items()
              if not v.startswith("ok")}
    assert len(results) == len(EDGE_CASES) and all(len(r) == 4 for r in results)
    assert not failed, failed
