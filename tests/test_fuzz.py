"""The file fuzzer at its small size: a few hundred bad packed files, safetensors headers, PEFT folders, recipes,
hubtool.json records, task files, option values, refs and --where expressions (tests/fuzzing.py), each run
through the real `hub` entry point. Every one ends in exit 0 or exit 1 with one `Error:` line: never exit 2
(an internal error), a traceback or a hang. benchmarks/fuzz.py runs 10,000."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import fuzzing
import pytest

CASES = 200  # ~0.15 s each (CPU) on 2 busy cores


@pytest.mark.slow
def test_corpus_keeps_the_error_contract(world: fuzzing.World) -> None:
    outcomes: Counter = Counter()
    broken = []
    rss_warm = None
    for i, case in enumerate(fuzzing.cases(seed=0, n=CASES)):
        outcome = fuzzing.run_case(world, case, timeout=30)
        if not outcome.ok:
            broken.append(f"{case.cls} {case.what}: {outcome.error}")
        outcomes[case.cls, outcome.code] += 1
        if i == 40:
            gc.collect()
            rss_warm = fuzzing.rss_bytes()
    assert broken == [], "\n".join(broken[:10])
    classes = {cls for cls, _ in outcomes}
    assert classes >= set(fuzzing.GENERATORS) - {"packed"} | {"packed", "header"}
    # Near misses, not noise: most classes see both verdicts (options, refs and task files are bad by design).
    for cls in ("peft", "recipe", "record", "where", "markup"):
        assert outcomes[cls, 0] and outcomes[cls, 1], (cls, outcomes)
    gc.collect()
    growth = fuzzing.rss_bytes() - rss_warm
    assert growth < 300 * 2**20, f"RSS grew {growth / 2**20:.0f} MiB over {CASES - 40} cases"


def test_cases_through_the_real_script(world: fuzzing.World) -> None:
    """A few cases in a subprocess: the installed `hub` (or python -m hubtool), as a user runs it."""
    script = Path(sys.executable).with_name("hub")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "hubtool"]
    classes = ["packed", "peft", "recipe", "task", "options", "refs"]
    env = {k: v for k, v in os.environ.items() if k not in ("HUB_CATALOG", "HUB_DEBUG")} | {"COLUMNS": "200"}
    for case in fuzzing.cases(seed=11, n=len(classes), classes=classes):
        argv = case.make(world, case)
        result = subprocess.run([*cmd, *argv], env=env | case.env, capture_output=True, text=True, timeout=120, check=False)
        error = fuzzing.contract_error(result.returncode, result.stderr, result.stdout)
        assert error is None, f"{case.cls} {case.what}: {error}"
