"""The layers of pyproject.toml's [tool.importlinter] (docs/architecture.md, "Layers"), checked by the real
`lint-imports`: they hold for the package, and they are not vacuous: a copy of the package with one upward
import hidden inside a function, or a top-level module no layer names, breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"

pytestmark = pytest.mark.skipif(not LINT.is_file(), reason="import-linter is not installed (the dev extra)")


def lint(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([str(LINT), "--no-cache", "--no-logo"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, check=False)  # fmt: skip


def test_the_layers_hold():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout and "Contracts: 3 kept, 0 broken." in result.stdout


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The package and its pyproject.toml in a folder of their own (found first on PYTHONPATH)."""
    shutil.copytree(ROOT / "hubtool", tmp_path / "hubtool", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_an_upward_import_inside_a_function_breaks_the_layers(copy):
    """What the issue's hidden cycles were: the catalog's blob store importing `hub pull` in a function."""
    blobs = copy / "hubtool" / "registry" / "blobs.py"
    blobs.write_text(blobs.read_text() + "\n\ndef _sneaky():\n    from hubtool.hub.pull import pull\n\n"
                     "    return pull\n")  # fmt: skip
    result = lint(copy, pythonpath=copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "hubtool.registry is not allowed to import hubtool.hub" in result.stdout
    assert "hubtool.registry.blobs -> hubtool.hub.pull" in result.stdout


def test_a_network_import_in_the_catalog_breaks_the_offline_contract(copy):
    catalog = copy / "hubtool" / "registry" / "where.py"
    catalog.write_text(catalog.read_text() + "\n\ndef _online():\n    import huggingface_hub\n\n"
                       "    return huggingface_hub\n")  # fmt: skip
    result = lint(copy, pythonpath=copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "know no network" in result.stdout and "hubtool.registry.where -> huggingface_hub" in result.stdout


def test_a_top_level_module_without_a_layer_breaks_the_layers(copy):
    (copy / "hubtool" / "newcomer.py").write_text('"""Not in any layer yet."""\n')
    result = lint(copy, pythonpath=copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "newcomer" in result.stdout + result.stderr
