"""The PostgreSQL half of the catalog battery never silently disappears in CI: without server binaries a
postgres test is skipped with the reason locally, and fails under CI=true (what .ci/run sets). Runs pytest
itself in a subprocess on one postgres test, with the binaries hidden (HUB_PG_BINDIR: an empty folder)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ONE_PG_TEST = "test_migrations.py::test_postgres_schema_file_is_in_sync_with_the_migrations"


def run_without_binaries(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    empty = tmp_path / "no-binaries"
    empty.mkdir(exist_ok=True)
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(TESTS / ONE_PG_TEST)],
        env={**base, "HUB_PG_BINDIR": str(empty), **env}, cwd=tmp_path, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip


def test_missing_postgres_skips_locally_and_fails_under_ci(tmp_path):
    local = run_without_binaries(tmp_path)
    assert local.returncode == 0, local.stdout[-2000:]
    assert (
        "1 skipped" in local.stdout and "no PostgreSQL here" in local.stdout and "no-binaries" in local.stdout
    )
    ci = run_without_binaries(tmp_path, CI="true")
    assert ci.returncode == 1, ci.stdout[-2000:]
    assert "1 error" in ci.stdout and "CI=true and PostgreSQL is required" in ci.stdout
