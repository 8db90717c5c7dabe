"""tests/warmhub.py, the warm `hub` the CLI tests run: the same exit status, stdout and stderr as a cold
`python -m hubtool` (and as the `hub` script), a SIGKILL seen as -9, a hang as TimeoutExpired, and the
interpreter's own exit (SQLite's WAL checkpointed) after the command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import warmhub
from conftest import write_sparse_expert

HUB = [sys.executable, "-m", "hubtool"]


def both(*args: object, env: dict[str, str], input: str | None = None) -> subprocess.CompletedProcess:
    """`hub ARGS` cold and warm: the two must agree on everything but the time taken."""
    argv = [*HUB, *map(str, args)]
    cold = subprocess.run(argv, env=env, input=input, capture_output=True, text=True, timeout=300, check=False)
    warm_runs = warmhub.stats["warm"]
    warm = warmhub.run(argv, env=env, input=input, text=True, timeout=300)
    assert warmhub.stats["warm"] == warm_runs + 1, "ran cold: the comparison compared nothing"
    assert (warm.returncode, warm.stdout, warm.stderr) == (cold.returncode, cold.stdout, cold.stderr)
    return warm


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("HUB_", "HF_"))} | {
        "HUB_HOME": str(tmp_path / "home"), "COLUMNS": "200"}


def test_warm_and_cold_agree_on_output_errors_and_exit_codes(env, tmp_path):
    if os.environ.get("HUB_TEST_COLD") == "1":
        pytest.skip("HUB_TEST_COLD=1: every command runs cold")
    expert = write_sparse_expert(tmp_path / "qa.safetensors")
    imported = warmhub.run([*HUB, "import", expert], env=env, text=True)
    assert imported.returncode == 0, imported.stderr
    assert "qa@1" in both("list", env=env).stdout
    assert '"qa@1"' in both("list", "--json", env=env).stdout
    assert both("show", "nope", env=env).returncode == 1  # a HubError: exit 1, one line
    assert both("import", tmp_path / "missing.safetensors", env=env).stderr.startswith("Error: ")
    assert both("list", "--bogus", env=env).returncode == 1  # a usage error
    both("rm", "qa@1", env=env, input="n\n")  # answered no at the prompt: both keep the row
    assert "qa@1" in both("list", env=env).stdout
    script = warmhub.run([str(warmhub._HUB_SCRIPT), "--help"], env=env, text=True)
    cold = subprocess.run([str(warmhub._HUB_SCRIPT), "--help"], env=env, capture_output=True, text=True, check=False)
    assert (script.returncode, script.stdout, script.stderr) == (cold.returncode, cold.stdout, cold.stderr)


def test_a_killed_command_is_minus_9_and_a_finished_one_leaves_no_wal(env, tmp_path):
    expert = write_sparse_expert(tmp_path / "qa.safetensors")
    killed = warmhub.run([*HUB, "import", expert], env={**env, "HUB_CRASH_AT": "register-placed"}, text=True)
    assert killed.returncode == -9, killed.stderr
    done = warmhub.run([*HUB, "import", expert], env=env, text=True)
    assert done.returncode == 0, done.stderr
    home = Path(env["HUB_HOME"])
    wal = home / "registry.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0, "the connection was not closed at exit"


def test_a_hang_is_a_timeout_and_import_time_settings_run_cold(env):
    with pytest.raises(subprocess.TimeoutExpired):  # no `hub` starts in a millisecond: killed, then raised
        warmhub.run([*HUB, "list"], env=env, timeout=0.001)
    runs = warmhub.stats["warm"]
    result = warmhub.run([*HUB, "--help"], env={**env, "PYTHONPROFILEIMPORTTIME": "1"}, text=True)
    assert "import time:" in result.stderr and warmhub.stats["warm"] == runs  # cold: the profile sees torch load
