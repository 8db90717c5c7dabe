"""Optional parts (hubtool/extras.py): pyproject's extras and the module table agree, and a missing extra
is one line naming it, exit 1, before any work (the real CLI in a subprocess, the package made unimportable)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from hubtool.extras import EXTRAS

ROOT = Path(__file__).resolve().parents[1]
# distribution name -> the module it installs, for the packages the extras list
MODULE = {"starlette": "starlette", "uvicorn": "uvicorn", "psycopg": "psycopg", "matplotlib": "matplotlib",
          "gguf": "gguf", "lm-eval": "lm_eval", "jinja2": "jinja2", "markdown-it-py": "markdown_it",
          "blake3": "blake3", "lz4": "lz4"}  # fmt: skip


def test_extras_match_pyproject() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        names = [req.split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip() for req in declared[extra]]
        assert tuple(MODULE[n] for n in names) == modules, extra
    assert declared["all"] == ["hubtool[" + ",".join(e for e in EXTRAS if e != "oracle") + "]"]


def _hub_without(module: str, *args: str, home: Path) -> subprocess.CompletedProcess:
    """`hub ARGS` in a process where `module` cannot be imported (as if its extra were not installed)."""
    code = (f"import sys; sys.modules[{module!r}] = None; sys.argv = ['hub', *{list(args)!r}]; "
            "from hubtool.cli import main; main()")
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HUB_HOME": str(home), "COLUMNS": "300"})  # fmt: skip


@pytest.mark.parametrize("module, args, extra", [
    ("uvicorn", ["serve", "--port", "9"], "server"),
    ("psycopg", ["list", "--catalog", "postgresql+psycopg://nobody@127.0.0.1:1/none"], "postgres"),
    ("matplotlib", ["experiment", "--preset", "smoke", "--out", "{tmp}/results"], "plots"),
])  # fmt: skip
def test_a_missing_extra_is_one_line_naming_it(module: str, args: list[str], extra: str, tmp_path: Path) -> None:
    result = _hub_without(module, *[a.format(tmp=tmp_path) for a in args], home=tmp_path / "hub")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"hubtool[{extra}]" in lines[0], lines
    assert not (tmp_path / "results").exists()  # nothing started
