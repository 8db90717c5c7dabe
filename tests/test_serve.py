"""`hub serve` against the real clients: huggingface_hub 2.x with its default settings (hf_xet installed,
HF_HUB_DISABLE_XET unset) and transformers, plus raw HTTP for headers, errors and interrupted uploads.

Every server is a real `python -m hubtool serve` subprocess on a free loopback port with a temp --root
and token file; it is killed at teardown. Request loops are bounded (deadlines) and stop by themselves.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

TESTS = Path(__file__).parent

# The server subprocess, its users and their tokens live in tests/hubserver.py (test_push_pull uses them too).
from hubserver import ALICE, BOB, TOKENS, Server, client_env


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    path.write_text(TOKENS)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, token_file):
    srv = Server(tmp_path_factory.mktemp("serve") / "root", token_file)
    yield srv
    srv.stop()


def _client_env(srv: Server, tmp: Path, token: str = ALICE) -> dict:
    return client_env(srv, tmp, token)


# -- the huggingface_hub client, default settings ----------------------------------------------------


def test_client_round_trip(server, tmp_path):
    api = server.api()
    assert api.whoami()["name"] == "alice"
    url = api.create_repo("org/demo")
    assert (url.repo_id, url.endpoint) == ("org/demo", server.url)
    assert api.create_repo("org/demo", exist_ok=True).repo_id == "org/demo"  # 409 carries the url
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("org/demo")
    assert err.value.response.status_code == 409

    info = api.upload_file(path_or_fileobj=b"hello\n", path_in_repo="notes/hello.txt", repo_id="org/demo")
    assert len(info.oid) == 40 and info.commit_url.startswith(f"{server.url}/org/demo/commit/")

    folder = tmp_path / "folder"
    (folder / "sub" / "deep").mkdir(parents=True)
    (folder / "README.md").write_text("---\nlicense: mit\ntags: [demo, sparse]\n---\n# Demo\n")
    (folder / "config.json").write_text(
        json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    )
    (folder / "sub" / "deep" / "data.txt").write_text("x" * 5000)
    weights = os.urandom(300_000)
    (folder / "model.safetensors").write_bytes(weights)
    api.upload_folder(folder_path=folder, repo_id="org/demo", commit_message="add folder")

    files = api.list_repo_files("org/demo")
    assert files == [
        ".gitattributes",
        "README.md",
        "config.json",
        "model.safetensors",
        "notes/hello.txt",
        "sub/deep/data.txt",
    ]
    top = {e.path: type(e).__name__ for e in api.list_repo_tree("org/demo")}
    assert top == {
        ".gitattributes": "RepoFile",
        "README.md": "RepoFile",
        "config.json": "RepoFile",
        "model.safetensors": "RepoFile",
        "notes": "RepoFolder",
        "sub": "RepoFolder",
    }
    assert [e.path for e in api.list_repo_tree("org/demo", path_in_repo="sub/deep")] == ["sub/deep/data.txt"]
    tree = {e.path: e for e in api.list_repo_tree("org/demo", recursive=True, expand=True)}
    assert tree["sub/deep"].last_commit.title == "add folder"
    assert tree["notes/hello.txt"].last_commit.title.startswith("Upload notes/hello.txt")
    st = tree["model.safetensors"]
    assert st.lfs is not None and st.lfs.sha256 == hashlib.sha256(weights).hexdigest()
    assert st.xet_hash is not None and len(st.xet_hash) == 64  # uploaded through Xet (docs/hub.md, "Xet")
    readme = (folder / "README.md").read_bytes()
    assert tree["README.md"].lfs is None
    assert tree["README.md"].blob_id == hashlib.sha1(b"blob %d\0" % len(readme) + readme).hexdigest()

    model = api.model_info("org/demo", files_metadata=True)
    assert model.sha == api.list_repo_commits("org/demo")[0].commit_id
    assert model.card_data.license == "mit" and model.tags == ["demo", "sparse"]
    assert model.config == {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    siblings = {s.rfilename: s for s in model.siblings}
    assert siblings["model.safetensors"].lfs.size == len(weights) and siblings["config.json"].lfs is None

    # Unchanged content is skipped by the client itself (preupload returns the remote oid).
    commits_before = len(api.list_repo_commits("org/demo"))
    api.upload_file(path_or_fileobj=b"hello\n", path_in_repo="notes/hello.txt", repo_id="org/demo")
    assert len(api.list_repo_commits("org/demo")) == commits_before

    # Branches and tags.
    api.create_branch("org/demo", branch="dev")
    api.create_branch("org/demo", branch="dev", exist_ok=True)
    with pytest.raises(HfHubHTTPError):
        api.create_branch("org/demo", branch="dev")
    api.upload_file(path_or_fileobj=b"on dev\n", path_in_repo="dev.txt", repo_id="org/demo", revision="dev")
    api.create_tag("org/demo", tag="v1.0", revision="dev", tag_message="first")
    api.create_branch("org/demo", branch="feature/x", revision="main")
    refs = api.list_repo_refs("org/demo")
    assert sorted(b.name for b in refs.branches) == ["dev", "feature/x", "main"]
    assert [t.name for t in refs.tags] == ["v1.0"] and refs.converts == []
    dev_head = next(b.target_commit for b in refs.branches if b.name == "dev")
    assert refs.tags[0].target_commit == dev_head
    assert "dev.txt" not in api.list_repo_files("org/demo")
    assert "dev.txt" in api.list_repo_files("org/demo", revision="v1.0")
    assert api.list_repo_files("org/demo", revision="feature/x") == files

    commits = api.list_repo_commits("org/demo", revision="dev", formatted=True)
    assert commits[0].title == "Upload dev.txt with huggingface_hub" and commits[-1].title == "initial commit"
    assert commits[0].authors == ["alice"] and commits[0].formatted_title is not None

    # Downloads: by branch, tag, commit; snapshot.
    cache = tmp_path / "cache"
    path = hf_hub_download("org/demo", "model.safetensors", endpoint=server.url, token=ALICE, cache_dir=cache)
    assert Path(path).read_bytes() == weights
    path = hf_hub_download(
        "org/demo", "dev.txt", revision="v1.0", endpoint=server.url, token=ALICE, cache_dir=cache
    )
    assert Path(path).read_text() == "on dev\n"
    path = hf_hub_download(
        "org/demo", "dev.txt", revision=dev_head, endpoint=server.url, token=ALICE, cache_dir=cache
    )
    assert Path(path).read_text() == "on dev\n"
    local = tmp_path / "local"
    hf_hub_download("org/demo", "model.safetensors", endpoint=server.url, token=ALICE, local_dir=local)
    assert (local / "model.safetensors").read_bytes() == weights  # local_dir checks a 64-hex ETag as sha256
    snap = Path(snapshot_download("org/demo", endpoint=server.url, token=ALICE, cache_dir=cache))
    assert sorted(str(p.relative_to(snap)) for p in snap.rglob("*") if p.is_file()) == files
    assert (snap / "sub/deep/data.txt").read_text() == "x" * 5000

    # Copies (the client sends them as file / lfsFile lines) and a stale parent commit.
    from huggingface_hub import CommitOperationCopy

    api.create_commit(
        "org/demo",
        [
            CommitOperationCopy("model.safetensors", "copies/w.safetensors"),
            CommitOperationCopy("config.json", "copies/config.json"),
        ],
        commit_message="cp",
    )
    copied = {e.path: e for e in api.list_repo_tree("org/demo", path_in_repo="copies")}
    assert copied["copies/w.safetensors"].lfs.sha256 == st.lfs.sha256
    assert copied["copies/config.json"].blob_id == tree["config.json"].blob_id
    with pytest.raises(HfHubHTTPError) as err:
        api.upload_file(
            path_or_fileobj=b"late", path_in_repo="late.txt", repo_id="org/demo", parent_commit=model.sha
        )
    assert err.value.response.status_code == 412
    api.delete_folder("copies", "org/demo")

    got = {p.path: type(p).__name__ for p in api.get_paths_info("org/demo", ["README.md", "sub", "missing"])}
    assert got == {"README.md": "RepoFile", "sub": "RepoFolder"}

    # Typed errors.
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("org/demo", "nope.txt", endpoint=server.url, token=ALICE, cache_dir=cache)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(
            "org/demo", "README.md", revision="nope", endpoint=server.url, token=ALICE, cache_dir=cache
        )
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/missing")
    assert api.file_exists("org/demo", "README.md") and not api.file_exists("org/demo", "nope.txt")
    assert api.revision_exists("org/demo", "dev") and not api.revision_exists("org/demo", "nope")

    # Deletes.
    api.delete_file("notes/hello.txt", "org/demo")
    api.delete_folder("sub", "org/demo")
    assert api.list_repo_files("org/demo") == [
        ".gitattributes",
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    with pytest.raises(EntryNotFoundError):
        api.delete_file("notes/hello.txt", "org/demo")
    api.delete_tag("org/demo", tag="v1.0")
    api.delete_branch("org/demo", branch="feature/x")
    assert [t.name for t in api.list_repo_refs("org/demo").tags] == []

    # Datasets work the same way.
    api.create_repo("org/data", repo_type="dataset")
    api.upload_file(
        path_or_fileobj=b"a,b\n1,2\n", path_in_repo="train.csv", repo_id="org/data", repo_type="dataset"
    )
    path = hf_hub_download(
        "org/data", "train.csv", repo_type="dataset", endpoint=server.url, token=ALICE, cache_dir=cache
    )
    assert Path(path).read_bytes() == b"a,b\n1,2\n"
    assert api.dataset_info("org/data").id == "org/data"

    # A moved repo answers its old URLs with a redirect (API and /resolve), as the Hub does.
    api.move_repo("org/demo", "team/demo")
    assert api.model_info("org/demo").id == "team/demo"
    path = hf_hub_download(
        "org/demo", "config.json", endpoint=server.url, token=ALICE, cache_dir=tmp_path / "mv"
    )
    assert json.loads(Path(path).read_text())["model_type"] == "llama"
    api.upload_file(path_or_fileobj=b"moved\n", path_in_repo="moved.txt", repo_id="team/demo")
    api.delete_repo("team/demo")
    assert not api.repo_exists("org/demo") and not api.repo_exists("team/demo")
    api.create_repo("org/demo")
    api.delete_repo("org/demo")
    assert not api.repo_exists("org/demo")
    api.delete_repo("org/demo", missing_ok=True)
    with pytest.raises(RepositoryNotFoundError):
        api.delete_repo("org/demo")


def test_resolve_headers_ranges_and_errors(server):
    api = server.api()
    api.create_repo("org/headers")
    small, big = b"small file\n", bytes(range(256)) * 100
    api.upload_file(path_or_fileobj=small, path_in_repo="a.txt", repo_id="org/headers")
    info = api.upload_file(path_or_fileobj=big, path_in_repo="w.bin", repo_id="org/headers")

    status, h, body = server.raw("HEAD", "/org/headers/resolve/main/a.txt")
    assert status == 200 and body == b""
    assert h["x-repo-commit"] == info.oid and h["content-length"] == str(len(small))
    git_oid = hashlib.sha1(b"blob %d\0" % len(small) + small).hexdigest()
    assert h["etag"] == f'"{git_oid}"'
    assert "x-linked-etag" not in h and not any(k.startswith("x-xet") for k in h)
    assert "xet" not in h.get("link", "")

    status, h, body = server.raw("HEAD", "/org/headers/resolve/main/w.bin")  # *.bin counts as LFS
    sha = hashlib.sha256(big).hexdigest()
    assert (
        status == 200
        and h["x-linked-etag"] == h["etag"] == f'"{sha}"'
        and h["x-linked-size"] == str(len(big))
    )
    assert h["accept-ranges"] == "bytes"

    status, h, body = server.raw("GET", "/org/headers/resolve/main/w.bin", headers={"Range": "bytes=100-199"})
    assert status == 206 and body == big[100:200] and h["content-range"] == f"bytes 100-199/{len(big)}"
    status, h, body = server.raw("GET", "/org/headers/resolve/main/w.bin", headers={"Range": "bytes=25000-"})
    assert status == 206 and body == big[25000:] and h["content-length"] == str(len(big) - 25000)
    status, h, body = server.raw("GET", "/org/headers/resolve/main/w.bin", headers={"Range": "bytes=-10"})
    assert status == 206 and body == big[-10:]
    status, h, _ = server.raw("GET", "/org/headers/resolve/main/w.bin", headers={"Range": "bytes=99999999-"})
    assert status == 416 and h["content-range"] == f"bytes */{len(big)}"
    status, h, body = server.raw("GET", f"/org/headers/resolve/{info.oid}/w.bin")
    assert status == 200 and body == big
    status, h, _ = server.raw("GET", "/org/headers/resolve/main/a.txt", headers={"If-None-Match": h["etag"]})
    assert status == 200  # that was w.bin's ETag
    etag = server.raw("HEAD", "/org/headers/resolve/main/a.txt")[1]["etag"]
    assert server.raw("GET", "/org/headers/resolve/main/a.txt", headers={"If-None-Match": etag})[0] == 304

    cases = [
        ("/org/headers/resolve/main/missing.txt", "EntryNotFound"),
        ("/org/headers/resolve/nobranch/a.txt", "RevisionNotFound"),
        ("/org/nothere/resolve/main/a.txt", "RepoNotFound"),
        ("/api/models/org/headers/tree/main/nofolder", "EntryNotFound"),
        ("/api/models/org/headers/revision/nobranch", "RevisionNotFound"),
        ("/api/models/org/nothere", "RepoNotFound"),
    ]
    for path, code in cases:
        status, h, body = server.raw("GET", path)
        assert (status, h.get("x-error-code")) == (404, code), path
        assert json.loads(body)["error"]
    assert server.raw("HEAD", "/org/headers/resolve/main/missing.txt")[1]["x-repo-commit"] == info.oid

    # Trees, paginated by Link header; the client's paginator follows it.
    for i in range(3):
        api.upload_file(path_or_fileobj=b"%d" % i, path_in_repo=f"many/{i}.txt", repo_id="org/headers")
    status, h, body = server.raw("GET", "/api/models/org/headers/tree/main?recursive=true&limit=2")
    assert status == 200 and len(json.loads(body)) == 2 and 'rel="next"' in h["link"]
    from huggingface_hub.utils._pagination import paginate

    auth = {"authorization": f"Bearer {ALICE}"}
    listed = list(
        paginate(f"{server.url}/api/models/org/headers/tree/main", {"recursive": True, "limit": 2}, auth)
    )
    assert [e["path"] for e in listed] == [
        ".gitattributes",
        "a.txt",
        "many",
        "many/0.txt",
        "many/1.txt",
        "many/2.txt",
        "w.bin",
    ]
    assert all("oid" in e and "size" in e for e in listed)
    # xetHash only on the file stored as Xet (the default client sent w.bin through Xet)
    assert [e["path"] for e in listed if "xetHash" in e] == ["w.bin"]
    infos = {f.path: f for f in api.get_paths_info("org/headers", ["w.bin", "a.txt"])}  # the same in paths-info
    assert infos["w.bin"].xet_hash == next(e["xetHash"] for e in listed if e["path"] == "w.bin")
    assert infos["a.txt"].xet_hash is None
    commits = list(paginate(f"{server.url}/api/models/org/headers/commits/main", {"limit": 2}, auth))
    assert [c["id"] for c in commits] == [c.commit_id for c in api.list_repo_commits("org/headers")]
    assert len(commits) == 6
    status, h, _ = server.raw("GET", "/api/models/org/headers/tree/main%2Fmany")  # a quoted rev: no such rev
    assert h.get("x-error-code") == "RevisionNotFound"
    status, _, body = server.raw("GET", "/api/models/org/headers/tree/main/many%2F..%2Fa.txt")
    assert status == 400
    # Xet tokens (tests/test_xet_serve.py has the CAS): only for a caller who may read the repo.
    status, h, _ = server.raw("GET", "/api/models/org/headers/xet-read-token/main")
    assert status == 200 and h["x-xet-cas-url"] == f"{server.url}/_xet/s-{(server.root / 'xet' / 'store-id').read_text()}"
    status, h, _ = server.raw("GET", "/api/models/org/headers/xet-write-token/main", token=None)
    assert status == 401 and not any(k.startswith("x-xet") for k in h)


def test_auth(server, tmp_path, token_file):
    api = server.api()
    api.create_repo("org/private-ish")
    anon, wrong = server.api(token=False), server.api(token="tok-nobody-000000")
    for client, code in ((anon, 401), (wrong, 401)):
        with pytest.raises(HfHubHTTPError) as err:
            client.create_repo("org/by-anon")
        assert err.value.response.status_code == code
        with pytest.raises(HfHubHTTPError) as err:
            client.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="org/private-ish")
        assert err.value.response.status_code == code
        with pytest.raises(HfHubHTTPError) as err:
            client.list_repo_files("org/private-ish")
        assert err.value.response.status_code == code
        with pytest.raises(HfHubHTTPError) as err:
            hf_hub_download(
                "org/private-ish",
                ".gitattributes",
                endpoint=server.url,
                token=client.token,
                cache_dir=tmp_path / "c",
            )
        assert err.value.response.status_code == code
    with pytest.raises(HfHubHTTPError):
        anon.whoami(token="tok-nobody-000000")
    # Raw: no token on write and read endpoints, a wrong scheme.
    for method, path in (
        ("POST", "/api/models/org/private-ish/commit/main"),
        ("POST", "/api/models/org/private-ish/preupload/main"),
        ("POST", "/org/private-ish.git/info/lfs/objects/batch"),
        ("GET", "/api/models/org/private-ish"),
        ("HEAD", "/org/private-ish/resolve/main/.gitattributes"),
        ("GET", "/api/whoami-v2"),
    ):
        status, h, _ = server.raw(method, path, token=None, body=b"{}" if method == "POST" else None)
        assert status == 401 and h.get("x-error-code") in ("Unauthorized", "RepoNotFound"), (method, path)
    status, _, _ = server.raw(
        "GET", "/api/models/org/private-ish", token=None, headers={"Authorization": f"Basic {ALICE}"}
    )
    assert status == 401
    assert server.api(BOB).whoami()["name"] == "bob"

    # The log has requests, never a token.
    log = server.log.read_text()
    assert "/api/whoami-v2" in log and ALICE not in log and BOB not in log and "tok-nobody" not in log

    # --public-read: anonymous reads of public repos, still no anonymous writes, private repos need a token.
    public = Server(tmp_path / "public-root", token_file, "--public-read")
    try:
        papi = public.api()
        papi.create_repo("org/open")
        papi.upload_file(path_or_fileobj=b"open\n", path_in_repo="o.txt", repo_id="org/open")
        papi.create_repo("org/closed", private=True)
        anon = public.api(token=False)
        assert anon.list_repo_files("org/open") == [".gitattributes", "o.txt"]
        path = hf_hub_download(
            "org/open", "o.txt", endpoint=public.url, token=False, cache_dir=tmp_path / "p"
        )
        assert Path(path).read_text() == "open\n"
        with pytest.raises(RepositoryNotFoundError):
            anon.list_repo_files("org/closed")
        assert papi.list_repo_files("org/closed") == [".gitattributes"]
        with pytest.raises(HfHubHTTPError) as err:
            anon.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="org/open")
        assert err.value.response.status_code == 401
    finally:
        public.stop()


def test_bad_ids_paths_and_revisions(server):
    api = server.api()
    api.create_repo("org/valid")
    bad_requests = [
        ("GET", "/api/models/org/..%2F..%2Fetc"),
        ("GET", "/api/models/../etc/passwd"),
        ("GET", "/api/models/org/a%00b"),
        ("GET", "/api/models/org/" + "n" * 200),
        ("GET", "/api/models/org/name.git"),
        ("GET", "/api/models/api/name"),
        ("GET", "/org/valid/resolve/main/../../../etc/passwd"),
        ("GET", "/org/valid/resolve/main/a%2F..%2F..%2Fsecret"),
        ("GET", "/org/valid/resolve/main//etc/passwd"),
        ("GET", "/org/valid/resolve/main/a%5Cb"),
        ("GET", "/org/valid/resolve/main/a%00b"),
        ("GET", "/org/valid/resolve/..%2F..%2Fx/a.txt"),
        ("GET", "/org/valid/resolve/" + "r" * 300 + "/a.txt"),
        ("GET", "/api/models/org/valid/tree/main/%2Fetc"),
        ("HEAD", "/org/valid/resolve/main/.git/config"),
    ]
    for method, path in bad_requests:
        status, h, body = server.raw(method, path)
        assert status == 400, (path, status, body)
        assert h["x-error-code"] in ("InvalidRepoId", "InvalidPath", "InvalidRevision"), path
        if method == "GET":
            assert json.loads(body)["error"]
    for name in ("../evil", "a/b/c", "-dash", "x" * 100, "na..me"):
        with pytest.raises((HfHubHTTPError, ValueError)):
            api.create_repo(name)
    # A commit that names a bad path is refused whole: no commit, no file.
    head = api.list_repo_commits("org/valid")[0].commit_id
    body = _ndjson(
        {"key": "header", "value": {"summary": "evil"}},
        {
            "key": "file",
            "value": {"content": base64.b64encode(b"ok").decode(), "path": "ok.txt", "encoding": "base64"},
        },
        {"key": "file", "value": {"content": "", "path": "../../escape.txt", "encoding": "base64"}},
    )
    status, h, _ = server.raw(
        "POST",
        "/api/models/org/valid/commit/main",
        body=body,
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert status == 400 and h["x-error-code"] == "InvalidPath"
    assert api.list_repo_commits("org/valid")[0].commit_id == head
    assert not list(server.root.rglob("escape.txt"))
    # Refused early in a large body: the rest is read and dropped, the client gets the 400 (not a reset).
    big_line = {
        "key": "file",
        "value": {"content": base64.b64encode(os.urandom(4 << 20)).decode(), "path": "b.bin"},
    }
    body = _ndjson({"key": "deletedFile", "value": {"path": "a\\b"}}, big_line)
    status, h, _ = server.raw("POST", "/api/models/org/valid/commit/main", body=body)
    assert status == 400 and h["x-error-code"] == "InvalidPath"
    status, h, _ = server.raw("POST", "/api/models/org/valid/commit/main", body=b'{"key": "header", "val')
    assert status == 400 and h["x-error-code"] == "InvalidCommitBody"
    status, h, _ = server.raw("POST", "/api/models/org/valid/commit/nobranch", body=b"")
    assert status == 404 and h["x-error-code"] == "RevisionNotFound"
    assert not any(server.root.joinpath(".tmp").iterdir())


def _ndjson(*items) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


def _wait_until(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _blobs(root: Path) -> set[str]:
    return {p.name for p in (root / "blobs").rglob("*") if p.is_file()}


def _half_commit(srv: Server, repo: str, content: bytes, *, complete_lines: int) -> socket.socket:
    """Send a commit whose body stops halfway (`complete_lines` whole file lines, then half of one)."""
    lines = [json.dumps({"key": "header", "value": {"summary": "never"}}).encode() + b"\n"]
    for i in range(complete_lines + 1):
        payload = {
            "content": base64.b64encode(content).decode(),
            "path": f"part{i}.bin",
            "encoding": "base64",
        }
        lines.append(json.dumps({"key": "file", "value": payload}).encode() + b"\n")
    body = b"".join(lines)
    sent = body[: len(body) - len(lines[-1]) // 2]
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    head = (
        f"POST /api/models/{repo}/commit/main HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n"
        f"Authorization: Bearer {ALICE}\r\nContent-Type: application/x-ndjson\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + sent)
    return sock


def test_killed_upload_leaves_nothing(server, tmp_path, token_file):
    api = server.api()
    api.create_repo("org/killed")
    api.upload_file(path_or_fileobj=b"v1\n", path_in_repo="a.txt", repo_id="org/killed")
    commits = [c.commit_id for c in api.list_repo_commits("org/killed")]
    blobs = _blobs(server.root)
    content = os.urandom(3 << 20)

    # The client drops the connection mid-body (after one complete file line, inside the second).
    sock = _half_commit(server, "org/killed", content, complete_lines=1)
    assert _wait_until(lambda: len(list((server.root / ".tmp").iterdir())) >= 1, 10)
    sock.close()
    assert _wait_until(lambda: not any((server.root / ".tmp").iterdir()))
    assert [c.commit_id for c in api.list_repo_commits("org/killed")] == commits
    assert api.list_repo_files("org/killed") == [".gitattributes", "a.txt"]
    assert _blobs(server.root) == blobs

    # The server itself is killed mid-upload: the restarted server cleans up and serves the old state.
    root = tmp_path / "killed-root"
    first = Server(root, token_file)
    try:
        first.api().create_repo("org/k2")
        first.api().upload_file(path_or_fileobj=b"kept\n", path_in_repo="kept.txt", repo_id="org/k2")
        before = [c.commit_id for c in first.api().list_repo_commits("org/k2")]
        blobs = _blobs(root)
        sock = _half_commit(first, "org/k2", content, complete_lines=1)
        assert _wait_until(lambda: len(list((root / ".tmp").iterdir())) >= 2, 10)
        first.stop(kill=True)
        sock.close()
        assert any((root / ".tmp").iterdir())  # the killed server left temp files behind
    finally:
        first.stop(kill=True)
    again = Server(root, token_file)
    try:
        assert not any((root / ".tmp").iterdir())
        api2 = again.api()
        assert [c.commit_id for c in api2.list_repo_commits("org/k2")] == before
        assert api2.list_repo_files("org/k2") == [".gitattributes", "kept.txt"]
        assert _blobs(root) == blobs
        api2.upload_file(path_or_fileobj=b"after\n", path_in_repo="after.txt", repo_id="org/k2")
    finally:
        again.stop()


def test_restart_serves_everything(tmp_path, token_file):
    root = tmp_path / "restart-root"
    first = Server(root, token_file)
    try:
        api = first.api()
        api.create_repo("team/model")
        api.upload_file(path_or_fileobj=b"one\n", path_in_repo="one.txt", repo_id="team/model")
        api.create_branch("team/model", branch="dev")
        api.upload_file(
            path_or_fileobj=os.urandom(20_000),
            path_in_repo="w.safetensors",
            repo_id="team/model",
            revision="dev",
        )
        api.create_tag("team/model", tag="v1", revision="dev")
        state = (
            api.list_repo_refs("team/model"),
            [c.commit_id for c in api.list_repo_commits("team/model", revision="dev")],
            api.list_repo_files("team/model", revision="v1"),
            api.model_info("team/model", revision="dev", files_metadata=True).siblings,
        )
        data = Path(
            hf_hub_download(
                "team/model",
                "w.safetensors",
                revision="v1",
                endpoint=first.url,
                token=ALICE,
                cache_dir=tmp_path / "c1",
            )
        ).read_bytes()
    finally:
        first.stop()
    second = Server(root, token_file, port=first.port)
    try:
        api = second.api()
        assert (
            api.list_repo_refs("team/model"),
            [c.commit_id for c in api.list_repo_commits("team/model", revision="dev")],
            api.list_repo_files("team/model", revision="v1"),
            api.model_info("team/model", revision="dev", files_metadata=True).siblings,
        ) == state
        again = hf_hub_download(
            "team/model",
            "w.safetensors",
            revision="v1",
            endpoint=second.url,
            token=ALICE,
            cache_dir=tmp_path / "c2",
        )
        assert Path(again).read_bytes() == data
    finally:
        second.stop()


@pytest.mark.filterwarnings("ignore:Use 'content=:DeprecationWarning")  # the client's legacy LFS PUT
def test_lfs_batch_api(server, tmp_path, monkeypatch):
    """Clients that upload through LFS: huggingface_hub < 1.20 (by its user-agent) or with Xet disabled."""
    from huggingface_hub import constants

    api = server.api()
    api.create_repo("org/lfs")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    legacy = HfApi(endpoint=server.url, token=ALICE, headers={"user-agent": "legacy/1.0; hf_hub/0.35.0"})
    weights = os.urandom(1_000_000)
    legacy.upload_file(path_or_fileobj=weights, path_in_repo="weights.bin", repo_id="org/lfs")
    assert "/_lfs/upload/" in server.log.read_text()  # it went through the batch API and a signed PUT
    path = hf_hub_download(
        "org/lfs", "weights.bin", endpoint=server.url, token=ALICE, cache_dir=tmp_path / "c"
    )
    assert Path(path).read_bytes() == weights
    entry = next(iter(api.get_paths_info("org/lfs", ["weights.bin"])))
    assert entry.lfs.sha256 == hashlib.sha256(weights).hexdigest()

    # Raw protocol: batch -> PUT (no auth, signed href) -> verify -> commit with an lfsFile line.
    blob = b"raw lfs object " * 1000
    oid = hashlib.sha256(blob).hexdigest()
    lfs_headers = {"Accept": "application/vnd.git-lfs+json", "Content-Type": "application/vnd.git-lfs+json"}
    batch = json.dumps(
        {
            "operation": "upload",
            "transfers": ["basic", "multipart"],
            "hash_algo": "sha256",
            "objects": [{"oid": oid, "size": len(blob)}, {"oid": "zz", "size": 1}],
        }
    ).encode()
    status, _, body = server.raw(
        "POST", "/org/lfs.git/info/lfs/objects/batch", body=batch, headers=lfs_headers
    )
    answer = json.loads(body)
    assert status == 200 and answer["transfer"] == "basic" and "xet" not in body.decode()
    obj, bad = answer["objects"]
    assert bad["error"]["code"] == 422
    href = obj["actions"]["upload"]["href"]
    upload_path = href[len(server.url) :]
    assert server.raw("PUT", upload_path.replace("sig=", "sig=0"), token=None, body=blob)[0] == 403
    assert server.raw("PUT", upload_path, token=None, body=blob[:-1] + b"?")[0] == 400  # wrong content
    assert oid not in _blobs(server.root)
    assert server.raw("PUT", upload_path, token=None, body=blob)[0] == 200
    verify = obj["actions"]["verify"]["href"][len(server.url) :]
    assert server.raw("POST", verify, body=json.dumps({"oid": oid, "size": len(blob)}).encode())[0] == 200
    status, _, body = server.raw(
        "POST", "/org/lfs.git/info/lfs/objects/batch", body=batch, headers=lfs_headers
    )
    assert "actions" not in json.loads(body)["objects"][0]  # already stored: nothing to upload
    commit = _ndjson(
        {"key": "header", "value": {"summary": "lfs line"}},
        {"key": "lfsFile", "value": {"path": "raw.bin", "algo": "sha256", "oid": oid, "size": len(blob)}},
        {"key": "lfsFile", "value": {"path": "copy.bin", "algo": "sha256", "oid": oid}},
    )
    status, _, body = server.raw(
        "POST",
        "/api/models/org/lfs/commit/main",
        body=commit,
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert status == 200 and json.loads(body)["commitUrl"].startswith(server.url)
    for name in ("raw.bin", "copy.bin"):
        assert server.raw("GET", f"/org/lfs/resolve/main/{name}")[2] == blob
    missing = _ndjson(
        {"key": "lfsFile", "value": {"path": "x.bin", "algo": "sha256", "oid": "1" * 64, "size": 1}}
    )
    assert (
        server.raw("POST", "/api/models/org/lfs/commit/main", body=missing)[1]["x-error-code"]
        == "LfsObjectNotFound"
    )


def test_transformers_from_pretrained_and_push_to_hub(server, tmp_path):
    """AutoModelForCausalLM / AutoTokenizer and push_to_hub with only HF_ENDPOINT and HF_TOKEN set."""
    script = textwrap.dedent(
        """
        import json, sys
        sys.path.insert(0, sys.argv[2])
        import torch
        from tiny import make_tiny_llama, save_word_tokenizer
        from huggingface_hub import HfApi, snapshot_download
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = sys.argv[1]
        model = make_tiny_llama(folder)
        save_word_tokenizer(folder, ["hello", "sparse", "world"])
        api = HfApi()
        api.create_repo("org/tiny", exist_ok=True)
        api.upload_folder(folder_path=folder, repo_id="org/tiny", commit_message="tiny llama")
        loaded = AutoModelForCausalLM.from_pretrained("org/tiny")
        tok = AutoTokenizer.from_pretrained("org/tiny")
        same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
        pushed = loaded.push_to_hub("org/pushed")
        bare = loaded.push_to_hub("bare-name", commit_message="bare")
        tok.push_to_hub("org/pushed")
        snap = snapshot_download("org/pushed")
        again = AutoModelForCausalLM.from_pretrained(snap)
        same_again = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
        print(json.dumps({"same": same, "same_again": same_again, "ids": tok("hello world sparse")["input_ids"],
                          "pushed": pushed.repo_url.repo_id, "bare": bare.repo_url.repo_id}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "tiny"), str(TESTS)],
        env=_client_env(server, tmp_path),
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out == {
        "same": True,
        "same_again": True,
        "ids": [4, 6, 5],
        "pushed": "org/pushed",
        "bare": "alice/bare-name",
    }
    api = server.api()
    files = api.list_repo_files("org/pushed")
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    assert [c.title for c in api.list_repo_commits("alice/bare-name")] == ["bare", "initial commit"]


def test_large_file_memory_stays_flat(tmp_path, token_file):
    """A 30 MB and a 300 MB file go up (inline base64, default client) and down byte-identical; the
    server's peak RSS grows by less than 64 MB between the two."""
    srv = Server(tmp_path / "big-root", token_file)
    try:
        api = srv.api()
        api.create_repo("org/big")
        peaks = {}
        for mb in (30, 300):
            path = tmp_path / f"big-{mb}.bin"
            size = mb << 20
            with open(path, "wb") as f:  # sparse, with some random pages so the content is not all zeros
                f.truncate(size)
                for offset in range(0, size, 5 << 20):
                    f.seek(offset)
                    f.write(os.urandom(4096))
            want = _sha256(path)
            api.upload_file(path_or_fileobj=str(path), path_in_repo=f"big-{mb}.bin", repo_id="org/big")
            got = hf_hub_download(
                "org/big", f"big-{mb}.bin", endpoint=srv.url, token=ALICE, cache_dir=tmp_path / "cache"
            )
            assert os.path.getsize(got) == size and _sha256(got) == want
            peaks[mb] = srv.status("VmHWM")
            path.unlink()
            Path(got).resolve().unlink()
        print(
            f"server VmHWM after 30 MB: {peaks[30] / 1024:.1f} MB, after 300 MB: {peaks[300] / 1024:.1f} MB"
        )
        assert peaks[300] - peaks[30] < 64 * 1024, peaks
    finally:
        srv.stop()
        for blob in (tmp_path / "big-root" / "blobs").rglob("*"):
            if blob.is_file() and blob.stat().st_size > 1 << 20:
                blob.unlink()


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# -- pieces without a server ----------------------------------------------------------------------------


def test_cli_help_is_fast_and_documents_the_endpoint():
    code = "import sys, hubtool.cli; print(sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn')))"
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "[]"
    )
    out = subprocess.run(
        [sys.executable, "-m", "hubtool", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout
    assert "HF_ENDPOINT" in out and "HF_TOKEN" in out and "--token-file" in out and "--public-read" in out
    out = subprocess.run(
        [sys.executable, "-m", "hubtool", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout
    assert "Share" in out and "serve" in out


def test_token_file_format(tmp_path):
    from hubtool.errors import HubError
    from hubtool.hub.server.auth import TokenStore, bearer_token, parse_token_file

    # Only sha256 digests of the tokens are kept in memory (compared in constant time, equal lengths).
    assert parse_token_file("# c\n\nalice  tok-aaaaaaaa\n  bob tok-bbbbbbbb  \n") == [
        ("alice", hashlib.sha256(b"tok-aaaaaaaa").digest()),
        ("bob", hashlib.sha256(b"tok-bbbbbbbb").digest()),
    ]
    for text in (
        "alice\n",
        "alice tok-aaaaaaaa extra\n",
        "al/ice tok-aaaaaaaa\n",
        "alice short\n",
        "a tok-aaaaaaaa\nb tok-aaaaaaaa\n",
    ):
        with pytest.raises(HubError) as err:
            parse_token_file(text)
        assert "tok-aaaaaaaa" not in str(err.value)
    path = tmp_path / "t"
    path.write_text("alice tok-aaaaaaaa\n")
    store = TokenStore(path)
    assert store.user_for("tok-aaaaaaaa") == "alice" and store.user_for("tok-aaaaaaab") is None
    time.sleep(0.01)
    path.write_text("alice tok-aaaaaaaa\ncarol tok-cccccccc\n")
    assert store.user_for("tok-cccccccc") == "carol"  # re-read on change
    assert (
        bearer_token("Bearer abc") == "abc" and bearer_token("Basic abc") is None and bearer_token("") is None
    )


def test_ndjson_parser_streams_and_matches_json():
    from hubtool.hub.server.ndjson import NDJSONParser, ParseError, Spilled

    content = os.urandom(70_000)
    lines = [
        {
            "key": "header",
            "value": {
                "summary": 'ü "quoted" \\ \u2603 \U0001f600',
                "description": "a\nb\tc/d",
                "parentCommit": None,
                "n": [1, -2.5, 3e2, True, False, None, {}, []],
            },
        },
        {
            "key": "file",
            "value": {"content": base64.b64encode(content).decode(), "path": "a/b.bin", "encoding": "base64"},
        },
        {"key": "deletedFolder", "value": {"path": "x/"}},
    ]
    body = b"".join(
        json.dumps(line, ensure_ascii=ascii_).encode() + b"\n" for line in lines for ascii_ in (True,)
    )
    body += json.dumps(lines[0], ensure_ascii=False).encode() + b"\n"
    body += b'{"key":"file","value":{"path":"e.txt","content":"aGk\\/","encoding":"base64"}}\n'
    for step in (1, 7, 4096, len(body)):
        made = []

        def new_spill(made=made):
            made.append(Path(f"/tmp/ndjson-test-{os.getpid()}-{len(made)}"))
            return made[-1]

        parser = NDJSONParser(new_spill)
        out = []
        for i in range(0, len(body), step):
            out += parser.feed(body[i : i + step])
        parser.close()
        assert out[0] == lines[0] and out[2] == lines[2] and out[3] == lines[0]
        spilled = out[1]["value"]["content"]
        assert isinstance(spilled, Spilled) and spilled.base64_ok and spilled.size == len(content)
        assert spilled.path.read_bytes() == content and spilled.sha256 == hashlib.sha256(content).hexdigest()
        assert out[4]["value"]["content"].path.read_bytes() == b"hi?"  # "\/" unescaped before decoding
        parser.discard_all()
        assert not any(p.exists() for p in made)
    for bad in (
        b'{"a":1,}\n',
        b"[1]\n",
        b'{"a" 1}\n',
        b'{"a":tru}\n',
        b'{"a":"\x01"}\n',
        b'{"a":"\\x"}\n',
        b'"str"\n',
        b'{"a":1}}\n',
    ):
        with pytest.raises(ParseError):
            p = NDJSONParser(lambda: Path("/tmp/never"))
            p.feed(bad)
            p.close()
    p = NDJSONParser(lambda: Path(f"/tmp/ndjson-bad-{os.getpid()}"))
    (item,) = p.feed(b'{"key":"file","value":{"content":"not base64!!","path":"x"}}\n')
    assert not item["value"]["content"].base64_ok and item["value"]["content"].raw == b"not base64!!"
    p.discard_all()
    with pytest.raises(ParseError):
        NDJSONParser(lambda: Path("/tmp/never"), max_line_bytes=100).feed(b'{"a":"' + b"x" * 200 + b'"}')


def test_numbers_in_queries_and_headers_are_ascii_digits_or_ignored(server):
    """issue 15 §8: '²' passes str.isdigit() but not int(), and int() refuses thousands of digits: both
    were 500s. Each number now follows one bounded ASCII-digit rule (names.ascii_int)."""
    from urllib.parse import quote

    api = server.api()
    api.create_repo("org/numbers")
    big = bytes(range(256)) * 40
    api.upload_file(path_or_fileobj=big, path_in_repo="w.bin", repo_id="org/numbers")
    huge = "9" * 5000
    for query in ("limit", "p"):
        for value in ("²", "٣", huge):
            status, _, body = server.raw("GET", f"/api/models/org/numbers/commits/main?{query}={quote(value)}")
            assert status == 200 and isinstance(json.loads(body), list), (query, value, status)
    for value in ("²", huge):
        status, _, _ = server.raw("GET", f"/api/models/org/numbers/tree/main?limit={quote(value)}&cursor={quote(value)}")
        assert status < 500, (value, status)
    # Range: a non-ASCII digit makes the header malformed (the whole file); a start past any size is
    # unsatisfiable; an end past the file is the file's end.
    path = "/org/numbers/resolve/main/w.bin"
    status, _, body = server.raw("GET", path, headers={"Range": "bytes=1²-"})
    assert status == 200 and body == big
    status, _, _ = server.raw("GET", path, headers={"Range": f"bytes={huge}-"})
    assert status == 416
    status, _, body = server.raw("GET", path, headers={"Range": f"bytes=10-{huge}"})
    assert status == 206 and body == big[10:]
    status, _, body = server.raw("GET", path, headers={"Range": f"bytes=-{huge}"})
    assert status == 206 and body == big
    from hubtool.hub.server.names import NUMBER_CAP, ascii_int

    assert [ascii_int(x) for x in ("0", "007", "²", "١٢", "", None, "-1", huge)] == [0, 7, None, None, None, None,
                                                                                   None, NUMBER_CAP]
