"""`hub push` never base64-inlines a large file (issue 17): against a real `hub serve` whose commit body cap is
1 MiB, a 3 MiB weights file goes up through Xet with the default client, and through streamed LFS with
HF_HUB_DISABLE_XET=1; an inlined file would have made the commit 413. A folder pushed after its base sends
only the changed bytes (the server's /_xet/stats counts the xorb bytes it received)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("starlette")
pytest.importorskip("hf_xet")

import httpx2 as httpx
from hubserver import ALICE, Server, client_env, write_tokens


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("pushxet")
    srv = Server(base / "root", write_tokens(base / "tokens.txt"), "--max-commit-gib", str(1 / 1024))
    yield srv
    srv.stop()


def _folder(path, weights: bytes):
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "llama"}\n')
    (path / "model.safetensors").write_bytes(weights)
    return path


def _push(server, tmp_path, folder, repo: str, **env: str):
    done = subprocess.run(
        [sys.executable, "-m", "hubtool", "push", str(folder), "--repo", repo, "--json"],
        capture_output=True, text=True, check=False, env=client_env(server, tmp_path, HUB_HOME=str(tmp_path / "home"), **env),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def _stats(server) -> dict:
    status, _, body = server.raw("GET", "/_xet/stats")
    assert status == 200, body
    return json.loads(body)


def _entry(server, repo: str, path: str):
    api = server.api()
    return next(iter(api.get_paths_info(repo, [path])))


def _get(server, repo: str, path: str) -> bytes:
    r = httpx.get(f"{server.url}/{repo}/resolve/main/{path}", headers={"authorization": f"Bearer {ALICE}"})
    assert r.status_code == 200
    return r.content


def test_push_goes_through_xet_and_sends_only_changed_bytes(server, tmp_path):
    weights = os.urandom(3 << 20)
    before = _stats(server)
    _push(server, tmp_path, _folder(tmp_path / "base", weights), "alice/base")
    entry = _entry(server, "alice/base", "model.safetensors")
    assert entry.xet_hash and entry.lfs.sha256 == hashlib.sha256(weights).hexdigest()
    assert _get(server, "alice/base", "model.safetensors") == weights
    after_base = _stats(server)
    sent = after_base["received_data_bytes"] - before["received_data_bytes"]
    assert len(weights) <= sent < len(weights) + (1 << 20)
    assert "POST /api/models/alice/base/commit/main 200" in server.log.read_text()

    # "Merged": the first 256 KiB changed, the rest as in the base; pushed to another repo of the same user.
    changed = os.urandom(256 << 10) + weights[256 << 10 :]
    _push(server, tmp_path, _folder(tmp_path / "merged", changed), "alice/merged")
    assert _get(server, "alice/merged", "model.safetensors") == changed
    after = _stats(server)
    sent = after["received_data_bytes"] - after_base["received_data_bytes"]
    stored = after["data_bytes"] - after_base["data_bytes"]
    # Only the changed bytes (and the chunk or two around the edit) went up and were stored.
    assert 256 << 10 <= sent <= (256 << 10) + (512 << 10), sent
    assert stored <= sent


def test_push_with_xet_disabled_streams_lfs(server, tmp_path):
    weights = os.urandom(3 << 20)
    before = _stats(server)
    _push(server, tmp_path, _folder(tmp_path / "m", weights), "alice/plain", HF_HUB_DISABLE_XET="1")
    entry = _entry(server, "alice/plain", "model.safetensors")
    assert entry.lfs.sha256 == hashlib.sha256(weights).hexdigest() and entry.xet_hash is None
    assert (server.root / "blobs" / entry.lfs.sha256[:2] / entry.lfs.sha256).stat().st_size == len(weights)
    assert _stats(server)["received_xorbs"] == before["received_xorbs"]
    assert "PUT /_lfs/upload/" in server.log.read_text()
    assert _get(server, "alice/plain", "model.safetensors") == weights
