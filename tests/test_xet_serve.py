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
    cas = f"/_xet/s-{(server.root / 'xet' / 'store-id').read_text()}"  # the casUrl holds the store's id
    assert f"{cas}/v1/xorbs/" in log and f"POST {cas}/v1/shards 200" in log
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
    assert f"GET {cas}/v1/reconstructions/" in server.log.read_text()

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
    assert _token(server, "org/a")["casUrl"] == f"{server.url}/_xet/s-{(server.root / 'xet' / 'store-id').read_text()}"

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


def _hub(*args: str, cwd: Path | None = None):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "hubtool", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, check=False)


def _xorb_path(root: Path, xorb: str) -> Path:
    return root / "xet" / "xorbs" / xorb[:2] / xorb


def _put_file(server: Server, repo: str, chunks: list[bytes]) -> tuple[str, str]:
    """One xorb of `chunks` and a shard naming one file over it, through the raw CAS: (xorb, file hash)."""
    write = _token(server, repo, "write")["accessToken"]
    body, info = write_xorb(chunks)
    assert _cas(server, "POST", f"/v1/xorbs/default/{info.hex}", write, body)[0] == 200
    leaves = [(c.hash, c.size) for c in info.chunks]
    fhash = file_hash(leaves)
    seg = Segment(info.hash, 0, len(chunks), sum(len(c) for c in chunks))
    shard = write_shard(Shard([FileEntry(fhash, [seg], [range_hash([h for h, _ in leaves])])], [], footer=False))
    assert _cas(server, "POST", "/v1/shards", write, shard)[0] == 200
    return info.hex, hex_of(fhash)


def test_a_full_xorb_of_incompressible_data_is_stored(server):
    """hf_xet packs up to 64 MiB of chunk data into a xorb; stored uncompressed (random bytes), its body is
    64 MiB + 8 bytes per chunk. The server once bounded the body at 64 MiB and answered 400, which failed
    the push of a 1,000 MiB random file through the default client."""
    import random

    from hubtool.hub.xet.xorb import MAX_CHUNK, MAX_XORB_BYTES, SCHEME_NONE, encode_chunk, read_xorb_bytes

    server.api().create_repo("org/full-xorb")
    write = _token(server, "org/full-xorb", "write")["accessToken"]
    rnd = random.Random(5)
    body = b"".join(encode_chunk(rnd.randbytes(MAX_CHUNK), SCHEME_NONE) for _ in range(MAX_XORB_BYTES // MAX_CHUNK))
    info = read_xorb_bytes(body)
    assert len(body) > MAX_XORB_BYTES
    status, _, answer = _cas(server, "POST", f"/v1/xorbs/default/{info.hex}", write, body)
    assert status == 200 and json.loads(answer) == {"was_inserted": True}, answer
    assert _xorb_path(server.root, info.hex).stat().st_size == len(body)


def test_delete_frees_what_only_it_used_and_check_root(server, tmp_path):
    api = server.api()
    for name in ("org/keep", "org/gone"):
        api.create_repo(name)
    shared = [os.urandom(9000), os.urandom(9000)]
    shared_xorb, shared_file = _put_file(server, "org/keep", shared)
    _put_file(server, "org/gone", shared)  # the same xorb: stored once, two owners
    only_xorb, only_file = _put_file(server, "org/gone", [os.urandom(12000)])
    big = _data(1 << 20, 13)
    api.upload_file(path_or_fileobj=big, path_in_repo="k.bin", repo_id="org/keep")
    api.upload_file(path_or_fileobj=big, path_in_repo="k.bin", repo_id="org/gone")  # dedups against keep
    root = server.root
    assert _xorb_path(root, only_xorb).is_file()
    api.delete_repo("org/gone")
    # What only org/gone held is gone: the xorb, its index, its dedup entries, its file record.
    assert not _xorb_path(root, only_xorb).exists()
    assert not _xorb_path(root, only_xorb).with_suffix(".idx").exists()
    assert not (root / "xet" / "files" / only_file[:2] / f"{only_file}.json").exists()
    assert not any(p.name == only_xorb for p in (root / "xet" / "chunks").rglob("*"))
    # What org/keep also holds stays, and reads back.
    assert _xorb_path(root, shared_xorb).is_file()
    assert (root / "xet" / "files" / shared_file[:2] / f"{shared_file}.json").is_file()
    r = httpx.get(f"{server.url}/org/keep/resolve/main/k.bin", headers={"authorization": f"Bearer {ALICE}"})
    assert r.content == big

    # The full check of a copy of the root (the module's server keeps running on the original).
    import shutil

    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    done = _hub("serve", "--check-root", "--root", str(copy))
    assert done.returncode == 0 and "ok" in done.stdout, done.stdout + done.stderr
    # Damage: a orphan xorb (no repo holds it), a temp file a killed write left, a flipped byte in a xorb.
    from hubtool.hub.server.storage import Storage
    from hubtool.hub.server.xet.store import XetStore

    orphan_body, orphan_info = write_xorb([os.urandom(5000)])
    (copy / "orphan").write_bytes(orphan_body)
    XetStore(Storage(copy, clean_tmp=False)).store_xorb(copy / "orphan", orphan_info)  # no repo holds it
    orphan = _xorb_path(copy, orphan_info.hex)
    (copy / ".tmp" / "xorb-killed").write_bytes(b"half")
    old = 1_000_000_000
    for p in (orphan, copy / ".tmp" / "xorb-killed"):
        os.utime(p, (old, old))
    done = _hub("serve", "--check-root", "--root", str(copy))
    assert done.returncode == 1 and "orphan" in done.stdout and "xorb-killed" in done.stdout, done.stdout
    assert "Error:" in done.stderr and "--repair" in done.stderr
    done = _hub("serve", "--check-root", "--repair", "--root", str(copy))
    assert done.returncode == 0 and not orphan.exists() and not (copy / ".tmp" / "xorb-killed").exists()
    assert _hub("serve", "--check-root", "--root", str(copy)).returncode == 0
    victim = _xorb_path(copy, shared_xorb)
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    done = _hub("serve", "--check-root", "--repair", "--root", str(copy))
    assert done.returncode == 1 and f"bad      xorb {shared_xorb}" in done.stdout, done.stdout
    assert victim.exists()  # a damaged xorb is reported, never removed
    done = _hub("serve", "--repair", "--root", str(copy))
    assert done.returncode == 1 and "--repair: only with --check-root" in done.stderr


def _partial_post(server: Server, path: str, token: str, declared: int, sent: bytes):
    import socket

    sock = socket.create_connection(("127.0.0.1", server.port))
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Length: {declared}\r\nContent-Type: application/octet-stream\r\n\r\n")  # fmt: skip
    sock.sendall(head.encode() + sent)
    return sock


def _wait(predicate, what: str, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_killed_uploads_leave_nothing_and_uploads_are_bounded(tmp_path):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(TOKENS)
    root = tmp_path / "root"
    srv = Server(root, tokens)
    try:
        api = srv.api()
        api.create_repo("org/k")
        head = api.repo_info("org/k").sha
        write = _token(srv, "org/k", "write")["accessToken"]
        body, info = write_xorb([os.urandom(60000) for _ in range(40)])
        path = f"/_xet/v1/xorbs/default/{info.hex}"
        temps = lambda: [p for p in (root / ".tmp").iterdir() if p.name.startswith("xorb-")]

        # A client killed mid-body: the server drops its temp file, stores nothing.
        sock = _partial_post(srv, path, write, len(body), body[: len(body) // 2])
        _wait(lambda: temps(), "the upload's temp file")
        sock.close()
        _wait(lambda: not temps(), "the temp file of a killed upload was not removed")
        assert not _xorb_path(root, info.hex).exists()

        # Per client, MAX_CONCURRENT_UPLOADS (8) at once: the 9th gets 429 with Retry-After.
        socks = [_partial_post(srv, path, write, len(body), body[:1000]) for _ in range(8)]
        _wait(lambda: len(temps()) == 8, "8 uploads in flight")
        status, headers, _ = _cas(srv, "POST", path.removeprefix("/_xet"), write, body)
        assert status == 429 and headers["retry-after"] == "1"
        for s in socks:
            s.close()
        _wait(lambda: not temps(), "temp files of closed uploads")
        assert _cas(srv, "POST", path.removeprefix("/_xet"), write, body)[0] == 200

        # The server killed mid-upload: a restart empties .tmp; no xorb, no commit appeared.
        body2, info2 = write_xorb([os.urandom(60000) for _ in range(20)])
        sock = _partial_post(srv, f"/_xet/v1/xorbs/default/{info2.hex}", write, len(body2), body2[:500_000])
        _wait(lambda: temps(), "the second upload's temp file")
        srv.stop(kill=True)
        sock.close()
        assert temps()
    finally:
        srv.stop()
    srv = Server(root, tokens)
    try:
        assert not list((root / ".tmp").iterdir())
        assert not _xorb_path(root, info2.hex).exists()
        assert srv.api().repo_info("org/k").sha == head
        done = _hub("serve", "--check-root", "--root", str(root))
        assert done.returncode == 0, done.stdout
    finally:
        srv.stop()


def test_lfs_batch_download_of_a_xet_file(server):
    api = server.api()
    api.create_repo("org/lfsx")
    data = _data(1 << 20, 17)
    api.upload_file(path_or_fileobj=data, path_in_repo="x.bin", repo_id="org/lfsx")
    sha = hashlib.sha256(data).hexdigest()
    request = {"operation": "download", "transfers": ["basic"], "objects": [{"oid": sha, "size": len(data)}]}
    status, _, body = server.raw("POST", "/org/lfsx.git/info/lfs/objects/batch", body=json.dumps(request).encode(),
                                 headers={"content-type": "application/vnd.git-lfs+json"})  # fmt: skip
    assert status == 200, body
    obj = json.loads(body)["objects"][0]
    href = obj["actions"]["download"]["href"]
    assert obj["size"] == len(data) and "/_xet/file/" in href
    assert httpx.get(href).content == data  # no Authorization: the URL is signed
    r = httpx.get(href, headers={"range": "bytes=1000-1999"})
    assert r.status_code == 206 and r.content == data[1000:2000]
    assert httpx.get(href.replace("size=", "size=1")).status_code == 403
    # Another repo's batch does not hand it out.
    api.create_repo("org/other")
    status, _, body = server.raw("POST", "/org/other.git/info/lfs/objects/batch", body=json.dumps(request).encode(),
                                 headers={"content-type": "application/vnd.git-lfs+json"})  # fmt: skip
    assert json.loads(body)["objects"][0]["error"]["code"] == 404


def test_a_new_store_at_an_old_address_is_not_mistaken_for_the_old_one(tmp_path):
    """hf_xet caches, per casUrl, the shards it uploaded and skips xorbs they name. A server whose root was
    replaced at the same address (the demo run twice on one port) once refused such a client's shard (400:
    "xorb ... is not stored"): the casUrl now holds the store's id, so each store has its own client cache."""
    import subprocess
    import sys

    from hubserver import client_env, free_port

    tokens = tmp_path / "tokens.txt"
    tokens.write_text(TOKENS)
    data = tmp_path / "w.bin"
    data.write_bytes(_data(2 << 20, 11))
    push = ("import sys; from huggingface_hub import HfApi; "
            "HfApi().upload_file(path_or_fileobj=sys.argv[1], path_in_repo='w.bin', repo_id='org/again')")
    port = free_port()
    urls = []
    for root in ("root-1", "root-2"):
        srv = Server(tmp_path / root, tokens, port=port)
        try:
            srv.api().create_repo("org/again")
            env = client_env(srv, tmp_path / "one-client")  # the same HF_HOME, so the same hf_xet cache
            done = subprocess.run([sys.executable, "-c", push, str(data)], env=env, capture_output=True,
                                  text=True, timeout=120, check=False)  # fmt: skip
            assert done.returncode == 0, done.stderr[-2000:]
            got = hf_hub_download("org/again", "w.bin", endpoint=srv.url, token=ALICE, cache_dir=tmp_path / root)
            assert Path(got).read_bytes() == data.read_bytes()
            urls.append(_token(srv, "org/again", "write")["casUrl"])
        finally:
            srv.stop()
    assert urls[0] != urls[1] and all(u.startswith(f"http://127.0.0.1:{port}/_xet/s-") for u in urls)
