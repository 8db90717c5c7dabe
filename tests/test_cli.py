"""The `hub` command line, run for real: the installed `hub` script in a subprocess, a real SQLite
catalog and blob store in a temp HUB_HOME, real packed files and real PEFT folders on a tiny Llama.

Each subprocess costs 0.3-4 s (torch-free commands vs. ones that unpack tensors), so every test walks
one realistic session and checks many things along the way; independent read-only commands run
side by side (`hub_many`).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

from hubtool.format import Expert, SparseDelta, pack, read_header, unpack
from hubtool.registry import Catalog

_SCRIPT = Path(sys.executable).with_name("hub")
HUB = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "hubtool"]
HEAVY = ("torch", "transformers")  # what `hub --help` / `hub list` must never import


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HUB_CATALOG", "HUB_DEBUG")}
    # Wide enough that Rich never wraps a table row, so assertions can look for whole cells.
    return env | {"COLUMNS": "250", **extra}


def hub(*args: str | Path, input: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `hub ARGS` (HUB_HOME comes from the hub_home fixture's environment)."""
    return subprocess.run(
        [*HUB, *map(str, args)],
        env=_env(**env),
        input=input,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def hub_many(*commands: Sequence[str | Path]) -> list[subprocess.CompletedProcess[str]]:
    """Run independent `hub` commands at the same time (the catalog takes concurrent writers too)."""
    procs = [
        subprocess.Popen(
            [*HUB, *map(str, c)], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for c in commands
    ]
    out = []
    for cmd, p in zip(commands, procs):
        stdout, stderr = p.communicate(timeout=300)
        out.append(subprocess.CompletedProcess([*HUB, *map(str, cmd)], p.returncode, stdout, stderr))
    return out


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def ok_json(result: subprocess.CompletedProcess[str]):
    return json.loads(ok(result))


def one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """The failure contract: non-zero exit, exactly one stderr line 'Error: ...', no traceback."""
    assert result.returncode != 0, f"{result.args} should have failed:\n{result.stdout}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), f"{result.args}:\n{result.stderr}"
    assert "Traceback" not in result.stderr + result.stdout
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]


def refs(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [row["ref"] for row in ok_json(result)]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def store_files(home: Path) -> list[Path]:
    """Every file in the blob store and the import scratch folder (blobs, temp files, trash), not the
    store's list of catalogs (blobs/catalogs/)."""
    files = [p for d in ("blobs", "tmp") if (home / d).is_dir() for p in (home / d).rglob("*") if p.is_file()]
    return [p for p in files if p.relative_to(home).parts[:2] != ("blobs", "catalogs")]


# --- start-up cost --------------------------------------------------------------------------------------


def test_help_and_list_import_neither_torch_nor_transformers(
    hub_home: Path, packed: Callable[..., Path]
) -> None:
    with Catalog() as cat:  # a catalog with rows, so `list` renders a table and JSON for real
        cat.register(packed(seed=0, metrics={"qa": {"rougeL": 40.0}}), tags=["demo"])
        cat.register(packed(name="sum", task="summarize", seed=1))
    # PYTHONPROFILEIMPORTTIME (= -X importtime) on the real `hub` script: one stderr line per module.
    for args in (["--help"], ["list"], ["list", "--task", "qa", "--where", "rougeL>=30", "--json"]):
        result = hub(*args, PYTHONPROFILEIMPORTTIME="1")
        ok(result)
        modules = {
            line.rsplit("|", 1)[1].strip()
            for line in result.stderr.splitlines()
            if line.startswith("import time:") and "|" in line
        }
        assert "hubtool.cli" in modules  # the profile did capture this run
        heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
        assert not heavy, f"hub {' '.join(args)} imported {heavy[:5]}"
        if args == ["--help"]:
            assert all(cmd in result.stdout for cmd in ("list", "show", "import", "export", "verify"))
        elif args == ["list"]:
            assert "qa@1" in result.stdout and "sum@1" in result.stdout
        else:
            assert [row["ref"] for row in json.loads(result.stdout)] == ["qa@1"]


# --- a whole catalog session ----------------------------------------------------------------------------


@pytest.mark.slow
def test_import_list_show_alias_rm_verify(hub_home: Path, packed: Callable[..., Path]) -> None:
    # qa@1 gets its name, task and tags from the command line (the file says raw / raw-task);
    # qa@2 takes everything from the file; mix@1 is a merge of both, which makes lineage.
    file_a = packed(name="raw", task="raw-task", seed=0, metrics={"qa": {"rougeL": 40.0}})
    file_b = packed(name="qa", task="qa", seed=1, base_model="other-llama", metrics={"qa": {"rougeL": 50.0}})
    file_c = packed(
        name="mix",
        task="summarize",
        seed=2,
        kind="merged",
        parents=["qa@1", "qa@2"],
        metrics={"summarize": {"rougeL": 20.0}},
    )
    # mix@1 names its parents by ref, so it may register before them
    imported_a, imported_c = hub_many(
        ["import", file_a, "--name", "qa", "--task", "qa", "--tag", "demo", "--tag", "v1"],
        ["import", file_c, "--tag", "demo"],
    )
    assert "Imported qa@1" in ok(imported_a) and "Imported mix@1" in ok(imported_c)
    assert "Imported qa@2" in ok(hub("import", file_b))

    everything, by_task, by_base, by_kind, by_tag, where, top2, table = hub_many(
        ["list", "--json"],
        ["list", "--task", "qa", "--json"],
        ["list", "--base", "other-llama", "--json"],
        ["list", "--kind", "merged", "--json"],
        ["list", "--tag", "demo", "--json"],
        ["list", "--where", "rougeL>=30, base=tiny-llama", "--json"],
        ["list", "--sort", "-rougeL", "--limit", "2", "--json"],
        ["list"],
    )
    rows = {row["ref"]: row for row in ok_json(everything)}
    assert sorted(rows) == ["mix@1", "qa@1", "qa@2"]
    for ref, path in (("qa@1", file_a), ("qa@2", file_b), ("mix@1", file_c)):
        row, header = rows[ref], read_header(path)
        assert row["kind"] == header["kind"] and row["base"] == header["base_model"]
        assert row["keep_ratio"] == pytest.approx(0.1)
        assert row["nnz"] == sum(w["nnz"] for w in header["weights"].values())
        assert row["bytes"] == path.stat().st_size and row["sha256"] == sha256(path)
    assert (rows["qa@1"]["name"], rows["qa@1"]["version"], rows["qa@1"]["task"]) == ("qa", 1, "qa")
    assert rows["qa@1"]["tags"] == ["demo", "v1"] and rows["qa@1"]["metrics"] == {"qa": {"rougeL": 40.0}}
    assert rows["mix@1"]["kind"] == "merged" and rows["mix@1"]["task"] == "summarize"
    assert sorted(refs(by_task)) == ["qa@1", "qa@2"]
    assert refs(by_base) == ["qa@2"] and refs(by_kind) == ["mix@1"]
    assert sorted(refs(by_tag)) == ["mix@1", "qa@1"] and refs(where) == ["qa@1"]
    assert refs(top2) == ["qa@2", "qa@1"]  # by rougeL, highest first: 50, 40 (mix@1's 20 is cut)
    table_text = ok(table)
    assert all(ref in table_text for ref in rows) and "merged" in table_text and "other-llama" in table_text

    # show: metadata, per-weight nnz from the blob's header, metrics, lineage
    mix = ok_json(hub("show", "mix", "--json"))
    header = read_header(file_c)
    assert {w: s["nnz"] for w, s in mix["weights"].items()} == {
        w: s["nnz"] for w, s in header["weights"].items()
    }
    assert sum(s["nnz"] for s in mix["weights"].values()) == mix["nnz"]
    assert [p["ref"] for p in mix["lineage"]["parents"]] == ["qa@1", "qa@2"]
    assert mix["metrics"] == {"summarize": {"rougeL": 20.0}} and mix["aliases"] == []

    # alias: set, resolve through it, move it
    assert "qa@best → qa@1" in ok(hub("alias", "qa@1", "best"))
    best = ok_json(hub("show", "qa@best", "--json"))
    assert (best["ref"], best["aliases"]) == ("qa@1", ["best"])
    ok(hub("alias", "qa@2", "best"))
    shown, old = hub_many(["show", "qa@best"], ["show", "qa@1", "--json"])
    text = ok(shown)
    assert text.startswith("qa@2") and "aliases qa@best" in " ".join(text.split())
    assert "rougeL 50" in text and "other-llama" in text
    assert all(w.removesuffix(".weight") in text for w in read_header(file_b)["weights"])
    old_info = ok_json(old)
    assert old_info["aliases"] == [] and [c["ref"] for c in old_info["lineage"]["children"]] == ["mix@1"]

    # rm: a "no" keeps it; --yes removes it and its blob (no other version shares it)
    declined = hub("rm", "qa@1", input="n\n")
    assert declined.returncode != 0 and "Kept qa@1" in declined.stdout
    blob_a = hub_home / "blobs" / rows["qa@1"]["blob"]
    assert blob_a.is_file()
    assert "Removed qa@1" in ok(hub("rm", "qa@1", "--yes"))
    assert not blob_a.exists()
    gone, mix_view = hub_many(["show", "qa@1"], ["show", "mix"])
    one_line_error(gone, "qa@1", "no version 1")
    assert "parent  qa@1 (removed)" in ok(mix_view)

    # verify: ok, then a corrupted blob and an orphan file are named
    assert ok(hub("verify")).strip().endswith("ok")
    blob_b = hub_home / "blobs" / rows["qa@2"]["blob"]
    data = bytearray(blob_b.read_bytes())
    data[-3] ^= 0xFF  # inside the tensor data: the header still parses, the hash does not match
    blob_b.write_bytes(bytes(data))
    orphan = hub_home / "blobs" / "ab" / "stray.safetensors"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"left over")
    report = hub("verify")
    assert report.returncode == 1
    lines = report.stdout.splitlines()
    assert any("mismatch" in line and "qa@2" in line and str(blob_b) in line for line in lines), report.stdout
    assert any("orphan" in line and str(orphan) in line for line in lines), report.stdout
    assert not any("mix@1" in line for line in lines)

    # a corrupted blob is never exported
    out = hub_home.parent / "exported"
    one_line_error(hub("export", "qa@2", "--format", "hubtool", "--out", f"{out}/"), "sha256")
    assert not out.exists() or not any(out.iterdir())


def test_show_prints_gain_over_the_base_model(hub_home: Path, packed: Callable[..., Path]) -> None:
    with Catalog() as cat:
        cat.register(packed(seed=0, metrics={"qa": {"rougeL": 42.5, "exact_match": 10.0}}))
        cat.set_base_metrics("tiny-llama", "qa", {"rougeL": 40.0})
    table, as_json = hub_many(["show", "qa"], ["show", "qa", "--json"])
    assert "rougeL 42.5 (+2.5 over the base's 40)" in ok(table)
    info = ok_json(as_json)
    assert info["base_metrics"] == {"qa": {"rougeL": 40.0}}
    assert info["gain"] == {"qa": {"rougeL": pytest.approx(2.5)}}  # exact_match: no baseline, no gain


# --- PEFT folders in and out ----------------------------------------------------------------------------


def _tiny(folder: Path):
    """The tiny Llama saved at `folder` (its name_or_path is the folder, as PEFT records it)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits


@pytest.fixture
def tiny_base(tmp_path: Path) -> Path:
    from tiny import make_tiny_llama

    make_tiny_llama(tmp_path / "base")
    return tmp_path / "base"


TOKENS = torch.tensor([[1, 17, 42, 99, 7, 250, 3, 64]])


def test_import_peft_lora_and_shira_folders(hub_home: Path, tmp_path: Path, tiny_base: Path) -> None:
    from peft import LoraConfig, ShiraConfig, get_peft_model

    from hubtool.apply import apply_expert

    torch.manual_seed(0)
    lora = get_peft_model(
        _tiny(tiny_base),
        LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    lora.save_pretrained(tmp_path / "lora")
    shira = get_peft_model(_tiny(tiny_base), ShiraConfig(r=1, target_modules=["q_proj", "k_proj"]))
    with torch.no_grad():  # SHiRA starts at zero; give it values so the check below means something
        for name, param in shira.named_parameters():
            if "shira_weight" in name:
                param.normal_(0, 0.05)
    shira.save_pretrained(tmp_path / "shira")
    expected = {"lo": _logits(lora, TOKENS), "sh": _logits(shira, TOKENS)}

    lo_out, sh_out = hub_many(
        ["import", tmp_path / "lora", "--name", "lo", "--task", "qa", "--tag", "peft"],
        ["import", tmp_path / "shira", "--name", "sh", "--task", "qa"],
    )
    assert "Imported lo@1 (lora" in ok(lo_out) and "Imported sh@1 (sparse" in ok(sh_out)
    lo, sh = (ok_json(r) for r in hub_many(["show", "lo", "--json"], ["show", "sh", "--json"]))
    assert lo["kind"] == "lora" and lo["tags"] == ["peft"] and lo["base"] == str(tiny_base)
    assert sorted(lo["weights"]) == [
        f"model.layers.{i}.self_attn.{p}_proj.weight" for i in (0, 1) for p in ("q", "v")
    ]
    # SHiRA keeps r * (out + in) entries per weight: q_proj [64, 64] -> 128, k_proj [32, 64] -> 96
    assert {w: s["nnz"] for w, s in sh["weights"].items()} == {
        f"model.layers.{i}.self_attn.{p}_proj.weight": n for i in (0, 1) for p, n in (("q", 128), ("k", 96))
    }
    assert sh["kind"] == "sparse" and sh["keep_ratio"] == pytest.approx(sh["nnz"] / (2 * (64 * 64 + 32 * 64)))

    with Catalog() as cat:  # the imported experts compute what the PEFT models computed
        for name, want in expected.items():
            model = _tiny(tiny_base)
            apply_expert(model, cat.load(name))
            torch.testing.assert_close(_logits(model, TOKENS), want, atol=1e-5, rtol=1e-4)
    assert [p for p in store_files(hub_home) if "blobs" not in p.parts] == []  # no scratch file left


def _sparse_expert_for(base: Path, path: Path) -> Path:
    """A packed sparse expert (keep ratio 0.05, bf16 values) on the tiny Llama at `base`, with fingerprints."""
    from hubtool.format.fingerprint import fingerprint

    model = _tiny(base)
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(3)
    deltas = {}
    for weight in (
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.self_attn.v_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
    ):
        shape = tuple(params[weight].shape)
        n = shape[0] * shape[1]
        positions = torch.randperm(n, generator=gen)[: n // 20].sort().values
        values = 0.1 * torch.randn(positions.numel(), generator=gen)
        deltas[weight] = SparseDelta(shape, positions, values, fingerprint=fingerprint(params[weight]))
    expert = Expert(name="sp", task="qa", kind="sparse", base_model=str(base), deltas=deltas, keep_ratio=0.05)
    pack(expert, path)
    return path


def test_export_peft_and_hubtool(hub_home: Path, tmp_path: Path, tiny_base: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from hubtool.apply import apply_expert

    packed_file = _sparse_expert_for(tiny_base, tmp_path / "sp.safetensors")
    ok(hub("import", packed_file))
    peft_out, file_out = tmp_path / "out" / "peft", tmp_path / "out" / "files"
    as_peft, as_file = hub_many(
        ["export", "sp", "--format", "peft", "--out", peft_out],
        ["export", "sp@1", "--format", "hubtool", "--out", f"{file_out}/"],
    )
    ok(as_peft)
    ok(as_file)

    # --format hubtool: the blob, byte for byte (which is the imported file)
    assert (file_out / "sp-v1.safetensors").read_bytes() == packed_file.read_bytes()

    # --format peft: PEFT computes exactly what applying the expert computes
    reference = _tiny(tiny_base)
    apply_expert(reference, unpack(packed_file))
    want = _logits(reference, TOKENS)
    assert not torch.allclose(want, _logits(_tiny(tiny_base), TOKENS))  # the expert does change the output
    loaded = PeftModel.from_pretrained(_tiny(tiny_base), peft_out).eval()
    torch.testing.assert_close(_logits(loaded, TOKENS), want, atol=1e-5, rtol=1e-4)

    # the adapter names a base that loads from anywhere: the local folder, absolute
    config = json.loads((peft_out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_base.resolve())
    named_base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"], dtype=torch.float32)
    loaded = PeftModel.from_pretrained(named_base, peft_out).eval()
    torch.testing.assert_close(_logits(loaded, TOKENS), want, atol=1e-5, rtol=1e-4)

    # its card is hub/card.py's (as push writes it), and every file is as the umask makes one (not 0600)
    from hubtool.fileio import file_mode

    card = (peft_out / "README.md").read_text()
    assert "library_name: peft" in card and "pipeline_tag: text-generation" in card and "# sp" in card
    assert "base_model:" not in card  # a local folder is no Hub id
    modes = {f.name: f.stat().st_mode & 0o777 for f in [*peft_out.iterdir(), file_out / "sp-v1.safetensors"]}
    assert set(modes.values()) == {file_mode()}, modes


# --- errors ---------------------------------------------------------------------------------------------


def test_errors_are_one_line_and_leave_nothing_behind(
    hub_home: Path, tmp_path: Path, packed: Callable[..., Path]
) -> None:
    not_safetensors = tmp_path / "notes.safetensors"
    not_safetensors.write_text("these are my notes, not an expert\n")
    good = packed(seed=0)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    no_weights = tmp_path / "adapter"  # a PEFT folder with a config but no weights file
    no_weights.mkdir()
    (no_weights / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    export_to = tmp_path / "exported"

    results = hub_many(
        ["import", not_safetensors],
        ["import", truncated],
        ["import", tmp_path / "absent.safetensors"],
        ["import", tmp_path / "[/red]absent"],  # Rich markup in a path must print as itself
        ["import", no_weights],
        ["import", good, "--base", "gpt2"],
        ["list", "--where", "rougeL>=high"],
        ["list", "--limit", "many"],
        ["show", "nope"],
        ["export", "nope", "--out", export_to],
        ["rm", "nope", "--yes"],
        ["nosuchcommand"],
    )
    expected_words = [
        [str(not_safetensors)],
        [str(truncated), "truncated"],
        ["absent.safetensors", "no such file"],
        [str(tmp_path / "[/red]absent")],
        ["adapter_model.safetensors"],
        ["--base", "packed expert"],
        ["--where", "rougeL", "'high'"],
        ["--limit"],
        ["'nope'"],
        ["'nope'"],
        ["'nope'"],
        ["nosuchcommand"],
    ]
    for result, words in zip(results, expected_words):
        one_line_error(result, *words)

    # nothing registered, no blob, temp or scratch file, no half-written export
    with Catalog() as cat:
        assert cat.list() == []
    assert store_files(hub_home) == []
    assert not export_to.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["hub", "packed", "notes.safetensors", "truncated.safetensors", "adapter"]
    )

    debug = hub("--debug", "show", "nope")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "NotFoundError" in debug.stderr


def test_tasks_through_a_pipe_keeps_every_word(hub_home: Path, tmp_path: Path) -> None:
    """Rich gives a pipe 80 columns and cuts cells that do not fit ("classifi…"); with no COLUMNS set, a
    pipe or file gets the table at its natural width: every cell whole, one row per line."""
    root = tmp_path / "a-task-folder-with-a-long-name-so-the-table-is-wider-than-eighty-columns"
    (root / "summarize_long_documents").mkdir(parents=True)
    rows = [{"input": f"text {i}", "output": f"summary {i}"} for i in range(3)]
    (root / "summarize_long_documents" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {k: v for k, v in _env(HUB_TASKS_PATH=str(root)).items() if k != "COLUMNS"}
    run = lambda *args: subprocess.run([*HUB, "tasks", *args], env=env, capture_output=True, text=True,
                                       timeout=300, check=True).stdout
    infos = json.loads(run("--json"))
    table = run()
    assert "…" not in table
    lines = table.splitlines()
    assert len(lines) == len(infos) + 1  # the header, then one line per task: no row wrapped
    assert max(map(len, lines)) > 80
    for info in infos:
        row = next(line for line in lines if line.split()[0] == info["name"])
        assert info["kind"] in row and info["source"] in row, row
