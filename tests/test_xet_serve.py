"""Xet in `hub serve` (issue 17, docs/hub.md "Xet"): a real server subprocess and the real huggingface_hub +
hf_xet clients with default settings, plus raw HTTP for the CAS's refusals."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("hf_xet")

import httpx2 as httpx
from hubserver import ALICE, TOKENS, Server
from huggingface_hub import hf_hub_download, snapshot_download

from hubtool.hub.xet.hashing import chunk_hash, file_hash, from_hex, hex_of, range_hash
from hubtool.hub.xet.shard import FileEntry, Segment, Shard, write_shard
from hubtool.hub.xet.xorb import write_xorb


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tokens = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    tokens.write_text(TOKENS)
    srv = Server(tmp_path_factory.mktemp("xet") / "root", tokens)
    yield srv
    srv.stop()


def _data(n: int, seed: int) -> bytes:
    """Weights-like bytes: compressible in part (bg4 / lz4 chunks) and random in part."""
    rnd = os.urandom(n // 2)
    ramp = bytes((i * seed) % 251 for i in range(n - len(rnd)))
    return rnd + ramp


def _token(server: Server, repo: str, kind: str = "read") -> dict:
    status, headers, body = server.raw("GET", f"/api/models/{repo}/xet-{kind}-token/main")
    assert status == 200, body
    info = json.loads(body)
    assert headers["x-xet-access-token"] == info["accessToken"] and headers["x-xet-cas-url"] == info["casUrl"]
    assert int(headers["x-xet-token-expiration"]) == info["exp"]
    return info


def _cas(server: Server, method: str, path: str, token: str, body: bytes | None = None, **headers):
    return server.raw(method, "/_xet" + path, token=None, body=body,
                      headers={"authorization": f"Bearer {token}", **headers})  # fmt: skip


def test_round_trips_and_plain_reads(server, tmp_path, monkeypatch):
    api = server.api()
    api.create_repo("org/xet")
    big = _data(3 << 20, 7)
    api.upload_file(path_or_fileobj=big, path_in_repo="w.bin", repo_id="org/xet")
    log = server.log.read_text()
    assert "/_xet/v1/xorbs/" in log and "POST /_xet/v1/shards 200" in log
    folder = tmp_path / "up"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "model.safetensors").write_bytes(_data(2 << 20, 11))
    (folder / "notes.txt").write_text("hello\n")
    api.upload_folder(folder_path=folder, repo_id="org/xet")

    entries = {e.path: e for e in api.list_repo_tree("org/xet", recursive=True) if hasattr(e, "lfs")}
    assert entries["w.bin"].xet_hash and entries["w.bin"].lfs.sha256 == hashlib.sha256(big).hexdigest()
    assert entries["notes.txt"].xet_hash is None and entries["notes.txt"].lfs is None

    # Through Xet (HEAD gives X-Xet-Hash + the read-token link; hf_xet reconstructs from signed URLs).
    got = hf_hub_download("org/xet", "w.bin", endpoint=server.url, token=ALICE, cache_dir=tmp_path / "c1")
    assert Path(got).read_bytes() == big
    snap = Path(snapshot_download("org/xet", endpoint=server.url, token=ALICE, cache_dir=tmp_path / "c2"))
    assert (snap / "w.bin").read_bytes() == big
    assert (snap / "sub" / "model.safetensors").read_bytes() == (
        folder / "sub" / "model.safetensors"
    ).read_bytes()
    assert (snap / "notes.txt").read_text() == "hello\n"
    assert "GET /_xet/v1/reconstructions/" in server.log.read_text()

    # A client with Xet disabled, and plain HTTP with Range: reconstructed on the server.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    got = hf_hub_download("org/xet", "w.bin", endpoint=server.url, token=ALICE, cache_dir=tmp_path / "c3")
    assert Path(got).read_bytes() == big
    url = f"{server.url}/org/xet/resolve/main/w.bin"
    auth = {"authorization": f"Bearer {ALICE}"}
    for first, last in ((0, 10), (100_000, 300_000), (len(big) - 5, len(big) - 1), (70_000, 70_000)):
        r = httpx.get(url, headers={**auth, "range": f"bytes={first}-{last}"})
        assert r.status_code == 206 and r.content == big[first : last + 1]
        assert r.headers["content-range"] == f"bytes {first}-{last}/{len(big)}"
    r = httpx.get(url, headers={**auth, "range": "bytes=-1000"})
    assert r.status_code == 206 and r.content == big[-1000:]
    r = httpx.get(url, headers=auth)
    assert r.status_code == 200 and r.content == big
    r = httpx.head(url, headers=auth)
    assert r.headers["x-xet-hash"] == entries["w.bin"].xet_hash and 'rel="xet-auth"' in r.headers["link"]
    assert httpx.get(url, headers={**auth, "range": f"bytes={len(big)}-"}).status_code == 416


def test_tokens_scope_and_poisoning(server):
    api = server.api()
    api.create_repo("org/a")
    api.create_repo("org/b")
    a_bytes, b_bytes = _data(1 << 20, 3), _data(1 << 20, 5)
    api.upload_file(path_or_fileobj=a_bytes, path_in_repo="a.bin", repo_id="org/a")
    api.upload_file(path_or_fileobj=b_bytes, path_in_repo="b.bin", repo_id="org/b")
    a_hash = next(iter(api.get_paths_info("org/a", ["a.bin"]))).xet_hash
    b_hash = next(iter(api.get_paths_info("org/b", ["b.bin"]))).xet_hash
    a_tok, b_tok = _token(server, "org/a")["accessToken"], _token(server, "org/b")["accessToken"]
    assert _token(server, "org/a")["casUrl"] == f"{server.url}/_xet"

    # A's token cannot reconstruct B's file; B's can, and its fetch URLs need no Authorization.
    status, _, _ = _cas(server, "GET", f"/v1/reconstructions/{b_hash}", a_tok)
    assert status == 404
    status, _, body = _cas(server, "GET", f"/v1/reconstructions/{a_hash}", a_tok, range="bytes=0-99")
    a_plan = json.loads(body)
    status, _, body = _cas(server, "GET", f"/v1/reconstructions/{b_hash}", b_tok)
    assert status == 200
    plan = json.loads(body)
    term = plan["terms"][0]
    fetch = plan["fetch_info"][term["hash"]][0]
    r = httpx.get(
        fetch["url"], headers={"range": f"bytes={fetch['url_range']['start']}-{fetch['url_range']['end']}"}
    )
    assert (
        r.status_code == 206 and len(r.content) == fetch["url_range"]["end"] - fetch["url_range"]["start"] + 1
    )
    # ... and A's signed URL does not open B's xorb, nor does a forged or expired one.
    a_fetch = next(iter(a_plan["fetch_info"].values()))[0]["url"]
    a_xorb = next(iter(a_plan["fetch_info"]))
    assert httpx.get(a_fetch.replace(a_xorb, term["hash"])).status_code == 403
    assert httpx.get(fetch["url"].replace("sig=", "sig=0")).status_code == 403
    assert httpx.get(fetch["url"].split("?")[0]).status_code == 403
    # no token, a Hub token, a tampered token: 401; a read token may not write
    assert server.raw("GET", f"/_xet/v1/reconstructions/{a_hash}")[0] == 401
    assert _cas(server, "GET", f"/v1/reconstructions/{a_hash}", ALICE)[0] == 401
    assert _cas(server, "GET", f"/v1/reconstructions/{a_hash}", a_tok[:-2] + "00")[0] == 401
    xorb_body, info = write_xorb([b"x" * 9000, b"y" * 9000])
    assert _cas(server, "POST", f"/v1/xorbs/default/{info.hex}", a_tok, xorb_body)[0] == 403

    # A xorb whose bytes do not hash to its URL is refused; the right one is stored once.
    a_write = _token(server, "org/a", "write")["accessToken"]
    wrong = hex_of(chunk_hash(b"something else"))
    status, h, body = _cas(server, "POST", f"/v1/xorbs/default/{wrong}", a_write, xorb_body)
    assert status == 400 and h["x-error-code"] == "InvalidXorb"
    assert _cas(server, "POST", f"/v1/xorbs/default/{info.hex}", a_write, b"\x00" * 20)[0] == 400
    status, _, body = _cas(server, "POST", f"/v1/xorbs/default/{info.hex}", a_write, xorb_body)
    assert status == 200 and json.loads(body) == {"was_inserted": True}
    status, _, body = _cas(server, "POST", f"/v1/xorbs/default/{info.hex}", a_write, xorb_body)
    assert status == 200 and json.loads(body) == {"was_inserted": False}

    # Shards: a file over that xorb is recorded; a forged verification entry, a wrong file hash, a xorb the
    # repo never uploaded, or a chunk range out of bounds are refused.
    hashes = [c.hash for c in info.chunks]
    fhash = file_hash((c.hash, c.size) for c in info.chunks)
    sha = hashlib.sha256(b"x" * 9000 + b"y" * 9000).hexdigest()
    sha_raw = from_hex(sha)  # a shard stores the sha256 in the word order of Xet hashes (docs/xet.md)

    def shard(**change) -> bytes:
        seg = Segment(info.hash, change.get("start", 0), change.get("end", 2), change.get("size", 18000))
        entry = FileEntry(change.get("fhash", fhash), [seg], [change.get("ver", range_hash(hashes))], sha_raw)
        return write_shard(Shard([entry], [], footer=False))

    b_write = _token(server, "org/b", "write")["accessToken"]
    for bad, token in (
        (shard(ver=range_hash(hashes[:1])), a_write),
        (shard(fhash=chunk_hash(b"forged")), a_write),
        (shard(end=3), a_write),
        (shard(size=17999), a_write),
        (b"not a shard", a_write),
    ):
        status, h, body = _cas(server, "POST", "/v1/shards", token, bad)
        assert status == 400 and h["x-error-code"] == "InvalidShard", body
    assert _cas(server, "POST", "/v1/shards", a_write, shard())[0] == 200

    # Dedup answers list only xorbs the token's repo may read, with a fresh key each time.
    first = hex_of(hashes[0])
    status, _, one = _cas(server, "GET", f"/v1/chunks/default/{first}", a_write)
    status2, _, two = _cas(server, "GET", f"/v1/chunks/default/{first}", a_write)
    assert status == status2 == 200 and one != two and hashes[0] not in one
    # B's user may read A, so B may use A's xorbs (cross-repo dedup) ...
    assert _cas(server, "GET", f"/v1/chunks/default/{first}", b_write)[0] == 200
    # ... but not those of a repo that is gone: C uploads a xorb and a file, then is deleted.
    api.create_repo("org/c")
    c_write = _token(server, "org/c", "write")["accessToken"]
    c_body, c_info = write_xorb([b"c" * 10000])
    assert _cas(server, "POST", f"/v1/xorbs/default/{c_info.hex}", c_write, c_body)[0] == 200
    c_hash = file_hash([(c_info.chunks[0].hash, 10000)])
    c_shard = write_shard(
        Shard([FileEntry(c_hash, [Segment(c_info.hash, 0, 1, 10000)], [range_hash([c_info.chunks[0].hash])])],
              [], footer=False)
    )  # fmt: skip
    assert _cas(server, "POST", "/v1/shards", c_write, c_shard)[0] == 200
    c_first = hex_of(c_info.chunks[0].hash)
    assert _cas(server, "GET", f"/v1/chunks/default/{c_first}", a_write)[0] == 200
    api.delete_repo("org/c")
    assert _cas(server, "GET", f"/v1/chunks/default/{c_first}", a_write)[0] == 404
    assert _cas(server, "POST", "/v1/shards", a_write, c_shard)[0] == 400
    assert _cas(server, "GET", f"/v1/chunks/default/{c_first}", c_write)[0] == 401  # C's token died with it

    # The claimed sha256 is A's alone: B's commit naming it is refused, A's is accepted.
    def commit(repo: str) -> int:
        lines = [
            {"key": "header", "value": {"summary": "xet file", "description": ""}},
            {
                "key": "lfsFile",
                "value": {"path": "raw.bin", "algo": "sha256", "oid": sha, "size": 18000},
            },
        ]
        body = "\n".join(json.dumps(x) for x in lines).encode()
        status, _, _ = server.raw("POST", f"/api/models/{repo}/commit/main", body=body,
                                  headers={"content-type": "application/x-ndjson"})  # fmt: skip
        return status

    assert commit("org/b") == 400
    assert commit("org/a") == 200
    got = httpx.get(f"{server.url}/org/a/resolve/main/raw.bin", headers={"authorization": f"Bearer {ALICE}"})
    assert got.content == b"x" * 9000 + b"y" * 9000
