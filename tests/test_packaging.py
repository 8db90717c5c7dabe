"""Packaging truths: the Python version pyproject.toml declares is one the package runs on, the README
says the same, and no benchmark fixture ships inside the package."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hubtool"

# Standard-library names that first appeared in Python 3.11: importing one (with no fallback) needs 3.11.
NEW_IN_311 = {("typing", "Self"), ("typing", "LiteralString"), ("typing", "Never"), ("typing", "assert_never"),
              ("enum", "StrEnum"), ("tomllib", None)}


def _declared_minimum() -> tuple[int, int]:
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    found = re.fullmatch(r">=\s*3\.(\d+)", spec.strip())
    assert found, f"requires-python {spec!r}: expected '>=3.N'"
    return 3, int(found.group(1))


def _unguarded_311_imports() -> list[str]:
    """file:line of imports of NEW_IN_311 names outside a try (a try/except ImportError is a fallback)."""
    hits = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        guarded = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) for b in t.body for n in ast.walk(b)}
        for node in ast.walk(tree):
            if id(node) in guarded:
                continue
            if isinstance(node, ast.ImportFrom) and node.module:
                names = {(node.module, a.name) for a in node.names}
            elif isinstance(node, ast.Import):
                names = {(a.name, None) for a in node.names}
            else:
                continue
            if names & NEW_IN_311:
                hits.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return hits


def test_requires_python_covers_what_the_package_imports():
    """`hub list` imports typing.Self (3.11+): pyproject may not promise 3.10."""
    hits = _unguarded_311_imports()
    assert hits, "the scan found no 3.11-only import; if 3.10 works again, lower requires-python and this test"
    assert _declared_minimum() >= (3, 11), f"requires-python allows 3.10, but {', '.join(hits)} need 3.11"


def test_readme_states_the_declared_python():
    major, minor = _declared_minimum()
    claims = re.findall(r"Python ≥ (\d+)\.(\d+)", (ROOT / "README.md").read_text())
    assert claims and {(int(a), int(b)) for a, b in claims} == {(major, minor)}, claims


def test_no_benchmark_fixture_in_the_package():
    """registry/bulk.py (a catalog filler that must never touch a real catalog) lives with the benchmarks."""
    assert not (PACKAGE / "registry" / "bulk.py").exists()
    offenders = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if "registry.bulk" in p.read_text()]
    assert not offenders, offenders


def test_the_readme_library_example_compiles_and_names_the_public_api() -> None:
    """The README's "As a library" block: valid Python, and every name it imports from hubtool is exported."""
    import ast

    import hubtool

    text = (ROOT / "README.md").read_text()
    block = text.split("## As a library", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    tree = ast.parse(block)
    names = [a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module == "hubtool"
             for a in node.names]  # fmt: skip
    assert "train" in names and "TrainConfig" in names
    for name in names:
        assert getattr(hubtool, name) is not None, name
