"""Holes found adversarially, each closed and kept closed (issue 6, sections 0 and 0b).

Everything here is real: the Makefile's own demo recipe under make's -eo pipefail, the installed `hub`
script in a subprocess, real tiny transformers models, real PEFT folders, a real SQLite catalog edited
with sqlite3, real packed files. Nothing is mocked; fakes are limited to programs on PATH (apt-get, id)
that stand in for a machine without root or without network.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).with_name("hub")
HUB = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "hubtool"]
# A prompt answered "y" would run the custom code: stdin says yes, so any prompt fails the test visibly.
YES = "y\n" * 4


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HUB_CATALOG", "HUB_DEBUG", "LD_PRELOAD")}
    return env | {"COLUMNS": "250", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **extra}


def hub_many(
    *commands: Sequence[str | Path], stdin: str = YES, **env: str
) -> list[subprocess.CompletedProcess[str]]:
    """Run independent `hub` commands side by side (HUB_HOME comes from the hub_home fixture)."""
    procs = [
        subprocess.Popen(
            [*HUB, *map(str, c)],
            env=_env(**env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for c in commands
    ]
    out = []
    for cmd, p in zip(commands, procs):
        stdout, stderr = p.communicate(stdin, timeout=300)
        out.append(subprocess.CompletedProcess([*HUB, *map(str, cmd)], p.returncode, stdout, stderr))
    return out


def hub(*args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    return hub_many(args, **env)[0]


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """A user error: exit 1, nothing on stdout, exactly one `Error: ...` line naming every needle."""
    what = f"{result.args}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 1, what
    assert "Do you wish to run the custom code" not in result.stdout + result.stderr, what
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, what
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in: {errors[0]}"
    return errors[0]


# --- 0. make demo without tcmalloc ----------------------------------------------------------------------

MAKE = shutil.which("make")
needs_make = pytest.mark.skipif(MAKE is None, reason="GNU make is not installed")
# Stands for docs/demo.sh: shows what the demo would have been started with.
SHOW_PRELOAD = 'DEMO=echo "demo ran with LD_PRELOAD=[$${LD_PRELOAD-unset}]"'


def _bin(folder: Path, fakes: dict[str, str]) -> Path:
    """A PATH folder holding only what the recipe needs (bash, ls, head, id) plus fake programs."""
    folder.mkdir()
    for tool in ("bash", "ls", "head", "id"):
        (folder / tool).symlink_to(shutil.which(tool))
    for name, script in fakes.items():
        (folder / name).unlink(missing_ok=True)
        (folder / name).write_text("#!/bin/sh\n" + script)
        (folder / name).chmod(0o755)
    return folder


def _demo(tmp_path: Path, glob: str, fakes: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The Makefile's real `demo` recipe (make's SHELLFLAGS -eo pipefail), with the install step taken
    as done (STAMP points at a file make is told is old), the library looked for at `glob` and the demo
    script replaced by an echo."""
    stamp = tmp_path / "stamp"
    path = _bin(tmp_path / "bin", fakes)
    return subprocess.run(
        [
            MAKE,
            "--no-print-directory",
            "demo",
            f"STAMP={stamp}",
            "-o",
            str(stamp),
            f"TCMALLOC_GLOB={glob}",
            SHOW_PRELOAD,
        ],
        cwd=REPO,
        env={"PATH": str(path), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


FAKE_ROOT = {"id": 'if [ "$1" = -u ]; then echo 0; else echo "uid=0(root)"; fi\n'}
FAKE_USER = {"id": 'if [ "$1" = -u ]; then echo 1000; else echo "uid=1000(user)"; fi\n'}


@needs_make
@pytest.mark.parametrize(
    "machine",
    ["root, no apt-get", "root, apt-get offline", "not root, apt-get present"],
)
def test_make_demo_runs_without_tcmalloc(tmp_path: Path, machine: str) -> None:
    apt_log = tmp_path / "apt-get.log"
    fakes = {
        "root, no apt-get": FAKE_ROOT,
        # what apt-get does offline: complain and exit 100
        "root, apt-get offline": FAKE_ROOT
        | {"apt-get": f'echo "$@" >> {apt_log}; echo "E: offline" >&2; exit 100\n'},
        "not root, apt-get present": FAKE_USER | {"apt-get": f'echo "$@" >> {apt_log}; exit 0\n'},
    }[machine]
    result = _demo(tmp_path, str(tmp_path / "nowhere" / "*" / "libtcmalloc_minimal.so.4"), fakes)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo ran with LD_PRELOAD=[unset]" in result.stdout  # not even an empty LD_PRELOAD
    assert "tcmalloc not found" in result.stderr
    # apt-get is tried only as root, and only when it exists
    assert apt_log.exists() == (machine == "root, apt-get offline")
    if apt_log.exists():
        assert "install" in apt_log.read_text() and "libtcmalloc-minimal4" in apt_log.read_text()


@needs_make
def test_make_demo_preloads_tcmalloc_when_found(tmp_path: Path) -> None:
    lib = tmp_path / "lib" / "x86_64-linux-gnu" / "libtcmalloc_minimal.so.4"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"")
    apt_log = tmp_path / "apt-get.log"
    fakes = FAKE_ROOT | {"apt-get": f"echo called >> {apt_log}; exit 100\n"}
    result = _demo(tmp_path, str(tmp_path / "lib" / "*" / "libtcmalloc_minimal.so.4"), fakes)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"demo ran with LD_PRELOAD=[{lib}]" in result.stdout
    assert not apt_log.exists()  # found: nothing to install


@needs_make
def test_make_demo_defaults_are_the_real_lookup_and_script(tmp_path: Path) -> None:
    stamp = tmp_path / "stamp"
    result = subprocess.run(
        [MAKE, "--no-print-directory", "-n", "demo", f"STAMP={stamp}", "-o", str(stamp)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "{ ls /usr/lib/*/libtcmalloc_minimal.so.4 2>/dev/null || true; } | head -n 1" in result.stdout
    assert result.stdout.rstrip().endswith("bash docs/demo.sh")


# --- 0b. a model's own code never runs unless asked -----------------------------------------------------

CUSTOM_CODE = """\
from pathlib import Path

Path({marker!r}).write_text("custom code ran")  # what an attacker's modeling file would do on import

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


class EvilConfig(LlamaConfig):
    model_type = "evil"


class EvilForCausalLM(LlamaForCausalLM):
    config_class = EvilConfig


class EvilTokenizer(PreTrainedTokenizerFast):
    pass
"""
WORDS = ["what", "color", "is", "?", "red", "blue", "green", "pink", *(f"thing{i}" for i in range(24))]


def _custom_code_base(folder: Path, marker: Path, model_type: str) -> Path:
    """A tiny Llama (with a word tokenizer) whose config.json and tokenizer_config.json name custom code
    through auto_map; that code writes `marker` when imported. model_type "llama" is an architecture
    transformers knows (it can load without the code), anything else is not."""
    from tiny import make_tiny_llama, save_word_tokenizer

    make_tiny_llama(folder)
    save_word_tokenizer(folder, WORDS)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    (folder / "evil.py").write_text(CUSTOM_CODE.format(marker=str(marker)))
    return folder


def _color_task(path: Path, n: int = 24) -> Path:
    colors = ["red", "blue", "green", "pink"]
    rows = [{"input": f"what color is thing{i} ?", "output": colors[i % 4]} for i in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _shira_folder(out: Path, base_model_name_or_path: Path) -> Path:
    """A real PEFT SHiRA adapter (no hubtool.json, so importing it reads the base model's config)."""
    import torch
    from peft import ShiraConfig, get_peft_model
    from tiny import make_tiny_llama

    torch.manual_seed(0)
    model = get_peft_model(make_tiny_llama(), ShiraConfig(r=1, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "shira_weight" in name:
                param.normal_(0, 0.05)
    model.save_pretrained(out)
    config = json.loads((out / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(base_model_name_or_path)
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


@pytest.mark.slow
def test_custom_model_code_never_runs_without_trust_remote_code(hub_home: Path, tmp_path: Path) -> None:
    markers = {kind: tmp_path / f"MARKER-{kind}" for kind in ("unknown", "known", "trusted")}
    unknown = _custom_code_base(tmp_path / "evil-unknown", markers["unknown"], "evil")
    known = _custom_code_base(tmp_path / "evil-known", markers["known"], "llama")
    trusted = _custom_code_base(tmp_path / "evil-trusted", markers["trusted"], "evil")
    task = _color_task(tmp_path / "colors.jsonl", n=80)  # enough for a carved test split
    shira_unknown = _shira_folder(tmp_path / "shira-unknown", unknown)
    shira_trusted = _shira_folder(tmp_path / "shira-trusted", trusted)
    hf_modules = tmp_path / "hf-modules"  # where transformers copies code it is allowed to run

    imp, ev, tr, ev_known, imp_trusted = hub_many(
        ["import", shira_unknown, "--name", "sh", "--task", "colors"],
        ["eval", "--base", unknown, "--task", task, "--limit", "2", "--max-new-tokens", "2"],
        ["train", "--base", unknown, "--task", task, "--max-steps", "1", "--eval-limit", "0", "-q"],
        ["eval", "--base", known, "--task", task, "--limit", "2", "--max-new-tokens", "2", "--json"],
        ["import", shira_trusted, "--name", "trusted", "--task", "colors", "--trust-remote-code"],
        HF_MODULES_CACHE=str(hf_modules),
    )
    for result in (imp, ev, tr):
        one_line_error(result, str(unknown), "--trust-remote-code")
    assert not markers["unknown"].exists()
    assert not (hub_home / "runs").exists()  # train stopped before any training
    # An architecture transformers knows loads with its own classes; the folder's code stays unread.
    assert json.loads(ok(ev_known))["n"] == 2
    assert not markers["known"].exists()
    # The flag reaches transformers: asked explicitly, the folder's code runs (and the import works).
    assert "Imported trusted@1" in ok(imp_trusted)
    assert markers["trusted"].read_text() == "custom code ran"


def test_library_calls_default_to_no_custom_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hubtool.errors import HubError
    from hubtool.interop.peft import import_peft
    from hubtool.models import base_weight_shapes, load_base, load_tokenizer

    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hf-modules"))
    marker = tmp_path / "MARKER"
    base = _custom_code_base(tmp_path / "evil", marker, "evil")
    shira = _shira_folder(tmp_path / "shira", base)
    for call in (
        lambda: load_base(str(base)),
        lambda: base_weight_shapes(str(base)),
        lambda: import_peft(shira),
        lambda: load_base(str(base), trust_remote_code=None),  # None is "no", never "ask"
    ):
        with pytest.raises(HubError, match="trust-remote-code") as err:
            call()
        assert "\n" not in str(err.value)
    # The tokenizer file itself is plain tokenizers JSON: it loads without the code its auto_map names.
    assert type(load_tokenizer(str(base))).__name__ != "EvilTokenizer"
    assert not marker.exists()


def test_every_transformers_load_in_hubtool_passes_trust_remote_code() -> None:
    """A source check backing the tests above: no from_pretrained / from_config call in hubtool/ leaves
    trust_remote_code to transformers (whose default for a folder with auto_map is to ask)."""
    import ast

    missing = []
    for path in sorted((REPO / "hubtool").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value
            owner_name = getattr(owner, "id", getattr(owner, "attr", ""))
            is_hf = node.func.attr in ("from_pretrained", "from_config") and owner_name.startswith("Auto")
            if is_hf and "trust_remote_code" not in {k.arg for k in node.keywords}:
                missing.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not missing, f"transformers loads without trust_remote_code=: {missing}"


# --- 0b. names never become paths outside HUB_HOME ------------------------------------------------------


def test_train_refuses_names_that_are_paths_before_any_work(hub_home: Path, tmp_path: Path) -> None:
    from tiny import make_tiny_llama, save_word_tokenizer

    base = tmp_path / "base"
    make_tiny_llama(base)
    save_word_tokenizer(base, WORDS)
    task = _color_task(tmp_path / "data" / "colors.jsonl")
    bad_folder = tmp_path / "my task"  # a task folder whose name is not an expert name
    _color_task(bad_folder / "train.jsonl")
    common = ["--base", base, "--max-steps", "1", "--eval-limit", "0", "-q"]
    results = hub_many(
        ["train", "--task", task, "--name", "../../evil", *common],
        ["train", "--task", task, "--name", str(tmp_path / "abs-evil"), *common],
        ["train", "--task", task, "--name", "a/b", *common],
        ["train", "--task", bad_folder, *common],
        ["train", "--task", task, "--method", "lora", "--alpha", "nan", *common],
    )
    one_line_error(results[0], "--name", "'../../evil'", "not a path")
    one_line_error(results[1], "--name", str(tmp_path / "abs-evil"))
    one_line_error(results[2], "--name", "'a/b'")
    one_line_error(results[3], "--task", str(bad_folder), "'my task-sparse'", "--name")
    one_line_error(results[4], "alpha", "nan")
    assert not (hub_home / "runs").exists()  # refused before the model loaded or a folder was made
    # the old code wrote tmp_path/evil/ (HUB_HOME is tmp_path/hub) and tmp_path/abs-evil/
    assert list(tmp_path.rglob("*evil*")) == []


def test_expert_name_comes_from_the_tasks_base_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hubtool.errors import HubError
    from hubtool.train import expert_name

    folder = tmp_path / "deep" / "colors"
    _color_task(folder / "train.jsonl")
    task_file = _color_task(tmp_path / "deep" / "colors.v2.jsonl")
    assert expert_name(str(folder), "sparse") == "colors-sparse"
    assert expert_name(str(folder) + "/", "lora") == "colors-lora"
    assert expert_name(str(task_file), "sparse") == "colors.v2-sparse"
    assert expert_name("boolq", "block-sparse") == "boolq-block-sparse"
    monkeypatch.chdir(folder)
    assert expert_name(".", "sparse") == "colors-sparse"
    assert expert_name("../colors", "sparse") == "colors-sparse"
    assert expert_name("x", "sparse", "given_name-1.0") == "given_name-1.0"
    for name in ("../../evil", "/abs/dir", "a/b", "..", ".hidden", "", "x" * 129, "a\\b", "a\nb"):
        with pytest.raises(HubError, match="--name"):
            expert_name("boolq", "sparse", name)
    with pytest.raises(HubError, match="--task"):
        expert_name("/", "sparse")  # no base name at all


def test_train_on_a_task_path_writes_only_under_hub_home(hub_home: Path, tmp_path: Path) -> None:
    """--task /abs/path/colors.jsonl used to become runs//abs/path/colors.jsonl-sparse: outside HUB_HOME."""
    from tiny import make_tiny_llama, save_word_tokenizer

    from hubtool.train import train

    base = tmp_path / "base"
    make_tiny_llama(base)
    save_word_tokenizer(base, WORDS)
    task = _color_task(tmp_path / "outside" / "colors.jsonl", n=32)
    result = train(
        str(task), base=str(base), max_steps=1, batch_size=4, eval_limit=0, max_length=16, quiet=True
    )
    assert result.record.name == "colors-sparse"
    run_dir = hub_home / "runs" / "colors-sparse"
    assert result.out_dir == run_dir and result.path == run_dir / "colors-sparse.safetensors"
    assert result.path.is_file()
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == ["colors.jsonl"]


# --- 0b. hub rm deletes only blobs inside the store -----------------------------------------------------


def _set_blob(hub_home: Path, name: str, location: str) -> None:
    with sqlite3.connect(hub_home / "registry.db") as db:
        assert db.execute("UPDATE experts SET blob = ? WHERE name = ?", (location, name)).rowcount == 1


def test_rm_never_follows_an_edited_blob_location(hub_home: Path, tmp_path: Path, packed) -> None:
    from hubtool.registry import Catalog

    with Catalog() as cat:
        records = {name: cat.register(packed(name, seed=seed)) for seed, name in enumerate("abcde")}
    b = records["b"]
    victim = tmp_path / "victim.txt"  # HUB_HOME is tmp_path/hub, the store tmp_path/hub/blobs
    victim.write_text("not a blob")
    absolute = tmp_path / "absolute-victim.txt"
    absolute.write_text("not a blob either")
    b_blob = hub_home / "blobs" / b.blob
    _set_blob(hub_home, "a", "../../victim.txt")
    _set_blob(hub_home, "c", str(absolute))
    _set_blob(hub_home, "d", b.blob)  # a real blob address, but another expert's
    _set_blob(hub_home, "e", b.blob.upper())

    rm_a, rm_c, rm_d, rm_e, show_a, export_a, verify = hub_many(
        ["rm", "a", "-y"],
        ["rm", "c", "-y"],
        ["rm", "d", "-y"],
        ["rm", "e", "-y"],
        ["show", "a"],
        ["export", "a", "--format", "hubtool", "--out", tmp_path / "out.safetensors"],
        ["verify"],
    )
    one_line_error(rm_a, "'../../victim.txt'", "ab/<sha256>.safetensors")
    one_line_error(rm_c, repr(str(absolute)))
    one_line_error(rm_d, repr(b.blob), "row's sha256")
    one_line_error(rm_e, repr(b.blob.upper()))
    for result in (show_a, export_a, verify):
        one_line_error(result, "'../../victim.txt'")
    assert victim.read_text() == "not a blob" and absolute.read_text() == "not a blob either"
    assert b_blob.is_file() and not (tmp_path / "out.safetensors").exists()
    with Catalog() as cat:  # the refused rows are all still there
        assert {r.name for r in cat.list()} == {"a", "b", "c", "d", "e"}
    ok(hub("rm", "b", "-y"))  # an untouched row still removes normally, blob and all
    assert not b_blob.exists()


def test_blob_store_accepts_only_content_addresses(tmp_path: Path) -> None:
    from hubtool.errors import HubError
    from hubtool.registry.blobs import LocalBlobStore, blob_location, check_location

    sha = "ab" + "0123456789abcdef" * 3 + "0123456789abcd"
    assert len(sha) == 64
    store = LocalBlobStore(tmp_path / "blobs")
    assert store.path(blob_location(sha)) == tmp_path / "blobs" / "ab" / f"{sha}.safetensors"
    assert check_location(blob_location(sha), sha) == blob_location(sha)
    bad = [
        "../../file",
        "/etc/passwd",
        f"cd/{sha}.safetensors",  # prefix is not the sha's
        f"ab/{sha}.safetensors/../../../x",
        f"ab/{sha[:-1]}.safetensors",
        f"ab/{sha.upper()}.safetensors",
        f"ab/{sha}.bin",
        f"ab//{sha}.safetensors",
        f"./ab/{sha}.safetensors",
        f"ab/{sha}.safetensors\n",
        "",
    ]
    for location in bad:
        for call in (store.path, store.trash, lambda loc: store.restore(tmp_path / "t", loc)):
            with pytest.raises(HubError, match="blob location"):
                call(location)
    with pytest.raises(HubError, match="row's sha256"):
        check_location(blob_location(sha), "ff" + sha[2:])


# --- 0b. non-finite LoRA scales -------------------------------------------------------------------------


def _lora_expert(scale: float):
    import torch

    from hubtool.format import Expert, LoraDelta

    gen = torch.Generator().manual_seed(0)
    delta = LoraDelta((16, 32), torch.randn(2, 32, generator=gen), torch.randn(16, 2, generator=gen), scale)
    return Expert(
        name="lo",
        task="qa",
        kind="lora",
        base_model="tiny-llama",
        deltas={"model.layers.0.self_attn.q_proj.weight": delta},
    )


def _scale_file(path: Path, literal: bytes) -> Path:
    """A packed LoRA expert whose header says "scale": <literal>, written byte by byte: pack() itself
    refuses a non-finite scale, so only a hand-made (or hand-edited) file can hold one."""
    from hubtool.format import pack

    good = path.with_name("good.safetensors")
    pack(_lora_expert(0.5), good)
    data = good.read_bytes()
    n = int.from_bytes(data[:8], "little")
    # the weights table is JSON inside a JSON string, hence the escaped quotes
    head = data[8 : 8 + n].replace(b'\\"scale\\":0.5', b'\\"scale\\":' + literal)
    assert head != data[8 : 8 + n]
    path.write_bytes(len(head).to_bytes(8, "little") + head + data[8 + n :])
    return path


# NaN / Infinity are literals Python's json reads; 1e999 parses as inf; a 400-digit integer overflows a float.
NON_FINITE = [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"9" * 400]


@pytest.mark.parametrize("literal", NON_FINITE, ids=["nan", "inf", "-inf", "1e999", "huge-int"])
def test_packed_file_with_a_non_finite_scale_is_refused_at_read_time(tmp_path: Path, literal: bytes) -> None:
    from hubtool.errors import FormatError
    from hubtool.format import read_header, unpack

    path = _scale_file(tmp_path / "lo.safetensors", literal)
    field = r"__metadata__\.weights\[model\.layers\.0\.self_attn\.q_proj\.weight\]\.scale"
    for read in (read_header, unpack, lambda p: unpack(p.read_bytes())):
        with pytest.raises(FormatError, match=field + ": expected a finite number") as err:
            read(path)
        assert "\n" not in str(err.value)
    with pytest.raises(FormatError, match=str(path)):
        read_header(path)
    with pytest.raises(FormatError, match=str(path)):
        unpack(path)
    good = read_header(tmp_path / "good.safetensors")  # the same file with its real scale reads fine
    assert good["weights"]["model.layers.0.self_attn.q_proj.weight"]["scale"] == 0.5


@pytest.mark.slow
def test_non_finite_lora_alpha_is_refused_on_import(hub_home: Path, tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from tiny import make_tiny_llama

    base = tmp_path / "base"
    make_tiny_llama(base)
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, trust_remote_code=False)
    lora = get_peft_model(
        model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False)
    )
    lora.save_pretrained(tmp_path / "good")
    cases = {
        "nan": {"lora_alpha": math.nan},
        "inf": {"lora_alpha": math.inf},
        "neg-inf": {"lora_alpha": -math.inf},
        "string-nan": {"lora_alpha": "nan"},
        "pattern": {"alpha_pattern": {"q_proj": math.nan}},
    }
    folders = {}
    for label, change in cases.items():
        folder = folders[label] = tmp_path / label
        shutil.copytree(tmp_path / "good", folder)
        config = json.loads((folder / "adapter_config.json").read_text()) | change
        (folder / "adapter_config.json").write_text(json.dumps(config))  # writes NaN / Infinity literals
    packed_nan = _scale_file(tmp_path / "nan.safetensors", b"NaN")
    results = hub_many(
        *(["import", folder, "--name", label, "--task", "qa"] for label, folder in folders.items()),
        ["import", packed_nan],
        ["import", tmp_path / "good", "--name", "good", "--task", "qa"],
    )
    *refused, from_file, good = results
    for (label, folder), result in zip(folders.items(), refused, strict=True):
        field = "alpha_pattern['q_proj']" if label == "pattern" else "lora_alpha"
        one_line_error(result, str(folder / "adapter_config.json"), field, "expected a finite number")
    one_line_error(from_file, str(packed_nan), "scale", "finite")
    assert "Imported good@1 (lora" in ok(good)  # the same folder with a finite alpha imports
    listed = json.loads(ok(hub("list", "--json")))
    assert [r["name"] for r in listed] == ["good"]


def test_adapter_config_refuses_a_non_finite_alpha() -> None:
    from hubtool.errors import HubError
    from hubtool.sparse.config import AdapterConfig

    for alpha in (math.nan, math.inf, -math.inf):
        with pytest.raises(HubError, match="alpha: expected a finite number"):
            AdapterConfig(method="lora", alpha=alpha)
    assert AdapterConfig(method="lora", alpha=32.0).alpha == 32.0


# -- issue 9: no code execution from data (a scan of the source) -------------------------------------

_PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}
# What turns bytes into objects by running their code (`pickle.dumps` to build a hostile test file, or
# `except pickle.UnpicklingError`, is fine).
_UNPICKLERS = {"load", "loads", "Unpickler", "open"}


def _unsafe_calls(path: Path) -> list[str]:
    """What in one Python file could run code that came with data: torch.load without weights_only=True,
    pickle-family loads (pickle/dill/marshal/joblib .load/.loads/Unpickler, shelve.open), eval/exec on
    anything, compile/__import__ of a computed value, yaml.load/unsafe_load/full_load
    without a safe loader, numpy.load(allow_pickle=True), trust_remote_code=True written as a literal."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []

    label = path.relative_to(REPO) if path.is_relative_to(REPO) else path.name

    def where(node) -> str:
        return f"{label}:{node.lineno}"

    def keyword(call, name):
        return next((k.value for k in call.keywords if k.arg == name), None)

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _PICKLE_MODULES:
            for alias in node.names:
                if alias.name in _UNPICKLERS:
                    found.append(f"{where(node)}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in ("eval", "exec"):
                found.append(f"{where(node)}: {func.id}(...)")
            if (
                isinstance(func, ast.Name)
                and func.id in ("compile", "__import__")
                and not all(isinstance(a, ast.Constant) for a in node.args[:1])
            ):
                found.append(f"{where(node)}: {func.id}(...) of a computed value")
            if not isinstance(func, ast.Attribute):
                continue
            owner = func.value.id if isinstance(func.value, ast.Name) else None
            if owner in _PICKLE_MODULES and func.attr in _UNPICKLERS:
                found.append(f"{where(node)}: {owner}.{func.attr}(...)")
            if owner == "torch" and func.attr == "load":
                value = keyword(node, "weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    found.append(f"{where(node)}: torch.load without weights_only=True")
            if owner == "yaml" and func.attr in (
                "load",
                "load_all",
                "unsafe_load",
                "full_load",
                "unsafe_load_all",
            ):
                loader = keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
                name = getattr(loader, "attr", getattr(loader, "id", ""))
                if func.attr.startswith(("unsafe", "full")) or name not in ("SafeLoader", "CSafeLoader"):
                    found.append(f"{where(node)}: yaml.{func.attr} without a safe loader")
            if owner in ("np", "numpy") and func.attr == "load":
                value = keyword(node, "allow_pickle")
                if isinstance(value, ast.Constant) and value.value is True:
                    found.append(f"{where(node)}: numpy.load(allow_pickle=True)")
            value = keyword(node, "trust_remote_code")
            if isinstance(value, ast.Constant) and value.value is True:
                found.append(f"{where(node)}: trust_remote_code=True")
    return found


def test_source_has_no_code_execution_from_data() -> None:
    """hubtool/ and benchmarks/ (tests/ too, except this file, which names the patterns, and tests that
    check trust_remote_code is refused unless the user passes it)."""
    files = [*sorted((REPO / "hubtool").rglob("*.py")), *sorted((REPO / "benchmarks").rglob("*.py")),
             *sorted((REPO / "tests").rglob("*.py"))]  # fmt: skip
    assert len(files) > 50
    problems = []
    for path in files:
        if path.name == "test_security.py":
            continue
        problems += [
            p for p in _unsafe_calls(path) if not (path.parent.name == "tests" and "trust_remote_code" in p)
        ]
    assert not problems, "\n".join(problems)


def test_the_source_scan_finds_what_it_looks_for(tmp_path: Path) -> None:
    """The scanner itself, on a file holding each bad pattern once (and their safe forms, which pass)."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "pickle.loads(b)\nfrom dill import loads\nimport torch, yaml, numpy as np\n"
        "torch.load('x')\ntorch.load('x', weights_only=False)\nyaml.load(s)\nyaml.load(s, Loader=yaml.Loader)\n"
        "yaml.unsafe_load(s)\neval(s)\nexec(s)\nnp.load('x', allow_pickle=True)\n"
        "m.from_pretrained('x', trust_remote_code=True)\n"
        # safe forms
        "torch.load('x', weights_only=True)\nyaml.load(s, Loader=yaml.SafeLoader)\nyaml.safe_load(s)\n"
        "model.eval()\nnp.load('x')\nimport pickle\npickle.dumps(1)\n__import__('os')\n"
    )
    found = _unsafe_calls(bad)
    assert len(found) == 11 and all(f.startswith("bad.py:") for f in found), "\n".join(found)
    assert sorted(int(f.split(":")[1]) for f in found) == [1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12]


# -- issue 9: hub serve's tokens: constant-time checks, failed-auth rate limit -------------------------


def test_token_check_compares_every_entry_with_equal_lengths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The time of a check does not depend on which entry matches, or on the length of the guess: every
    entry is compared, always as two 32-byte digests (the real hmac.compare_digest, watched)."""
    import hmac

    from hubtool.hub.server import auth

    path = tmp_path / "tokens.txt"
    path.write_text("".join(f"user{i} token-{i:04d}-{'x' * i}\n" for i in range(10)))
    store = auth.TokenStore(path)
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def watched(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", watched)
    for guess, user in (("token-0000-", "user0"), (f"token-0009-{'x' * 9}", "user9"), ("nope" * 300, None)):
        calls.clear()
        assert store.user_for(guess) == user
        assert calls == [(32, 32)] * 10


def test_failed_auth_is_rate_limited_per_client(tmp_path: Path) -> None:
    """After --auth-burst failures a client gets 429 + Retry-After for any credentials, the right ones too
    (guessing cannot go faster than --auth-rate); requests without credentials are not affected; after
    Retry-After seconds the right token works again. No token appears in the log."""
    from hubserver import ALICE, Server, write_tokens

    srv = Server(
        tmp_path / "root", write_tokens(tmp_path / "tokens.txt"), "--auth-burst", "3", "--auth-rate", "1"
    )
    wrong = "tok-wrong-guess-777777"
    try:
        assert srv.raw("GET", "/api/whoami-v2")[0] == 200
        for _ in range(3):
            status, headers, body = srv.raw("GET", "/api/whoami-v2", token=wrong)
            assert status == 401 and headers["x-error-code"] == "Unauthorized"
        for token in (wrong, ALICE):
            status, headers, body = srv.raw("GET", "/api/whoami-v2", token=token)
            assert status == 429, body
            assert 1 <= int(headers["retry-after"]) <= 2 and "error" in json.loads(body)
        assert srv.raw("GET", "/api/models", token=None)[0] == 401  # no credentials: the usual answer
        time.sleep(int(headers["retry-after"]) + 0.2)
        assert srv.raw("GET", "/api/whoami-v2")[0] == 200
    finally:
        srv.stop()
    log = srv.log.read_text()
    assert "failed authentication from 127.0.0.1" in log and " 429 " in log
    assert wrong not in log and ALICE not in log


# -- issue 9: tokens are never written anywhere ------------------------------------------------------


@pytest.mark.slow
def test_tokens_never_reach_logs_errors_catalogs_cards_or_records(hub_home: Path, tmp_path: Path) -> None:
    """Push and pull with a token (HF_TOKEN, and --token), a push with a wrong token (refused), then grep
    every file under the tmp dir (both HUB_HOMEs with their SQLite catalogs and blob stores, the server's
    root and log, the clients' HF_HOME and caches; not the token file itself), every stdout/stderr, and
    the catalog rows dumped with sqlite3."""
    from conftest import write_sparse_expert
    from hubserver import ALICE, Server, client_env, write_tokens

    from hubtool.registry import Catalog

    srv = Server(tmp_path / "root", write_tokens(tmp_path / "tokens.txt"))
    wrong = "tok-WRONG-secret-4242424242"
    results = []
    try:
        packed = write_sparse_expert(tmp_path / "src" / "tokqa.safetensors", name="tokqa", task="qa", seed=3)
        Catalog(blobs=hub_home / "blobs").register(packed)
        env = client_env(srv, tmp_path, ALICE, HUB_HOME=str(hub_home))
        env_no_token = client_env(srv, tmp_path, None, HUB_HOME=str(hub_home))

        def run_all(*commands: tuple[list[str], dict]) -> list[subprocess.CompletedProcess[str]]:
            """Side by side (each `hub` start-up imports torch: seconds)."""
            procs = [subprocess.Popen([*HUB, *args], env={**e, "COLUMNS": "250"}, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for args, e in commands]  # fmt: skip
            out = []
            for (args, _), p in zip(commands, procs):
                stdout, stderr = p.communicate(timeout=300)
                out.append(subprocess.CompletedProcess(args, p.returncode, stdout, stderr))
            results.extend(out)
            return out

        good_a, good_b, bad = run_all(
            (["push", "tokqa@1", "--repo", "alice/tok-a"], env),
            (["push", "tokqa@1", "--repo", "alice/tok-b", "--token", ALICE], env_no_token),
            (["push", "tokqa@1", "--repo", "alice/tok-c", "--token", wrong], env_no_token),
        )
        assert good_a.returncode == 0 and good_b.returncode == 0, good_a.stderr + good_b.stderr
        home2, home3 = tmp_path / "home2", tmp_path / "home3"
        pulled_a, pulled_b, bad_pull = run_all(
            (["pull", "alice/tok-a"], {**env, "HUB_HOME": str(home2)}),
            (["pull", "alice/tok-b", "--token", ALICE], {**env_no_token, "HUB_HOME": str(home3)}),
            (["pull", "alice/tok-a"], {**env, "HF_TOKEN": wrong, "HUB_HOME": str(tmp_path / "home4")}),
        )
        assert pulled_a.returncode == 0 and pulled_b.returncode == 0, pulled_a.stderr + pulled_b.stderr
        for failed in (bad, bad_pull):
            assert failed.returncode == 1, (failed.stdout, failed.stderr)
            assert failed.stderr.startswith("Error: ") and len(failed.stderr.strip().splitlines()) == 1
        for home in (home2, home3):
            assert len(Catalog(url=f"sqlite:///{home / 'registry.db'}", blobs=home / "blobs").list()) == 1
    finally:
        srv.stop()
    secrets = [ALICE, wrong, "tok-bob-9876543210"]
    needles = [s.encode() for s in secrets] + [s.encode("utf-16-le") for s in secrets]
    for result in results:
        for secret in secrets:
            assert secret not in result.stdout + result.stderr, result.args
    scanned = 0
    for path in sorted(tmp_path.rglob("*")):
        if path.is_file() and path.name != "tokens.txt":
            data = path.read_bytes()
            scanned += 1
            assert not any(n in data for n in needles), f"a token is in {path}"
    assert scanned > 20 and srv.log.is_file() and (home2 / "registry.db").is_file()
    for db in (hub_home / "registry.db", home2 / "registry.db", home3 / "registry.db"):
        with sqlite3.connect(db) as conn:
            dump = "\n".join(conn.iterdump())
        assert not any(s in dump for s in secrets)


# -- issue 9: names and paths from a repo never write outside HUB_HOME -------------------------------


def test_pull_refuses_records_and_file_lists_naming_paths_outside(hub_home: Path, tmp_path: Path) -> None:
    """`hub pull` of repos whose hubtool.json / hubtool_library.json names `../../x`, absolute paths, NUL or
    very long names, and of a repo whose file list itself holds `../../x` (its commit edited on the
    server's disk, as a hostile server could answer): each is one clean HubError before any download of
    an expert file, and nothing appears outside HUB_HOME."""
    from conftest import write_sparse_expert
    from hubserver import ALICE, Server, write_tokens

    from hubtool.errors import HubError
    from hubtool.hub.pull import pull
    from hubtool.registry import Catalog

    packed = write_sparse_expert(tmp_path / "src" / "qa.safetensors", name="qa", task="qa", seed=5)
    sha = hashlib.sha256(packed.read_bytes()).hexdigest()
    good = {"name": "qa", "task": "qa", "file": "qa.safetensors", "sha256": sha}
    srv = Server(tmp_path / "root", write_tokens(tmp_path / "tokens.txt"))
    try:
        api = srv.api()
        cat = Catalog(blobs=hub_home / "blobs")
        cases = {
            "dotdot": {"file": "../../escape7f3a.safetensors"},
            "dotdot-inside": {"file": "a/../../../escape7f3a.safetensors"},
            "absolute": {"file": str(tmp_path / "escape7f3a.safetensors")},
            "nul": {"file": "qa.safetensors\x00.txt"},
            "long": {"file": "x" * 5000 + ".safetensors"},
            "name-path": {"name": "../../escape7f3a"},
            "name-absolute": {"name": "/tmp/escape7f3a"},
            "name-long": {"name": "n" * 300},
        }
        for index, (label, change) in enumerate(cases.items()):
            record = {k: v for k, v in {**good, **change}.items() if v is not None}
            repo = f"alice/evil-{index}"
            api.create_repo(repo)
            api.upload_file(path_or_fileobj=packed.read_bytes(), path_in_repo="qa.safetensors", repo_id=repo)
            name = "hubtool_library.json" if index % 2 else "hubtool.json"
            doc = {"experts": [record]} if index % 2 else record
            api.upload_file(path_or_fileobj=json.dumps(doc).encode(), path_in_repo=name, repo_id=repo)
            with pytest.raises(HubError) as err:
                pull(repo, endpoint=srv.url, token=ALICE, catalog=cat)
            message = str(err.value)
            assert len(message.splitlines()) == 1 and len(message) < 700, (label, message)
            assert "file" in message or "name" in message, (label, message)
        # The file list itself: the server's commit names ../../escape7f3a.safetensors (edited on disk, server
        # restarted so nothing is cached); the record points at it.
        repo = "alice/evil-tree"
        api.create_repo(repo)
        api.upload_file(path_or_fileobj=packed.read_bytes(), path_in_repo="qa.safetensors", repo_id=repo)
        api.upload_file(
            path_or_fileobj=json.dumps({**good, "file": "../../escape7f3a.safetensors"}).encode(),
            path_in_repo="hubtool.json",
            repo_id=repo,
        )
        head = api.repo_info(repo).sha
    finally:
        srv.stop()
    commit_file = tmp_path / "root" / "repos" / "model" / "alice" / "evil-tree" / "commits" / f"{head}.json"
    commit = json.loads(commit_file.read_text())
    commit["tree"]["../../escape7f3a.safetensors"] = commit["tree"]["qa.safetensors"]
    commit["tree"]["/abs/escape7f3a.safetensors"] = commit["tree"]["qa.safetensors"]
    commit_file.write_text(json.dumps(commit))
    srv = Server(tmp_path / "root", tmp_path / "tokens.txt")
    try:
        listed = srv.api().list_repo_files(repo)
        assert "../../escape7f3a.safetensors" in listed  # the hostile listing really reaches the client
        with pytest.raises(HubError, match="not a plain path"):
            pull(repo, endpoint=srv.url, token=ALICE, catalog=cat)
        # and the server itself refuses to serve such a path
        status, headers, _ = srv.raw("GET", f"/{repo}/resolve/main/../../escape7f3a.safetensors")
        assert status == 400 and headers["x-error-code"] == "InvalidPath"
    finally:
        srv.stop()
    assert cat.list() == []
    outside = list(tmp_path.parent.rglob("*escape7f3a*"))  # a name only this test uses
    assert outside == [], outside
    assert not Path("/tmp/escape7f3a").exists() and not Path("/abs").exists()
    assert not any((hub_home / "tmp").glob("*")) if (hub_home / "tmp").exists() else True
