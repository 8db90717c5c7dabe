"""Shared helpers for benchmarks: time whole commands in fresh processes (cold start)."""

from __future__ import annotations

import statistics
import subprocess
import time


def time_command(argv: list[str], *, repeat: int = 7, env: dict | None = None) -> float:
    """Median wall time of `argv` in a fresh process, after one warm-up run (page cache warm, no .pyc rebuild)."""
    subprocess.run(argv, check=True, capture_output=True, env=env)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
