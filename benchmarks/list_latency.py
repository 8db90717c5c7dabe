"""`hub list --task X` over a 100,000-expert catalog, cold, side by side with huggingface_hub's `hf --help`.

Both run in fresh processes (so each pays its imports); the peer sets the bar (issue 2: no slower).
Usage: .venv/bin/python benchmarks/list_latency.py [--n 100000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _timing import time_command

from hubtool.registry.bulk import fill_synthetic


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()

    bindir = Path(sys.executable).parent
    hub, hf = str(bindir / "hub"), shutil.which("hf", path=str(bindir)) or "hf"
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, HUB_HOME=home)
        url = f"sqlite:///{home}/registry.db"
        t0 = time.perf_counter()
        fill_synthetic(url, args.n)
        fill_s = time.perf_counter() - t0
        ours = time_command([hub, "list", "--task", "task7", "--catalog", url], repeat=args.repeat, env=env)
        ours_json = time_command([hub, "list", "--task", "task7", "--json", "--catalog", url], repeat=args.repeat, env=env)
        ours_where = time_command(
            [hub, "list", "--where", "rougeL>=40", "--sort", "-rougeL", "--catalog", url], repeat=args.repeat, env=env
        )
        help_ = time_command([hub, "--help"], repeat=args.repeat, env=env)
        peer = time_command([hf, "--help"], repeat=args.repeat, env=env)
    print(f"catalog: {args.n:,} experts (filled in {fill_s:.1f} s); median of {args.repeat} cold runs each\n")
    print(f"{'command':<48} {'seconds':>8} {'vs hf --help':>13}")
    for label, t in [
        ("hf --help (huggingface_hub, the peer)", peer),
        ("hub --help", help_),
        ("hub list --task task7", ours),
        ("hub list --task task7 --json", ours_json),
        ("hub list --where 'rougeL>=40' --sort -rougeL", ours_where),
    ]:
        print(f"{label:<48} {t:>8.3f} {t / peer:>12.2f}x")


if __name__ == "__main__":
    main()
