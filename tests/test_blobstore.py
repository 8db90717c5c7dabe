"""The blob store: ordinary file modes, a read-only store, `hub verify --repair`, and the Hub blob store
(a shared catalog's rows fetched on first use from a real `hub serve` through the real huggingface_hub
client over HTTP, checked against their sha256).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_sparse_expert

from hubtool.fileio import atomic_write, file_mode, locked_mkstemp, scratch_dir, umask
from hubtool.registry import Catalog
from hubtool.registry.blobs import LocalBlobStore, blob_location

TESTS = Path(__file__).parent


def hub(*args: object, env: dict | None = None, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "hubtool", *map(str, args)],
        env={**(env or os.environ), "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode == 1, f"{result.args}: {result.returncode}\n{result.stdout}\n{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]


# -- modes, read-only --------------------------------------------------------------------------------------


def test_blobs_and_written_files_get_the_umask_mode(hub_home, packed):
    """mkstemp makes 0600 files; a blob, like any file the umask governs (0644 under 022), is readable by
    the group and others who share the store."""
    expected = 0o666 & ~umask()
    assert file_mode() == expected and expected & 0o044 == 0o044 & ~umask()
    with Catalog() as cat:
        rec = cat.register(packed("qa", seed=1))
        assert cat.blob_path(rec).stat().st_mode & 0o777 == expected
    out = hub_home / "written.bin"
    with atomic_write(out) as f:
        f.write(b"x")
    assert out.stat().st_mode & 0o777 == expected


def _without_dac_override() -> tuple[str, ...] | None:
    """A command prefix that runs as root without CAP_DAC_OVERRIDE (so permissions apply), or None."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0:
        return ()
    if setpriv is None:
        return None
    prefix = (setpriv, "--bounding-set", "-dac_override,-dac_read_search",
              "--inh-caps", "-dac_override,-dac_read_search", "--")  # fmt: skip
    return prefix


def test_read_only_blob_store_is_one_clean_line(hub_home, packed, tmp_path):
    prefix = _without_dac_override()
    if prefix is None:
        pytest.skip("running as root without setpriv: permissions cannot be made to apply")
    with Catalog() as cat:
        first = cat.register(packed("qa", seed=1))
    store = hub_home / "blobs"
    probe = subprocess.run([*prefix, "sh", "-c", f"chmod 555 {store} && touch {store}/probe"], check=False,
                           capture_output=True)  # fmt: skip
    try:
        if (store / "probe").exists():
            pytest.skip("this machine lets the process write into a 555 folder (capabilities kept)")
        assert probe.returncode != 0
        result = hub("import", packed("summ", "summ", seed=2), prefix=prefix)
        one_line_error(result, "blob store", str(store), "not writable")
        assert "Traceback" not in result.stderr
        shown = hub("show", first.ref, "--json", prefix=prefix)  # reading still works
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["sha256"] == first.sha256
    finally:
        store.chmod(0o755)
    with Catalog() as cat:
        assert [r.ref for r in cat.list()] == ["qa@1"] and cat.verify().ok


# -- hub verify, --repair ----------------------------------------------------------------------------------


def test_verify_reports_and_repairs_what_a_crash_leaves(hub_home, packed):
    cat = Catalog()
    a = cat.register(packed("a", seed=1))
    b = cat.register(packed("b", seed=2))
    store = hub_home / "blobs"
    # a killed `hub rm a` between moving a's blob aside and committing: the row still needs it
    a_blob = cat.blob_path(a)
    a_trash = a_blob.with_name(".trash-" + a_blob.name)
    os.replace(a_blob, a_trash)
    # a killed `hub rm` of something after its commit: nobody needs it
    gone = write_sparse_expert(hub_home / "gone.safetensors", name="gone", seed=9)
    with LocalBlobStore(store).stage(gone) as staged:
        gone_sha = staged.sha256
    gone_trash = store / gone_sha[:2] / f".trash-{gone_sha}.safetensors"
    gone_trash.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(gone, gone_trash)
    # a killed registration: a half-copied temp file, and a placed blob whose row never committed
    (store / ".tmp-killed.safetensors").write_bytes(b"half a blob")
    orphan = store / blob_location(gone_sha)
    shutil.copy(gone, orphan)
    stray = store / "ab" / "not-a-blob.txt"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_text("someone's notes")
    # scratch space of killed commands, a killed base-model conversion
    (hub_home / "tmp" / "push-killed" / "experts").mkdir(parents=True)
    (hub_home / "tmp" / "register-killed").mkdir()
    (hub_home / "models" / ".tiny.tmp-killed").mkdir(parents=True)
    (hub_home / "models" / "tiny").mkdir()  # a converted model: never a leftover
    # ...and entries live processes are using right now (this one holds their locks)
    fd, live_temp = locked_mkstemp(store, ".tmp-", ".safetensors")
    with scratch_dir(hub_home / "tmp", "pull-") as live_scratch:
        report = cat.verify()
        assert not report.ok
        assert report.missing == ["a@1"] and report.mismatched == [] and report.checked == 1
        assert sorted(report.trash) == sorted([a_trash, gone_trash])
        assert report.temp == [store / ".tmp-killed.safetensors"]
        assert sorted(report.orphans) == sorted([orphan, stray])
        assert sorted(report.scratch) == sorted(
            [hub_home / "tmp" / "push-killed", hub_home / "tmp" / "register-killed",
             hub_home / "models" / ".tiny.tmp-killed"]
        )  # fmt: skip
        assert sorted(report.in_use) == sorted([live_temp, live_scratch])

        cli = hub("verify", "--json")
        assert cli.returncode == 1
        doc = json.loads(cli.stdout)
        assert doc["ok"] is False and doc["missing"] == ["a@1"] and len(doc["scratch"]) == 3
        text = hub("verify")
        assert text.returncode == 1 and "puts it back" in " ".join(text.stdout.split())

        repaired = hub("verify", "--repair", "--json")
        doc = json.loads(repaired.stdout)
        assert repaired.returncode == 1  # the stray file is not a blob: reported, never deleted
        assert doc["orphans"] == [str(stray)] and doc["restored"] == [a.blob]
        removed = {(Path(r["path"]), r["kind"]) for r in doc["removed"]}
        assert removed == {
            (gone_trash, "trash"), (store / ".tmp-killed.safetensors", "temp"), (orphan, "orphan"),
            (hub_home / "tmp" / "push-killed", "scratch"), (hub_home / "tmp" / "register-killed", "scratch"),
            (hub_home / "models" / ".tiny.tmp-killed", "scratch"),
        }  # fmt: skip
        assert live_temp.exists() and live_scratch.is_dir() and (hub_home / "models" / "tiny").is_dir()
        assert sorted(map(Path, doc["in_use"])) == sorted([live_temp, live_scratch])
    os.close(fd)  # the writer of live_temp dies without cleaning up: now it is a leftover
    stray.unlink()
    final = hub("verify", "--repair")
    assert final.returncode == 0, final.stdout
    assert any("removed" in line and str(live_temp) in line and "(temp)" in line for line in final.stdout.splitlines())
    assert cat.load("a@1").nnz == a.nnz and cat.load("b").nnz == b.nnz
    assert cat.verify().ok and hub("verify").stdout.strip().endswith("ok")


def test_repair_spares_young_orphans_without_a_global_write_lock(hub_home, packed, monkeypatch):
    """On PostgreSQL no single lock rules out a registration between placing its blob and committing its
    row; there --repair keeps unreferenced blobs younger than --grace. Modelled here by the sweep itself."""
    from hubtool.registry import verify as sweep_mod
    from hubtool.registry.records import VerifyReport

    cat = Catalog()
    cat.register(packed("a", seed=1))
    young = write_sparse_expert(hub_home / "young.safetensors", name="young", seed=5)
    with cat.blobs.stage(young) as staged:
        location = cat.blobs.place(staged)  # placed, "row not committed yet"
    report = VerifyReport()
    sweep_mod.sweep(cat.blobs, {cat.get("a").blob}, report, repair=True, grace=600)
    assert report.recent == [cat.blobs.path(location)] and not report.removed and not report.ok
    old = os.stat(cat.blobs.path(location)).st_mtime - 3600
    os.utime(cat.blobs.path(location), (old, old))
    sweep_mod.sweep(cat.blobs, {cat.get("a").blob}, report, repair=True, grace=600)
    assert report.recent == [] and [r["kind"] for r in report.removed] == ["orphan"] and report.ok


# -- the Hub blob store ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    from hubserver import Server, write_tokens

    root = tmp_path_factory.mktemp("serve")
    srv = Server(root / "root", write_tokens(root / "tokens.txt"))
    yield srv
    srv.stop()


def _tiny_expert(tmp_path: Path, name: str, seed: int):
    """A tiny Llama base folder and an expert of its q/k/v projections (fingerprints of that base)."""
    from crashing import tiny_expert
    from tiny import make_tiny_llama, save_word_tokenizer

    base = tmp_path / "base"
    model = make_tiny_llama(base)
    save_word_tokenizer(base, ["what", "is", "the", "answer"])
    return tiny_expert(base.resolve(), model, tmp_path / f"{name}.safetensors", name, seed)


@pytest.mark.slow
def test_shared_catalog_fetches_blobs_from_the_hub_on_first_use(served, tmp_path, monkeypatch):
    """Home A registers and pushes; homes B.. share A's catalog file (HUB_CATALOG) but not its blob store:
    show, export, compose and `hub pull NAME@V` fetch the blob over HTTP, check it and keep it; bytes the
    server changed are refused and nothing is placed."""
    from hubserver import ALICE, client_env

    from hubtool.hub.push import push_expert

    home_a = tmp_path / "a"
    url = f"sqlite:///{home_a / 'registry.db'}"
    cat_a = Catalog(url, blobs=home_a / "blobs")
    monkeypatch.setenv("HUB_HOME", str(home_a))
    rec = cat_a.register(_tiny_expert(tmp_path, "qa", seed=1))
    local = cat_a.register(_tiny_expert(tmp_path, "local-only", seed=2))  # never pushed
    pushed = push_expert(rec.ref, "org/qa", endpoint=served.url, token=ALICE, catalog=cat_a)
    assert cat_a.get(rec.ref).hub_commit == pushed.commit
    blob_bytes = cat_a.blob_path(rec).read_bytes()

    def home(name: str) -> tuple[Path, dict]:
        path = tmp_path / name
        return path, client_env(served, tmp_path / f"{name}-hf", HUB_HOME=str(path), HUB_CATALOG=url)

    home_b, env_b = home("b")
    shown = hub("show", rec.ref, "--json", env=env_b)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["sha256"] == rec.sha256
    fetched = home_b / "blobs" / rec.blob
    assert fetched.read_bytes() == blob_bytes and fetched.stat().st_mode & 0o777 == file_mode()
    out = tmp_path / "exported.safetensors"
    assert hub("export", rec.ref, "--format", "hubtool", "--out", out, env=env_b).returncode == 0
    assert out.read_bytes() == blob_bytes
    report = json.loads(hub("verify", "--json", env=env_b).stdout)  # local-only's blob is A's alone
    assert report["missing"] == [local.ref] and report["checked"] == 1 and report["scratch"] == []

    home_c, env_c = home("c")
    composed = hub("compose", "--experts", rec.ref, "--out", tmp_path / "merged", env=env_c)
    assert composed.returncode == 0, composed.stderr
    assert (tmp_path / "merged" / "config.json").is_file()
    assert (home_c / "blobs" / rec.blob).read_bytes() == blob_bytes

    _, env_d = home("d")
    first = hub("pull", rec.ref, env=env_d)
    assert first.returncode == 0 and "Fetched qa@1 from org/qa@" in first.stdout, first.stderr
    again = hub("pull", rec.ref, "--json", env=env_d)
    assert json.loads(again.stdout)["fetched"] is False
    one_line_error(hub("pull", local.ref, env=env_d), local.ref, "never pushed")

    # In-process: Catalog.load on a fresh store, the download (endpoint, token) handed to the catalog; a
    # catalog opened without one knows no network and names the pull that fetches the blob.
    from hubtool.errors import NotFoundError
    from hubtool.hub.pull import hub_download

    with pytest.raises(NotFoundError, match="org/qa@.*hub pull"):
        Catalog(url, blobs=tmp_path / "e" / "blobs").load(rec.ref)
    assert not (tmp_path / "e" / "blobs" / rec.blob).exists()
    cat_e = Catalog(url, blobs=tmp_path / "e" / "blobs", download=hub_download(served.url, ALICE))
    assert cat_e.load(rec.ref).deltas.keys() == cat_a.load(rec.ref).deltas.keys()

    # The server's copy changes under it (bit rot, a bad mirror): refused, nothing placed.
    served_blob, at, said = _rot_target(served.root, rec.sha256)
    original = served_blob.read_bytes()
    served_blob.write_bytes(original[:at] + bytes([original[at] ^ 0xFF]) + original[at + 1 :])
    try:
        home_f, env_f = home("f")
        # hf_xet retries a decode error with back-off for ~220 s (measured) before it gives up; one attempt
        # reaches the same error in ~2 s.
        env_f["HF_XET_CLIENT_RETRY_MAX_ATTEMPTS"] = "1"
        line = one_line_error(hub("export", rec.ref, "--format", "hubtool", "--out", tmp_path / "bad.st",
                                  env=env_f), said, rec.sha256[:12])  # fmt: skip
        assert "Traceback" not in line
        assert not (tmp_path / "bad.st").exists()
        assert not [p for p in (home_f / "blobs").rglob("*") if p.is_file()]  # not even a temp file
        left = json.loads(hub("verify", "--json", env=env_f).stdout)
        assert left["temp"] == left["scratch"] == left["orphans"] == [] and left["remote"] == [rec.ref]
    finally:
        served_blob.write_bytes(original)


def _rot_target(root: Path, sha256: str) -> tuple[Path, int, str]:
    """(file on the server's disk, byte to flip, the word the client's error must hold) for the file with
    this sha256. An LFS blob: its last byte; it arrives whole and our sha256 check refuses it. A Xet file
    (the default client's way): the last stored byte of its own last chunk (a xorb may also hold other
    files' chunks, so "the xorb's last byte" may not be this file's). hf_xet does not check chunk hashes on
    download: an uncompressed chunk's byte reaches our sha256 check ("refused"); in an LZ4 frame the last
    byte is the end mark, so the decode fails inside hf_xet ("the Xet transfer")."""
    from hubtool.hub.xet.xorb import HEADER, SCHEME_NONE, read_xorb

    blob = root / "blobs" / sha256[:2] / sha256
    if blob.is_file():
        return blob, blob.stat().st_size - 1, "refused"
    (claim,) = root.glob(f"repos/*/*/*/xet/sha256/{sha256}.json")
    file_hash = json.loads(claim.read_text())["xetHash"]
    segments = json.loads((root / "xet" / "files" / file_hash[:2] / f"{file_hash}.json").read_text())["segments"]
    xorb, _, end, _ = segments[-1]
    path = root / "xet" / "xorbs" / xorb[:2] / xorb
    with path.open("rb") as f:
        chunk = read_xorb(f).chunks[end - 1]  # segments are [xorb, first chunk, end chunk (exclusive), bytes]
    said = "refused" if chunk.scheme == SCHEME_NONE else "the Xet transfer"
    return path, chunk.offset + HEADER.size + chunk.stored_size - 1, said


def test_pull_of_a_repo_whose_row_is_shared_but_whose_blob_is_elsewhere(served, tmp_path, monkeypatch):
    """`hub pull ORG/REPO` on a shared catalog (one catalog file, two HUB_HOMEs) whose row for the repo's
    expert already exists but whose blob lives in the other home's store: the row is not registered again,
    its blob is downloaded, checked and placed in this home's store (this ended in AttributeError, exit 2,
    while the Hub store forwarded the local store's methods by hand and forgot put_verified)."""
    from hubserver import ALICE, client_env

    from hubtool.hub.push import push_expert

    home_a, home_b = tmp_path / "a", tmp_path / "b"
    url = f"sqlite:///{home_a / 'registry.db'}"
    monkeypatch.setenv("HUB_HOME", str(home_a))
    cat_a = Catalog(url, blobs=home_a / "blobs")
    rec = cat_a.register(_tiny_expert(tmp_path, "shared", seed=3))
    push_expert(rec.ref, "org/shared", endpoint=served.url, token=ALICE, catalog=cat_a)
    env_b = client_env(served, tmp_path / "b-hf", HUB_HOME=str(home_b), HUB_CATALOG=url)

    pulled = hub("pull", "org/shared", "--json", env=env_b)
    assert pulled.returncode == 0, pulled.stderr
    result = json.loads(pulled.stdout)
    assert result["present"] == [rec.ref] and result["registered"] == []
    placed = home_b / "blobs" / rec.blob
    assert placed.read_bytes() == cat_a.blob_path(rec).read_bytes()
    assert placed.stat().st_mode & 0o777 == file_mode()
    assert [r.ref for r in cat_a.list(where="name=shared")] == [rec.ref]  # one row, as before
    assert not [p for p in (home_b / "blobs").rglob(".tmp-*")]
    again = hub("pull", "org/shared", "--json", env=env_b)  # now local: nothing downloaded, nothing changed
    assert again.returncode == 0 and json.loads(again.stdout)["present"] == [rec.ref], again.stderr
