"""`hub serve` under load at a small size (benchmarks/hub_load.py --churn is the full size: 32 downloads).

Downloads and pushes of one file in one repo while another client deletes and recreates that repo, all
with the real huggingface_hub client: every downloaded byte belongs to a version pushed in some complete
commit, every failure is a clean HTTP error, nothing hangs, the server stays up and logs no traceback,
and its store at rest holds no half commit (tests/load_churn.py).
"""

from __future__ import annotations

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from hubserver import Server, write_tokens
from load_churn import churn, check_store


def test_downloads_and_pushes_while_the_repo_is_deleted_and_recreated(tmp_path):
    srv = Server(tmp_path / "root", write_tokens(tmp_path / "tokens.txt"))
    try:
        result = churn(srv, downloads=8, pushers=4, seconds=12, file_kib=256, workdir=tmp_path / "clients")
        assert srv.proc.poll() is None, "the server died"
        status, _, _ = srv.raw("GET", "/api/whoami-v2")
        assert status == 200  # still answering
    finally:
        srv.stop()
    summary = f"calls {dict(result.calls)}, errors {dict(result.errors)}, cycles {result.cycles}"
    assert not result.unclean, f"{result.unclean[:5]} ({summary})"
    assert result.wrong_bytes == 0, summary
    # The load really overlapped: downloads and pushes succeeded, and the repo went away and came back.
    assert result.calls["download"] >= 20 and result.calls["push"] >= 4 and result.cycles >= 3, summary
    log = srv.log.read_text(errors="replace")
    assert "Traceback" not in log and "internal error" not in log
    assert not check_store(srv.root)
