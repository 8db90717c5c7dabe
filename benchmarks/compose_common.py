"""Shared pieces of the compose benchmarks (compose_scale, compose_vs_peft, compose_vs_mergekit).

- run_measured: a command in a fresh child process -> (wall s, peak RSS bytes of that child), read with
  os.wait4 (the child's own rusage, so nothing else on the machine is counted).
- random sparse experts with the base's fingerprints, packed and registered in a throw-away catalog.
- the SmolLM2-135M setup shared by compose_vs_peft and compose_vs_mergekit (the same 8 experts),
  cached under the workdir: built once, reused while its parameters match.
- comparing two model folders tensor by tensor, against an fp64 reference.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HUB = str(BIN / "hub")
QKV = ("q_proj", "k_proj", "v_proj")
TIME = "/usr/bin/time"  # GNU time, for the peak RSS of a command


def command_line() -> str:
    """This script's exact command line, as run from the repo root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    python = os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else sys.executable
    return " ".join(shlex.quote(a) for a in [python, str(script), *sys.argv[1:]])


def run_measured(argv: list[str], *, env: dict | None = None, log: Path | None = None) -> tuple[float, int]:
    """Run `argv` to completion; (wall seconds, peak RSS bytes of that command). Output goes to `log`.
    Raises CalledProcessError (with the log's tail) when it fails.

    Peak RSS is the command's own ru_maxrss as GNU time reports it (/usr/bin/time -f %M): time is a small
    process that forks the command, so the number is the command's alone. (os.wait4 on a child spawned
    straight from this process would not do: Linux carries the parent's high-water mark over the exec.)"""
    import tempfile

    fd, rss_file = tempfile.mkstemp(suffix=".rss")
    os.close(fd)
    try:
        with open(log if log is not None else os.devnull, "wb") as sink:
            t0 = time.perf_counter()
            proc = subprocess.run([TIME, "-f", "%M", "-o", rss_file, *argv], check=False, stdout=sink,
                                  stderr=subprocess.STDOUT, env=env)
            wall = time.perf_counter() - t0
        if proc.returncode != 0:
            tail = log.read_text(errors="replace")[-3000:] if log is not None else ""
            raise subprocess.CalledProcessError(proc.returncode, argv, output=tail)
        kib = int(Path(rss_file).read_text().split()[-1])
    finally:
        os.unlink(rss_file)
    return wall, kib * 1024


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def fsync_tree(path: Path) -> None:
    for p in Path(path).rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def read_through(path: Path) -> None:
    """Read every file under `path` once (page cache as warm for every contender)."""
    for p in sorted(Path(path).rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                while f.read(1 << 24):
                    pass


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def check_disk(path: Path, need: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path).free
    print(f"disk: {gib(free)} free at {path}, this run needs up to {gib(need)} more")
    if free < need * 1.1:
        sys.exit(f"not enough free disk at {path}: {gib(free)} free, need ~{gib(need)}")


# --- random sparse experts ---------------------------------------------------------------------------


def random_sparse(shape: tuple[int, int], keep: float, seed: int, scale: float = 0.002):
    """(sorted flat positions int64, bf16 values): each entry kept with probability `keep`."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    n = shape[0] * shape[1]
    idx = (torch.rand(n, generator=gen) < keep).nonzero().squeeze(1)
    vals = (torch.randn(idx.numel(), generator=gen) * scale).to(torch.bfloat16)
    return idx, vals


def build_expert(name: str, base_model: str, weights: dict[str, tuple[tuple[int, int], str]], keep: float,
                 seed: int, path: Path) -> int:
    """Pack one random sparse expert over `weights` ({name: (shape, fingerprint)}); returns its bytes."""
    from hubtool.delta import Expert, SparseDelta
    from hubtool.format import pack

    deltas = {}
    for j, (wname, (shape, fp)) in enumerate(sorted(weights.items())):
        idx, vals = random_sparse(shape, keep, seed * 100_003 + j)
        deltas[wname] = SparseDelta(tuple(shape), idx, vals, fp)
    expert = Expert(name=name, task=name, kind="sparse", base_model=base_model, deltas=deltas,
                    keep_ratio=keep, value_dtype="bfloat16", targets="qkv")
    return pack(expert, path)


def base_tensors(folder: Path):
    """{name: tensor} of a safetensors model folder (all shards)."""
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(f))
    return out


# --- the SmolLM2-135M setup shared by compose_vs_peft and compose_vs_mergekit -------------------------


def smollm2_setup(workdir: Path, *, n_experts: int, keep: float, layers: int | None = None) -> dict:
    """8 (n_experts) random sparse experts on SmolLM2-135M's q/k/v (all layers, or the first `layers`),
    registered in a catalog under workdir, each also exported as a PEFT SHiRA folder. Cached."""
    params = {"n_experts": n_experts, "keep": keep, "layers": layers, "version": 1}
    home = workdir / (f"smollm2-{n_experts}x{keep}" + ("" if layers is None else f"-l{layers}"))
    marker = home / "setup.json"
    os.environ["HUB_HOME"] = str(home / "hub")
    os.environ.pop("HUB_CATALOG", None)
    from hubtool.models import resolve_base

    base = Path(resolve_base("smollm2-135m")[0])  # converts once per HUB_HOME (~20 s)
    if marker.is_file():
        setup = json.loads(marker.read_text())
        if setup.get("params") == params and all(Path(p).is_dir() for p in setup["peft"]) \
                and all(Path(p).is_file() for p in setup["blobs"]):
            print(f"reusing {n_experts} experts in {home}")
            return setup
    print(f"building {n_experts} experts in {home}")
    for sub in ("peft", "packed"):
        shutil.rmtree(home / sub, ignore_errors=True)
    if (home / "hub" / "registry.db").exists():
        (home / "hub" / "registry.db").unlink()
        shutil.rmtree(home / "hub" / "blobs", ignore_errors=True)
    from hubtool.format import fingerprint, unpack
    from hubtool.interop.peft import export_peft
    from hubtool.registry import Catalog

    state = base_tensors(base)
    weights = {n: (tuple(t.shape), fingerprint(t)) for n, t in state.items()
               if n.endswith(".weight") and any(f".{q}." in n for q in QKV)
               and (layers is None or int(n.split(".")[2]) < layers)}
    cat = Catalog()
    refs, blobs, pefts = [], [], []
    (home / "packed").mkdir(parents=True, exist_ok=True)
    for i in range(n_experts):
        path = home / "packed" / f"e{i}.safetensors"
        build_expert(f"e{i}", "smollm2-135m", weights, keep, 1000 + i, path)
        rec = cat.register(path)
        path.unlink()
        refs.append(rec.ref)
        blobs.append(str(cat.blob_path(rec)))
        pefts.append(str(export_peft(unpack(cat.blob_path(rec)), home / "peft" / f"e{i}",
                                     base_model_name_or_path=str(base))))
    cat.close()
    setup = {"params": params, "home": str(home), "hub_home": str(home / "hub"), "base": str(base),
             "refs": refs, "blobs": blobs, "peft": pefts, "weights": sorted(weights)}
    marker.write_text(json.dumps(setup, indent=2) + "\n")
    return setup


def expected_sum(setup: dict, weights: list[float] | None = None) -> dict:
    """{weight: fp64 base + Σ w_t D_t} over the adapted weights (the exact task-arithmetic result)."""

    from hubtool.format import ExpertReader

    base = base_tensors(Path(setup["base"]))
    ws = weights or [1.0] * len(setup["blobs"])
    out = {n: base[n].double() for n in setup["weights"]}
    for w, blob in zip(ws, setup["blobs"]):
        reader = ExpertReader(blob)
        for n in setup["weights"]:
            pos, val = reader.read(n).entries()
            out[n].view(-1).index_add_(0, pos, val.double() * w)
    return out


def compare_folders(got: Path, ref: Path, exact: dict | None = None) -> dict:
    """Max |a - b| over the tensors both folders hold; with `exact` ({name: fp64}) also, per side, the
    largest |x - exact| on those weights and how many entries differ from the correctly rounded bf16 value."""

    a, b = base_tensors(got), base_tensors(ref)
    common = sorted(set(a) & set(b))
    max_abs, worst, differ = 0.0, "", 0
    for n in common:
        diff = (a[n].double() - b[n].double()).abs()
        differ += int((diff > 0).sum())
        d = float(diff.max())
        if d > max_abs:
            max_abs, worst = d, n
    res = {"tensors": len(common), "only_first": sorted(set(a) - set(b)), "only_second": sorted(set(b) - set(a)),
           "max_abs": max_abs, "worst": worst, "entries_differ": differ}
    if exact:
        res["entries"] = sum(e.numel() for e in exact.values())
        for side, t in (("first", a), ("second", b)):
            res[f"err_{side}"] = max(float((t[n].double() - e).abs().max()) for n, e in exact.items())
            res[f"misrounded_{side}"] = sum(int((t[n] != e.to(t[n].dtype)).sum()) for n, e in exact.items())
    return res
