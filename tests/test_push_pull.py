"""`hub push` / `hub pull` against a real `hub serve` subprocess, with the real huggingface_hub client
(default settings), PEFT and transformers; nothing leaves 127.0.0.1.

The CLI runs as `python -m hubtool` subprocesses with HF_ENDPOINT / HF_TOKEN (or a stored login) in
their environment, as a user would run it; library calls pass endpoint= and token= explicitly (this
process imported huggingface_hub long before any HF_ENDPOINT could be set).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import torch
from hubserver import ALICE, Server, client_env, free_port, write_tokens
from huggingface_hub import hf_hub_download
from test_ui import browser  # noqa: F401  (the Playwright fixture: the browser test below takes it by name)
from tiny import make_tiny_llama, save_word_tokenizer

from hubtool.delta import Expert, FullDelta, LoraDelta, SparseDelta
from hubtool.errors import HubError
from hubtool.format import fingerprint, pack
from hubtool.hub import pull as pull_mod
from hubtool.hub.pull import pull
from hubtool.hub.push import push, push_expert
from hubtool.registry import Catalog

TESTS = Path(__file__).parent
TARGETS = ("q_proj", "k_proj", "v_proj")


# -- fixtures -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    srv = Server(root / "root", write_tokens(root / "tokens.txt"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "tiny"
    model = make_tiny_llama(path)
    save_word_tokenizer(path, ["what", "is", "the", "answer", "yes", "no"])
    return path.resolve(), model


@pytest.fixture
def cat(hub_home):
    return Catalog(blobs=hub_home / "blobs")


@pytest.fixture
def other(tmp_path):
    """A second catalog, as on another machine (its own database and blob store)."""
    return Catalog(f"sqlite:///{tmp_path / 'other' / 'registry.db'}", blobs=tmp_path / "other" / "blobs")


def make_expert(model, base_path, name, task, *, kind="sparse", seed=0, keep=0.1, **meta) -> Expert:
    """An expert of the tiny Llama's q/k/v projections with the base weights' fingerprints."""
    gen = torch.Generator().manual_seed(seed)
    deltas = {}
    for wname, w in model.named_parameters():
        if not (wname.endswith(".weight") and any(t in wname for t in TARGETS)):
            continue
        shape, fp = tuple(w.shape), fingerprint(w.detach())
        n = shape[0] * shape[1]
        if kind == "sparse":
            idx = torch.randperm(n, generator=gen)[: int(keep * n)].sort().values
            deltas[wname] = SparseDelta(shape, idx, torch.randn(idx.numel(), generator=gen) * 0.1, fp)
        elif kind == "lora":
            A, B = torch.randn(2, shape[1], generator=gen) * 0.1, torch.randn(shape[0], 2, generator=gen) * 0.1
            deltas[wname] = LoraDelta(shape, A, B, 2.0, fp)
        else:
            deltas[wname] = FullDelta(shape, torch.randn(shape, generator=gen) * 0.01, fp)
    meta.setdefault("base_model", str(base_path))
    return Expert(name=name, task=task, kind=kind, deltas=deltas, keep_ratio=keep if kind == "sparse" else None,
                  value_dtype="float32", targets="q_proj|k_proj|v_proj", **meta)  # fmt: skip


def register(cat, tmp_path, expert, **kw):
    folder = tmp_path / "packed"
    folder.mkdir(exist_ok=True)
    path = folder / f"{expert.name}-{len(list(folder.iterdir()))}.safetensors"
    pack(expert, path)
    return cat.register(path, **kw)


def hub(*args: str, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hubtool", *args],
        env={**env, "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cli_env(server, tmp_path, home: Path, token: str | None = ALICE, **extra) -> dict:
    return client_env(server, tmp_path, token, HUB_HOME=str(home), **extra)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The failure contract: non-zero exit, stderr is exactly one 'Error: ...' line."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def read_repo_file(server, repo, filename, tmp_path, revision=None) -> bytes:
    path = hf_hub_download(repo, filename, revision=revision, endpoint=server.url, token=ALICE,
                           cache_dir=tmp_path / "dl-cache")  # fmt: skip
    return Path(path).read_bytes()


# -- push, pull, again --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_push_pull_round_trip_keeps_the_record(server, base, cat, tmp_path, hub_home):
    """Push a merged expert (lineage, metrics, config, tags) with the CLI, push it again (no new commit),
    pull it into a second catalog byte-identical with its record, pull again (nothing new)."""
    base_path, model = base
    register(cat, tmp_path, make_expert(model, base_path, "qa-a", "squad", seed=1), metrics={"rougeL": 30.0})
    register(cat, tmp_path, make_expert(model, base_path, "qa-b", "squad", seed=2), metrics={"rougeL": 20.0})
    from hubtool.merge.compose import compose

    merged = compose(experts="qa-a,qa-b", as_expert="qa-merged", catalog=cat).record
    cat.set_metrics(merged.ref, "squad", {"rougeL": 27.5, "exact_match": 11.0})
    env = cli_env(server, tmp_path, hub_home)

    first = hub("push", merged.ref, "--repo", "org/qa-merged", env=env)
    assert first.returncode == 0, first.stderr
    assert "Pushed" in first.stdout and "org/qa-merged" in first.stdout
    api = server.api()
    files = api.list_repo_files("org/qa-merged")
    assert files == [".gitattributes", "README.md", "adapter_config.json", "adapter_model.safetensors",
                     "hubtool.json", "qa-merged.safetensors"]  # fmt: skip
    commits = [c.commit_id for c in api.list_repo_commits("org/qa-merged")]
    rec = Catalog(blobs=hub_home / "blobs").get(merged.ref)
    assert (rec.hub_repo, rec.hub_commit) == ("org/qa-merged", commits[0])
    packed = read_repo_file(server, "org/qa-merged", "qa-merged.safetensors", tmp_path)
    assert packed == cat.blob_path(rec).read_bytes()

    record = json.loads(read_repo_file(server, "org/qa-merged", "hubtool.json", tmp_path))
    assert record["sha256"] == rec.sha256 and record["file"] == "qa-merged.safetensors"
    assert record["metrics"] == {"squad": {"exact_match": 11.0, "rougeL": 27.5}}
    assert record["category"] == "qa" and record["value_dtype"] == "float32" and record["kind"] == "merged"
    assert {p["ref"] for p in record["lineage"]["parents"]} == {"qa-a@1", "qa-b@1"}
    assert record["peft"] == "shira" and record["format"] == "hubtool-peft-export"
    assert not {"blob", "hub_repo", "hub_commit", "aliases"} & set(record)
    card = read_repo_file(server, "org/qa-merged", "README.md", tmp_path).decode()
    for needle in ("library_name: peft", "- hubtool", "- squad", "- qa", "- merged",
                   "model-index", "type: rougeL", "value: 27.5", "qa-a@1", 'PeftModel.from_pretrained(base, "org/qa-merged")'):  # fmt: skip
        assert needle in card, needle
    assert "base_model" not in card.split("---")[1]  # a local folder is no Hub id

    # Again: byte-identical files, so the client skips them all and makes no commit.
    # (This time with --token and no HF_TOKEN: a new process, another string hash seed, same bytes.)
    again = hub("push", merged.ref, "--repo", "org/qa-merged", "--token", ALICE,
                env=cli_env(server, tmp_path, hub_home, token=None))  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "nothing to commit" in again.stdout
    assert [c.commit_id for c in api.list_repo_commits("org/qa-merged")] == commits
    # The same expert into another repo: the record is the same bytes (no push time in it).
    push_expert(merged.ref, "org/qa-merged-2", endpoint=server.url, token=ALICE, catalog=cat)
    assert read_repo_file(server, "org/qa-merged-2", "hubtool.json", tmp_path) == read_repo_file(
        server, "org/qa-merged", "hubtool.json", tmp_path
    )

    # Pull into another machine's catalog.
    home2 = tmp_path / "home2"
    env2 = cli_env(server, tmp_path, home2)
    pulled = hub("pull", "org/qa-merged", env=env2)
    assert pulled.returncode == 0, pulled.stderr
    assert "Pulled qa-merged@1" in pulled.stdout
    other = Catalog(blobs=home2 / "blobs", url=f"sqlite:///{home2 / 'registry.db'}")
    got = other.get("qa-merged")
    assert other.blob_path(got).read_bytes() == packed
    for key in ("name", "kind", "task", "tasks", "tags", "metrics", "config", "description", "sha256", "nnz",
                "base_model", "base_revision", "keep_ratio", "value_dtype", "targets"):  # fmt: skip
        assert getattr(got, key) == getattr(rec, key), key
    assert (got.hub_repo, got.hub_commit) == ("org/qa-merged", commits[0])
    assert [p["ref"] for p in other.lineage(got.ref)["parents"]] == ["qa-a@1", "qa-b@1"]
    assert [p["weight"] for p in other.lineage(got.ref)["parents"]] == [
        p["weight"] for p in cat.lineage(rec.ref)["parents"]
    ]
    assert other.category_of("squad") == "qa"

    repull = hub("pull", f"org/qa-merged@{commits[0]}", env=env2)
    assert repull.returncode == 0, repull.stderr
    assert "already in the catalog" in repull.stdout
    assert [r.ref for r in other.list()] == ["qa-merged@1"]

    # The token is nowhere: not in any output, not in either catalog file.
    for result in (first, again, pulled, repull):
        assert ALICE not in result.stdout + result.stderr
    for db in (hub_home / "registry.db", home2 / "registry.db"):
        assert ALICE.encode() not in db.read_bytes()
        with sqlite3.connect(db) as conn:
            dump = "\n".join(conn.iterdump())
        assert ALICE not in dump


def test_peft_from_pretrained_from_the_server_matches_local_apply(server, base, cat, tmp_path, hub_home):
    """A sparse (SHiRA) and a LoRA expert pushed, loaded by PeftModel.from_pretrained(base, "org/x") over
    HF_ENDPOINT: same logits as hubtool's own apply_expert. A full expert has no PEFT files."""
    from hubtool.apply import apply_expert

    base_path, model = base
    sparse = register(cat, tmp_path, make_expert(model, base_path, "peft-sparse", "squad", seed=3))
    lora = register(cat, tmp_path, make_expert(model, base_path, "peft-lora", "squad", kind="lora", seed=4))
    full = register(cat, tmp_path, make_expert(model, base_path, "peft-full", "squad", kind="full", seed=5))
    for rec in (sparse, lora):
        push_expert(rec.ref, f"org/{rec.name}", endpoint=server.url, token=ALICE, catalog=cat)
    result = push_expert(full.ref, "org/peft-full", endpoint=server.url, token=ALICE, catalog=cat)
    assert result.notes and "full weight delta" in result.notes[0]
    assert "adapter_config.json" not in server.api().list_repo_files("org/peft-full")
    card = read_repo_file(server, "org/peft-full", "README.md", tmp_path).decode()
    assert "No PEFT adapter in this repo" in card and "library_name: hubtool" in card

    ids = torch.tensor([[1, 5, 7, 9, 4, 2]])
    script = textwrap.dedent(
        """
        import json, sys
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base, ids = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
        out = {}
        for repo in sys.argv[3:]:
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), repo).eval()
            with torch.no_grad():
                out[repo] = model(ids).logits.tolist()
        print(json.dumps(out))
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(base_path), json.dumps(ids.tolist()), "org/peft-sparse", "org/peft-lora"],
        env=client_env(server, tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    logits = json.loads(run.stdout.strip().splitlines()[-1])
    from transformers import AutoModelForCausalLM

    for rec in (sparse, lora):
        local = AutoModelForCausalLM.from_pretrained(base_path).eval()
        apply_expert(local, cat.load(rec.ref))
        with torch.no_grad():
            want = local(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(base_path).eval()
        with torch.no_grad():
            assert not torch.allclose(plain(ids).logits, want, atol=1e-4)  # the expert does change something
        torch.testing.assert_close(torch.tensor(logits[f"org/{rec.name}"]), want, atol=2e-5, rtol=1e-5)

    # A downloaded repo folder is also a PEFT folder `hub import` restores exactly (hubtool.json is its sidecar).
    from huggingface_hub import snapshot_download

    from hubtool.interop.peft import import_peft

    folder = snapshot_download("org/peft-sparse", endpoint=server.url, token=ALICE, cache_dir=tmp_path / "snap")
    restored, original = import_peft(folder), cat.load(sparse.ref)
    assert restored.name == "peft-sparse" and set(restored.deltas) == set(original.deltas)
    for name, delta in original.deltas.items():
        assert torch.equal(restored.deltas[name].indices, delta.indices)
        assert torch.equal(restored.deltas[name].values, delta.values)
        assert restored.deltas[name].fingerprint == delta.fingerprint


@pytest.mark.slow
def test_compose_push_then_from_pretrained(server, base, cat, tmp_path, hub_home):
    """`hub compose --out DIR --push REPO`: the folder goes up as it is (card: merge, recipe), loads with
    transformers over HF_ENDPOINT, and pushing the folder again changes nothing."""
    base_path, model = base
    register(cat, tmp_path, make_expert(model, base_path, "c-a", "squad", seed=6))
    register(cat, tmp_path, make_expert(model, base_path, "c-b", "xsum", seed=7))
    out = tmp_path / "composed"
    env = cli_env(server, tmp_path, hub_home)
    result = hub("compose", "--experts", "c-a,c-b", "--out", str(out), "--push", "org/composed", env=env)
    assert result.returncode == 0, result.stderr
    assert "Pushed to" in result.stdout and ALICE not in result.stdout + result.stderr
    api = server.api()
    files = set(api.list_repo_files("org/composed"))
    assert {"README.md", "config.json", "hubtool_recipe.yml", "hubtool.json", "tokenizer.json"} <= files
    assert "base_model_relation: merge" in read_repo_file(server, "org/composed", "README.md", tmp_path).decode()

    script = textwrap.dedent(
        """
        import json, sys
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from safetensors.torch import load_file
        import glob, torch
        model = AutoModelForCausalLM.from_pretrained("org/composed")
        tok = AutoTokenizer.from_pretrained("org/composed")
        local = {}
        for f in glob.glob(sys.argv[1] + "/*.safetensors"):
            local.update(load_file(f))
        state = model.state_dict()
        same = all(torch.equal(state[k], v) for k, v in local.items())
        print(json.dumps({"same": same, "n": len(local), "ids": tok("what is the answer")["input_ids"]}))
        """
    )
    run = subprocess.run([sys.executable, "-c", script, str(out)], env=client_env(server, tmp_path),
                         capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert loaded["same"] and loaded["n"] > 0 and loaded["ids"] == [4, 5, 6, 7]

    commits = len(api.list_repo_commits("org/composed"))
    again = push(out, repo="org/composed", endpoint=server.url, token=ALICE)
    assert not again.changed and len(api.list_repo_commits("org/composed")) == commits
    with pytest.raises(HubError, match="org/composed@.* holds a composed model"):
        pull("org/composed", endpoint=server.url, token=ALICE, catalog=cat)


def test_library_push_and_pull(server, base, cat, other, tmp_path, hub_home):
    base_path, model = base
    register(cat, tmp_path, make_expert(model, base_path, "lib-qa", "squad", seed=8), metrics={"rougeL": 25.0})
    register(cat, tmp_path, make_expert(model, base_path, "lib-qa", "squad", seed=9), metrics={"rougeL": 26.0})
    register(cat, tmp_path, make_expert(model, base_path, "lib-sum", "xsum", seed=10), tags=["news"])
    register(cat, tmp_path, make_expert(model, base_path, "lib-other", "my-notes", seed=11))

    result = push(repo="org/lib", library=True, tasks="qa,xsum", endpoint=server.url, token=ALICE, catalog=cat)
    assert result.experts == ["lib-qa@2", "lib-sum@1"]  # the latest version of each expert of the tasks
    api = server.api()
    assert api.list_repo_files("org/lib") == [".gitattributes", "README.md", "experts/lib-qa-v2.safetensors",
                                              "experts/lib-sum-v1.safetensors", "hubtool_library.json"]  # fmt: skip
    index = json.loads(read_repo_file(server, "org/lib", "hubtool_library.json", tmp_path))
    assert [e["ref"] for e in index["experts"]] == ["lib-qa@2", "lib-sum@1"]
    assert index["experts"][0]["metrics"] == {"squad": {"rougeL": 26.0}}
    card = read_repo_file(server, "org/lib", "README.md", tmp_path).decode()
    assert "lib-qa@2" in card and "lib-sum@1" in card and "expert-library" in card
    assert cat.get("lib-sum").hub_repo == "org/lib"

    # The CLI form, with --experts, adds one to the library; the file of an expert left out goes.
    env = cli_env(server, tmp_path, hub_home)
    res = hub("push", "--library", "org/lib", "--experts", "lib-qa@2,lib-other", env=env)
    assert res.returncode == 0, res.stderr
    assert api.list_repo_files("org/lib") == [".gitattributes", "README.md", "experts/lib-other-v1.safetensors",
                                              "experts/lib-qa-v2.safetensors", "hubtool_library.json"]  # fmt: skip
    res = hub("push", "--library", "org/lib", "--tasks", "qa,xsum", env=env)
    assert res.returncode == 0, res.stderr

    one = pull("org/lib", expert="lib-sum", endpoint=server.url, token=ALICE, catalog=other)
    assert [r.ref for r in one.registered] == ["lib-sum@1"] and other.get("lib-sum").tags == ["news"]
    env2 = cli_env(server, tmp_path, tmp_path / "other", HUB_CATALOG=f"sqlite:///{tmp_path / 'other' / 'registry.db'}")
    res = hub("pull", "org/lib", env=env2)
    assert res.returncode == 0, res.stderr
    assert "Pulled lib-qa@1" in res.stdout and "lib-qa@2 there" in res.stdout and "lib-sum@1 is already" in res.stdout
    assert sorted(r.ref for r in other.list()) == ["lib-qa@1", "lib-sum@1"]
    assert other.get("lib-qa").metrics == {"squad": {"rougeL": 26.0}}
    with pytest.raises(HubError, match="no expert nope"):
        pull("org/lib", expert="nope", endpoint=server.url, token=ALICE, catalog=other)
    with pytest.raises(HubError, match=r"no expert lib-qa@1 \(it holds lib-qa@2, lib-sum@1\)"):
        pull("org/lib", expert="lib-qa@1", endpoint=server.url, token=ALICE, catalog=other)
    assert pull("org/lib", expert="lib-qa@2", endpoint=server.url, token=ALICE, catalog=other).present


def test_stale_files_go_and_base_models_are_checked(server, base, cat, other, tmp_path, hub_home):
    """A full expert pushed over a sparse one removes the PEFT files; base models that cannot match this
    machine's give warnings at pull; the embedded base's card names its Hub id."""
    base_path, model = base
    sparse = register(cat, tmp_path, make_expert(model, base_path, "swap", "squad", seed=12))
    full = register(cat, tmp_path, make_expert(model, base_path, "swap", "squad", kind="full", seed=13))
    push_expert(sparse.ref, "org/swap", endpoint=server.url, token=ALICE, catalog=cat)
    assert "adapter_model.safetensors" in server.api().list_repo_files("org/swap")
    result = push_expert(full.ref, "org/swap", endpoint=server.url, token=ALICE, catalog=cat)
    assert result.deleted == ["adapter_config.json", "adapter_model.safetensors"]
    assert server.api().list_repo_files("org/swap") == [".gitattributes", "README.md", "hubtool.json",
                                                         "swap.safetensors"]  # fmt: skip

    gone = register(cat, tmp_path, make_expert(model, base_path, "elsewhere", "squad", seed=14,
                                               base_model="/nonexistent/tiny-base"))  # fmt: skip
    embedded = register(cat, tmp_path, make_expert(model, base_path, "smol", "squad", seed=15, base_model="smollm2-135m",
                                                   base_revision="gguf-Q4_1-sha256:aaaaaaaaaaaa"))  # fmt: skip
    push_expert(gone.ref, "org/elsewhere", endpoint=server.url, token=ALICE, catalog=cat)
    push_expert(embedded.ref, "org/smol", endpoint=server.url, token=ALICE, catalog=cat)
    card = read_repo_file(server, "org/smol", "README.md", tmp_path).decode()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "base_model_relation: adapter" in card
    config = json.loads(read_repo_file(server, "org/smol", "adapter_config.json", tmp_path))
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"

    with pytest.warns(UserWarning, match="not a folder on this machine"):
        res = pull("org/elsewhere", endpoint=server.url, token=ALICE, catalog=other)
    assert [r.ref for r in res.registered] == ["elsewhere@1"]
    mine = make_expert(model, base_path, "smol-local", "squad", seed=16, base_model="smollm2-135m",
                       base_revision="gguf-Q4_1-sha256:bbbbbbbbbbbb")  # fmt: skip
    register(other, tmp_path, mine)
    with pytest.warns(UserWarning, match="revision gguf-Q4_1-sha256:aaaaaaaaaaaa.*bbbbbbbbbbbb"):
        res = pull("org/smol", endpoint=server.url, token=ALICE, catalog=other)
    assert res.warnings and [r.ref for r in res.registered] == ["smol@1"]


# -- errors ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_errors_are_one_line(server, base, cat, tmp_path, hub_home):
    base_path, model = base
    rec = register(cat, tmp_path, make_expert(model, base_path, "err-qa", "squad", seed=20))
    push_expert(rec.ref, "org/err-qa", endpoint=server.url, token=ALICE, catalog=cat)
    api = server.api()
    env = cli_env(server, tmp_path, hub_home)

    # Writes without a token (nor a stored login): 401, one line.
    anon = cli_env(server, tmp_path, hub_home, token=None)
    line = one_error_line(hub("push", rec.ref, "--repo", "org/anon", env=anon))
    assert "401" in line and "no token" in line and "HF_TOKEN" in line
    # A wrong token, given with --token: refused, and not echoed.
    wrong = "tok-wrong-secret-123456"
    result = hub("pull", "org/err-qa", "--token", wrong, env=anon)
    line = one_error_line(result)
    assert "401" in line and "refused" in line
    outputs = [result.stdout + result.stderr]

    line = one_error_line(hub("pull", "org/missing", env=env))
    assert "no repo org/missing" in line
    line = one_error_line(hub("pull", "org/err-qa@nope", env=env))
    assert "no revision 'nope'" in line
    closed = f"http://127.0.0.1:{free_port()}"
    line = one_error_line(hub("pull", "org/err-qa", "--endpoint", closed, env=env))
    assert "cannot reach" in line and closed in line

    api.create_repo("org/plain")
    api.upload_file(path_or_fileobj=b"just text\n", path_in_repo="notes.txt", repo_id="org/plain")
    line = one_error_line(hub("pull", "org/plain", env=env))
    assert "holds no hubtool expert" in line

    # Tampered: another file under the same name, the old hubtool.json kept. Nothing is registered.
    other_file = tmp_path / "other.safetensors"
    pack(make_expert(model, base_path, "err-qa", "squad", seed=21), other_file)
    api.upload_file(path_or_fileobj=str(other_file), path_in_repo="err-qa.safetensors", repo_id="org/err-qa")
    home2 = tmp_path / "home-tampered"
    line = one_error_line(hub("pull", "org/err-qa", env=cli_env(server, tmp_path, home2)))
    assert "checksum mismatch" in line and "err-qa.safetensors" in line
    assert Catalog(f"sqlite:///{home2 / 'registry.db'}", blobs=home2 / "blobs").list() == []

    # Bad repo ids: refused before any work (no catalog is even created).
    home3 = tmp_path / "home-bad"
    for args in (("push", "err-qa", "--repo", "org/../x"), ("push", "err-qa", "--repo", "a/b/c"),
                 ("pull", "bad--id/x"), ("pull", "org/x@.."), ("compose", "--experts", "err-qa", "--out",
                 str(tmp_path / "never"), "--push", "org/x y")):  # fmt: skip
        result = hub(*args, env=cli_env(server, tmp_path, home3))
        assert "expected" in one_error_line(result)
        outputs.append(result.stdout + result.stderr)
    assert not home3.exists() and not (tmp_path / "never").exists()
    with pytest.raises(HubError, match="--repo"):
        push_expert(rec.ref, "-bad", endpoint=server.url, token=ALICE, catalog=cat)
    assert not any(ALICE in text or wrong in text for text in outputs)


@pytest.mark.slow
def test_hf_hub_offline_reaches_a_loopback_hub_only(server, base, cat, tmp_path, hub_home, monkeypatch):
    """Air-gapped setups export HF_HUB_OFFLINE=1. A `hub serve` on loopback is not the network: push and pull
    reach it (by 127.0.0.1 and by localhost) with the flag set; any other endpoint is refused with one line
    before a connection is tried, as before."""
    from huggingface_hub import constants

    base_path, model = base
    rec = register(cat, tmp_path, make_expert(model, base_path, "offline-qa", "squad", seed=40))
    env = cli_env(server, tmp_path, hub_home, HF_HUB_OFFLINE="1")
    pushed = hub("push", rec.ref, "--repo", "org/offline-qa", env=env)
    assert pushed.returncode == 0, pushed.stderr
    home2 = tmp_path / "home-offline"
    by_name = server.url.replace("127.0.0.1", "localhost")
    pulled = hub("pull", "org/offline-qa", env=cli_env(server, tmp_path, home2, HF_HUB_OFFLINE="1",
                                                        HF_ENDPOINT=by_name))  # fmt: skip
    assert pulled.returncode == 0 and "Pulled offline-qa@1" in pulled.stdout, pulled.stderr
    with Catalog(f"sqlite:///{home2 / 'registry.db'}", blobs=home2 / "blobs") as cat2:
        assert cat2.load("offline-qa").nnz == rec.nnz

    # Not loopback (TEST-NET-1, RFC 5737: routed nowhere): refused by the flag, not by a timeout.
    remote = "http://192.0.2.1:8910"
    for args in (("push", rec.ref, "--repo", "org/x", "--endpoint", remote), ("pull", "org/x", "--endpoint", remote)):
        line = one_error_line(hub(*args, env=env, timeout=60))
        assert f"HF_HUB_OFFLINE is set, so {remote} is not contacted" in line, line

    # In this process too (the library: huggingface_hub read the flag at import), and the flag is back after.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    push_expert(rec.ref, "org/offline-lib", endpoint=server.url, token=ALICE, catalog=cat)
    assert constants.HF_HUB_OFFLINE is True
    with pytest.raises(HubError, match="HF_HUB_OFFLINE is set"):
        push_expert(rec.ref, "org/x", endpoint=remote, token=ALICE, catalog=cat)


def test_stored_login_and_private_repos(server, base, cat, tmp_path, hub_home):
    """No HF_TOKEN: the client's stored login (HF_HOME/token, what `hf auth login` writes) is used."""
    base_path, model = base
    rec = register(cat, tmp_path, make_expert(model, base_path, "private-qa", "squad", seed=30))
    result = push_expert(rec.ref, "org/private-qa", private=True, endpoint=server.url, token=ALICE, catalog=cat)
    assert server.api().model_info(result.repo_id).private
    mine = push_expert(rec.ref, endpoint=server.url, token=ALICE, catalog=cat)  # no repo: NAME, own namespace
    assert mine.repo_id == "alice/private-qa" and cat.get(rec.ref).hub_repo == "alice/private-qa"
    env = cli_env(server, tmp_path, tmp_path / "home-login", token=None)
    (tmp_path / "hf-home").mkdir(exist_ok=True)
    (tmp_path / "hf-home" / "token").write_text(ALICE)
    res = hub("pull", "org/private-qa", "--json", env=env)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["registered"] == ["private-qa@1"] and ALICE not in res.stdout + res.stderr
    (tmp_path / "hf-home" / "token").unlink()
    line = one_error_line(hub("pull", "org/private-qa", env=cli_env(server, tmp_path, tmp_path / "home-x", token=None)))
    assert "without a token" in line


def test_cli_stays_light_and_documents_the_commands():
    code = (
        "import sys, hubtool.cli; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'huggingface_hub', 'peft'}))"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    out = hub("push", "--help", env=dict(__import__("os").environ)).stdout
    for flag in ("--repo", "--private", "--revision", "--message", "--endpoint", "--token", "--library", "--tasks",
                 "--experts"):  # fmt: skip
        assert flag in out, flag
    out = hub("pull", "--help", env=dict(__import__("os").environ)).stdout
    assert "--expert" in out and "--endpoint" in out and "REVISION" in out
    assert callable(__import__("hubtool").push) and callable(__import__("hubtool").pull)
    assert pull_mod.pull is __import__("hubtool").pull


@pytest.mark.browser
def test_in_a_browser_the_pushed_composed_model_has_its_page(server, base, cat, tmp_path, hub_home, browser):  # noqa: F811
    """What `make demo` ends with: a composed model folder pushed by `hub push DIR` (through Xet), then its
    repo page opened in headless chromium after logging in: the card, its base model, the merge relation, the
    files with their LFS badge, and a download of config.json through /resolve."""
    base_path, model = base
    register(cat, tmp_path, make_expert(model, base_path, "p-a", "squad", seed=8))
    register(cat, tmp_path, make_expert(model, base_path, "p-b", "xsum", seed=9))
    out = tmp_path / "merged"
    env = cli_env(server, tmp_path, hub_home)
    composed = hub("compose", "--experts", "p-a,p-b", "--out", str(out), env=env)
    assert composed.returncode == 0, composed.stderr
    pushed = hub("push", str(out), "--repo", "demo/merged", env=env)
    assert pushed.returncode == 0 and "Pushed" in pushed.stdout, pushed.stderr
    page = browser
    page.goto(server.url + "/_/login")
    page.fill("#token", ALICE)
    page.click("#login-submit")
    page.goto(server.url + "/demo/merged")
    assert page.inner_text("h1").strip().endswith("demo/merged")
    assert "merge" in page.inner_text("#card").lower()
    page.get_by_role("link", name="Files", exact=True).click()
    page.wait_for_url(server.url + "/demo/merged/tree/main")
    names = page.locator("#files tbody td:first-child").all_inner_texts()
    assert {"README.md", "config.json", "hubtool_recipe.yml"} <= {n.strip() for n in names}
    weights = page.locator("xpath=//tr[td/code[contains(., '.safetensors')]]").first.inner_text()
    assert "LFS" in weights
    link = page.locator("xpath=//tr[td/code='config.json']//a[@class='download']")
    with page.expect_download() as download:
        link.click()
    assert json.loads(Path(download.value.path()).read_text()) == json.loads((out / "config.json").read_text())
