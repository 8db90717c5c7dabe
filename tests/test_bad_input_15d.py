"""Issue 15 §8, catalog files, orphans, temp files, late checks and misleading messages: each ends in one
`Error:` line naming the file, option or field and what is wrong, exit 1 (never exit 2, a traceback or a
hang), and nothing half-written. The real `hub` in a subprocess, real SQLite files, real blobs."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import pytest
from test_cli import hub, ok, one_line_error
from tiny import make_tiny_llama, save_word_tokenizer

from hubtool.registry import Catalog


def failed(result, *words: str) -> str:
    """exit 1, one 'Error:' line holding `words`, no SQLAlchemy or json text leaking through."""
    line = one_line_error(result, *words)
    assert result.returncode == 1, line
    for leak in ("sqlalche.me", "[SQL:", "DatabaseError", "JSONDecodeError", "Traceback"):
        assert leak not in result.stderr + result.stdout, line
    return line


def a_catalog(home: Path, packed, n: int = 30) -> Path:
    path = home / "registry.db"
    with Catalog(f"sqlite:///{path}") as cat:
        for i in range(n):
            cat.register(packed("qa", seed=i), tags=[f"t{i}"])
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the file itself
    conn.close()
    return path


def scramble(path: Path, table: str) -> None:
    """Overwrite the root page of `table` with noise (its 8-byte header kept as a page type SQLite knows
    is not enough: the cells point nowhere): what a torn write or a bad disk leaves."""
    conn = sqlite3.connect(path)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    conn.close()
    data = bytearray(path.read_bytes())
    r = random.Random(root)
    start = (root - 1) * page_size
    data[start + 8 : start + page_size] = bytes(r.randrange(256) for _ in range(page_size - 8))
    path.write_bytes(bytes(data))


# --- catalog files -------------------------------------------------------------------------------------


def test_a_catalog_with_scrambled_pages_names_the_file_and_points_at_verify(hub_home, packed):
    path = a_catalog(hub_home, packed)
    scramble(path, "experts")
    for args in (["list"], ["list", "--json"], ["show", "qa"], ["rm", "qa@3", "--yes"]):
        line = failed(hub(*args), str(path), "damaged", "hub verify")
        assert "malformed" in line
    # verify itself says what is wrong and how to get the rows back
    line = failed(hub("verify"), str(path), "damaged", "backup", ".recover")
    assert "quick_check" in line
    failed(hub("verify", "--repair"), str(path), "damaged")


def test_verify_finds_a_damaged_index_that_reads_still_pass(hub_home, packed):
    """A scrambled index page: list and show still work, and verify used to say "ok"."""
    path = a_catalog(hub_home, packed)
    scramble(path, "ix_experts_sha256")
    ok(hub("list"))
    failed(hub("verify"), str(path), "damaged", "quick_check")


def test_invalid_json_in_a_config_column(hub_home, packed):
    path = a_catalog(hub_home, packed, n=3)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE experts SET config = '{\"lr\": 1e-4, oops' WHERE version = 2")
    conn.commit()
    conn.close()
    for args in (["list"], ["list", "--json"], ["show", "qa@2"], ["list", "--task", "qa"]):
        failed(hub(*args), str(path), "not valid JSON", "hub verify")
    ok(hub("show", "qa"))  # the other rows still read
    report = hub("verify", "--json")
    assert report.returncode == 1, report.stderr
    assert '"experts.config of qa@2' in report.stdout
    text = hub("verify")
    assert text.returncode == 1 and "qa@2" in text.stdout and "not valid JSON" in text.stdout


# --- orphans and temp files ------------------------------------------------------------------------------


def blob_files(home: Path) -> list[Path]:
    return sorted(p for p in (home / "blobs").rglob("*.safetensors")) if (home / "blobs").is_dir() else []


def test_an_import_into_a_memory_catalog_or_a_dropped_table_leaves_no_blob(hub_home, packed):
    src = packed("qa")
    for url in ("sqlite:///:memory:", "sqlite://", "sqlite:///file:x?mode=memory&cache=shared&uri=true"):
        failed(hub("import", src, "--catalog", url), "in-memory", "--catalog")
    assert blob_files(hub_home) == []
    path = a_catalog(hub_home / "other", packed, n=1)  # blobs in hub_home/blobs, a row for qa@1
    before = blob_files(hub_home)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute("DROP TABLE expert_tasks")
    conn.commit()
    conn.close()
    failed(hub("import", packed("qa", seed=7), "--catalog", f"sqlite:///{path}"), str(path), "tables")
    assert blob_files(hub_home) == before  # the new blob went with the failed registration


COLORS = ["red", "blue", "green", "pink"]


def colors(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny Llama base with a word tokenizer, and a task file for it."""
    base, data = tmp_path / "base", tmp_path / "colors.jsonl"
    make_tiny_llama(base)
    things = [f"thing{i}" for i in range(12)]
    save_word_tokenizer(base, ["what", "color", "is", "?", *COLORS, *things])
    rows = [{"input": f"what color is {t} ?", "output": COLORS[i % 4], "options": COLORS} for i, t in enumerate(things)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return base, data


def test_a_train_killed_while_it_writes_its_checkpoint_leaves_a_temp_verify_repairs(hub_home, tmp_path):
    base, data = colors(tmp_path)
    killed = hub("train", "--task", "colors", "--kind", "sparse", "--keep-ratio", "0.1", "--base", base, "--data", data,
                 "--max-steps", "2", "--batch-size", "4", "--max-length", "32", "--eval-limit", "4", "--quiet",
                 HUB_CRASH_AT="write:state.pt")
    assert killed.returncode == -9, killed.stderr
    temps = list((hub_home / "runs").glob("*/checkpoint/.state.pt.*.tmp"))
    assert len(temps) == 1, list((hub_home / "runs").rglob("*"))
    report = hub("verify", "--json")
    assert report.returncode == 1 and str(temps[0]) in json.loads(report.stdout)["scratch"], report.stdout
    assert str(temps[0]) in hub("verify").stdout
    repaired = json.loads(hub("verify", "--repair", "--json").stdout)
    assert {"path": str(temps[0]), "kind": "scratch"} in repaired["removed"] and repaired["ok"], repaired
    assert not temps[0].exists()
    assert list((hub_home / "runs").glob("*/checkpoint"))  # the run's own folders stay
    ok(hub("verify"))


@pytest.mark.slow
def test_a_killed_export_leaves_no_temp_beside_out_after_the_next_export(hub_home, packed, tmp_path):
    ok(hub("import", packed("qa")))
    out = tmp_path / "exports" / "qa.safetensors"
    killed = hub("export", "qa", "--format", "hubtool", "--out", out, HUB_CRASH_AT="write:qa.safetensors")
    assert killed.returncode == -9, killed.stderr
    assert [p.name[:16] for p in out.parent.iterdir()] == [".qa.safetensors."]
    ok(hub("export", "qa", "--format", "hubtool", "--out", out))
    assert [p.name for p in out.parent.iterdir()] == ["qa.safetensors"]

    folder = tmp_path / "exports" / "qa-peft"
    ok(hub("export", "qa", "--out", folder))
    for crash in ("folder:new", "folder-rename:new"):  # killed while writing the new folder, with --force over the old
        killed = hub("export", "qa", "--out", folder, "--force", HUB_CRASH_AT=crash)
        assert killed.returncode == -9, killed.stderr
    assert len(list(folder.parent.iterdir())) > 2
    ok(hub("export", "qa", "--out", folder, "--force"))
    assert sorted(p.name for p in folder.parent.iterdir()) == ["qa-peft", "qa.safetensors"]
    assert (folder / "adapter_config.json").is_file()



def test_rm_of_a_blob_replaced_by_a_folder_changes_nothing_and_verify_reports_trash_folders(hub_home, packed):
    ok(hub("import", packed("qa")))
    (blob,) = blob_files(hub_home)
    blob.unlink()
    (blob / "sub").mkdir(parents=True)
    (blob / "sub" / "f").write_text("not a blob")
    failed(hub("rm", "qa@1", "--yes"), str(blob), "folder", "expected")
    assert "qa@1" in ok(hub("list"))  # the row stays, the folder stays where it was
    assert (blob / "sub" / "f").is_file() and not list(blob.parent.glob(".trash-*"))
    report = json.loads(hub("verify", "--json").stdout)
    assert report["missing"] == ["qa@1"] and report["orphans"] == [], report

    # A `.trash-` folder (what the old `hub rm` left) is reported as one trash entry, removed by --repair and
    # never put back in the blob's place.
    trash = blob.with_name(".trash-" + blob.name)
    blob.rename(trash)
    report = json.loads(hub("verify", "--json").stdout)
    assert report["trash"] == [str(trash)] and report["orphans"] == [], report
    assert str(trash) in hub("verify").stdout
    repaired = json.loads(hub("verify", "--repair", "--json").stdout)
    assert {"path": str(trash), "kind": "trash"} in repaired["removed"], repaired
    assert not trash.exists() and not blob.exists()



# --- checks that come late or never ----------------------------------------------------------------------


def lora_expert(path: Path) -> Path:
    """A LoRA expert of q_proj [16, 32]: not the tiny Llama's shape ([64, 64])."""
    import torch

    from hubtool.format import Expert, LoraDelta, pack

    gen = torch.Generator().manual_seed(0)
    weight = "model.layers.0.self_attn.q_proj.weight"
    delta = LoraDelta((16, 32), torch.randn(2, 32, generator=gen), torch.randn(16, 2, generator=gen), 2.0)
    pack(Expert(name="lq", task="qa", kind="lora", base_model="tiny-llama", deltas={weight: delta}), path)
    return path


@pytest.mark.slow
def test_a_peft_import_is_checked_against_its_base_before_it_is_registered(hub_home, packed, tmp_path):
    base = tmp_path / "base"
    make_tiny_llama(base)
    ok(hub("import", packed("qa")))
    ok(hub("import", lora_expert(tmp_path / "lq.safetensors")))
    shira, lora, bare = tmp_path / "shira", tmp_path / "lora", tmp_path / "bare"
    ok(hub("export", "qa", "--out", shira))
    ok(hub("export", "lq", "--out", lora))
    ok(hub("export", "qa", "--out", bare))
    (bare / "hubtool.json").unlink()  # shapes come from the base alone
    before = ok(hub("list", "--json"))
    for folder in (shira, lora):  # (a SHiRA folder alone holds coordinates, no shapes: they fit the bigger base)
        line = failed(hub("import", folder, "--base", base, "--name", "wrong"), str(base), "shape")
        assert "_proj" in line
    # each spelling of a missing base once, each folder kind once (the check runs before the folder is read)
    for folder, where in zip((shira, lora, bare), ("/nonexistent/base", "./no-such-folder", str(tmp_path / "missing"))):
        failed(hub("import", folder, "--base", where, "--name", "wrong"), f"--base {where}", "no such folder")
    assert ok(hub("list", "--json")) == before  # nothing registered, no blob left
    assert len(blob_files(hub_home)) == 2


# --- messages that mislead ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_unwritable_export_out_is_named_as_out_not_its_temp(hub_home, packed):
    ok(hub("import", packed("qa")))
    for fmt in ("peft", "hubtool"):
        for out in ("/proc/x", "/proc/x/"):
            line = failed(hub("export", "qa", "--format", fmt, "--out", out), f"--out {out}:", "expected")
            assert ".tmp" not in line


@pytest.mark.slow
def test_a_bert_base_leaks_no_transformers_warning_before_the_error(hub_home, packed, tmp_path):
    from transformers import BertConfig, BertModel

    bert = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(bert)
    ok(hub("import", packed("qa")))
    folder = tmp_path / "qa-peft"
    ok(hub("export", "qa", "--out", folder))
    failed(hub("import", folder, "--base", bert, "--name", "qb"), str(bert))  # one line: no "[transformers] ..."
    (folder / "hubtool.json").unlink()  # the shapes come from building the base itself
    failed(hub("import", folder, "--base", bert, "--name", "qb"), "the base model has no weight")


def test_a_header_over_100_mib_is_said_to_be_too_big_not_said_not_to_fit(hub_home, tmp_path):
    import struct

    n = 100 * 2**20 + 1
    big = tmp_path / "big.safetensors"
    with open(big, "wb") as f:  # a sparse file: the header's bytes are all there, zeros
        f.write(struct.pack("<Q", n))
        f.truncate(8 + n + 16)
    line = failed(hub("import", big), str(big), "over safetensors' limit", "100 MiB")
    assert "does not fit" not in line
    short = tmp_path / "short.safetensors"
    short.write_bytes(struct.pack("<Q", 1000) + b"{}")
    failed(hub("import", short), str(short), "does not fit the file")


def test_a_postgres_catalog_whose_table_was_dropped_leaves_no_blob(hub_home, pg_server, packed):
    from sqlalchemy import create_engine, text

    url = pg_server.create_database(migrated=True)
    ok(hub("import", packed("qa"), "--catalog", url))
    before = blob_files(hub_home)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE expert_tags CASCADE"))
    engine.dispose()
    failed(hub("import", packed("qa", seed=3), "--catalog", url, "--tag", "x"), "tables")
    assert blob_files(hub_home) == before
