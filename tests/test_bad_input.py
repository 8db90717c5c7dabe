"""One hand-written bad input per class of issue 9's "Harden" list, each through the real `hub` entry point:
exit 1, one `Error:` line, and the line names the file or field and what was expected (the fuzzer in
tests/fuzzing.py checks only the exit contract; this checks the words)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import fuzzing
import pytest
import torch
from fuzzing import K, Q, World, _join_st, _split_st, run_argv


def error_line(argv: list[str], env: dict[str, str] | None = None) -> str:
    out = run_argv([str(a) for a in argv], env=env)
    assert out.ok and out.code == 1, f"hub {argv}: exit {out.code} {out.error}\n{out.stderr}{out.stdout}"
    return out.stderr.strip()


# --- packed files and safetensors headers ---------------------------------------------------------------


def _header_case(edit: Callable[[dict, dict], None]) -> Callable[[World], list[str]]:
    """A valid packed file with one edit to its header: edit(header, weights) (weights decoded)."""

    def make(world: World) -> list[str]:
        header, payload = _split_st(world.packed)
        weights = json.loads(header["__metadata__"]["weights"])
        edit(header, weights)
        header["__metadata__"]["weights"] = fuzzing._dumps(weights)
        path = world.path(".safetensors")
        path.write_bytes(_join_st(header, payload))
        return ["import", path, "--name", f"bad-{world.counter}"]

    return make


def _meta(key: str, value: str) -> Callable[[dict, dict], None]:
    return lambda header, weights: header["__metadata__"].__setitem__(key, value)


def _raw(text: str) -> Callable[[World], list[str]]:
    def make(world: World) -> list[str]:
        _, payload = _split_st(world.packed)
        path = world.path(".safetensors")
        path.write_bytes(_join_st(None, payload, raw=text))
        return ["import", path]

    return make


def _bytes(edit: Callable[[bytes], bytes]) -> Callable[[World], list[str]]:
    def make(world: World) -> list[str]:
        path = world.path(".safetensors")
        path.write_bytes(edit(world.packed))
        return ["import", path]

    return make


def _many_tensors(header: dict, weights: dict) -> None:
    for i in range(140_000):
        header[f"t{i}"] = {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}


PACKED = {
    "deep-json": (_meta("config", '{"a":' * 5000 + "1" + "}" * 5000), ["__metadata__.config", "nested too deeply"]),
    "5000-digit-int": (_meta("metrics", '{"colors": {"accuracy": ' + "9" * 5000 + "}}"),
                       ["__metadata__.metrics", "5000 digits"]),
    "list-for-string": (lambda h, w: w[Q].__setitem__("fingerprint", ["abc"]), ["fingerprint", "a string or null"]),
    "missing-fingerprint": (lambda h, w: w[Q].pop("fingerprint"), [f"weights[{Q}].fingerprint", "missing"]),
    "parents-type": (_meta("parents", '[{"ref": 3}]'), ["__metadata__.parents[0]", "ref string"]),
    "metrics-type": (_meta("metrics", '{"colors": {"accuracy": "high"}}'), ["__metadata__.metrics", "finite number"]),
    "metrics-overflow": (_meta("metrics", '{"colors": {"accuracy": 1e999}}'), ["__metadata__.metrics", "finite"]),
    "tasks-type": (_meta("tasks", '"qa"'), ["__metadata__.tasks", "array"]),
    "nnz-type": (lambda h, w: w[K].__setitem__("nnz", "12"), [f"weights[{K}].nnz", "non-negative integer"]),
    "shape-huge": (lambda h, w: w[Q].__setitem__("shape", [2**40, 2**40]), [f"weights[{Q}].shape", "at most"]),
    "too-many-tensors": (_many_tensors, ["tensors, more than the 131072 allowed"]),
}


@pytest.mark.parametrize("case", sorted(PACKED))
def test_packed_header(world: World, case: str) -> None:
    edit, words = PACKED[case]
    argv = _header_case(edit)(world)
    line = error_line(argv)
    assert str(argv[1]) in line, line  # the file
    for word in words:
        assert word in line, line


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (_bytes(lambda b: b[: len(b) // 2]), ["truncated or not safetensors"]),
        (_bytes(lambda b: (2**63).to_bytes(8, "little") + b[8:]), ["header length", "does not fit"]),
        (_bytes(lambda b: b[:5]), ["shorter than the 8-byte header length"]),
        (_raw('{"a":' + "[" * 100_000), ["safetensors header", "nested too deeply"]),
        (_raw('{"__metadata__": {"format": "hubtool.expert"}, "x": {"dtype": ["F32"], "shape": [1], '
              '"data_offsets": [0, 4]}}'), ["__metadata__"]),
    ],
    ids=["truncated", "huge-header-length", "tiny", "deep-header", "dtype-list"],
)
def test_safetensors_container(world: World, make, words: list[str]) -> None:
    argv = make(world)
    line = error_line(argv)
    assert str(argv[1]) in line
    for word in words:
        assert word in line, line


# --- shapes that do not fit the base: checked before anything of the claimed size is built --------------


def _import_expert(world: World, deltas: dict, kind: str = "sparse", base: str | None = None) -> str:
    from hubtool.delta import Expert
    from hubtool.format import pack

    name = f"shape-{world.counter}"
    path = world.path(".safetensors")
    pack(Expert(name=name, task="colors", kind=kind, base_model=base or str(world.base), deltas=deltas), path)
    assert run_argv(["import", str(path)]).code == 0
    return name


def test_shapes_against_the_base(world: World) -> None:
    from hubtool.delta import LoraDelta, SparseDelta

    # A 2^40-entry weight in a 5 KB file: the header allows it, the base does not.
    big = _import_expert(world, {Q: SparseDelta((2**20, 2**20), torch.tensor([1, 2**21]), torch.ones(2))})
    for argv in (["export", big, "--out", world.path("-peft")],
                 ["compose", "--experts", f"{big},fz", "--out", world.path("-model")],
                 ["overlap", "--experts", f"{big},fz"]):
        line = error_line(argv)
        assert Q in line and "[1048576, 1048576]" in line and "the base model" in line and "[64, 64]" in line, line
    wrong = _import_expert(world, {K: LoraDelta((64, 64), torch.ones(1, 64), torch.ones(64, 1), 1.0)}, kind="lora")
    line = error_line(["generate", wrong, "what color", "--max-new-tokens", "1"])
    assert K in line and "[32, 64]" in line, line
    # No base on this machine to confirm a huge shape: refused, not allocated.
    remote = [_import_expert(world, {Q: SparseDelta((2**20, 2**20), torch.tensor([5]), torch.ones(1))},
                             base="some-org/not-here") for _ in range(2)]
    line = error_line(["compose", "--experts", ",".join(remote), "--as-expert", "m"])
    assert "not on this machine" in line and Q in line, line
    line = error_line(["export", remote[0], "--out", world.path("-peft")])
    assert "not on this machine" in line, line


# --- PEFT folders --------------------------------------------------------------------------------------


def _peft(world: World, source: Path, config_edit=None, tensors_edit=None, sidecar_edit=None) -> Path:
    from safetensors.torch import load_file, save_file

    folder = world.path("-peft")
    shutil.copytree(source, folder)
    if config_edit is not None:
        path = folder / "adapter_config.json"
        config = json.loads(path.read_text())
        result = config_edit(config)
        path.write_bytes(result if isinstance(result, bytes) else json.dumps(config).encode())
    if tensors_edit is not None:
        path = folder / "adapter_model.safetensors"
        tensors = load_file(path)
        tensors_edit(tensors)
        save_file(tensors, path)
        if sidecar_edit is None:
            sidecar_edit = lambda s: None
    if sidecar_edit is not None:
        from hubtool.fileio import sha256_file

        path = folder / "hubtool.json"
        sidecar = json.loads(path.read_text())
        sidecar["weights_sha256"] = sha256_file(folder / "adapter_model.safetensors")
        sidecar_edit(sidecar)
        path.write_text(json.dumps(sidecar))
    return folder


def _set(key, value):
    def edit(config: dict) -> None:
        config[key] = value

    return edit


def _nan_index(tensors: dict) -> None:
    key = next(k for k in tensors if k.endswith("shira_indices"))
    bad = tensors[key].float()
    bad[0, 0] = float("nan")
    tensors[key] = bad


def _shira_nnz(n):
    def edit(sidecar: dict) -> None:
        sidecar["weights"][Q]["nnz"] = n

    return edit


PEFT = {
    "rank-0": ("lora", {"config_edit": _set("r", 0)}, ["adapter_config.json", "r=0", ">= 1"]),
    "rank-mismatch": ("lora", {"config_edit": _set("r", 3)}, ["adapter_config.json", "r=3", "has rank 2"]),
    "alpha-null": ("lora", {"config_edit": _set("lora_alpha", None)}, ["adapter_config.json", "lora_alpha=None"]),
    "alpha-text": ("lora", {"config_edit": _set("lora_alpha", "16")}, ["lora_alpha='16'", "finite number"]),
    "alpha-pattern-regex": ("lora", {"config_edit": _set("alpha_pattern", {"q_proj[": 4})},
                            ["alpha_pattern['q_proj[']", "not a valid regex"]),
    "alpha-pattern-type": ("lora", {"config_edit": _set("alpha_pattern", ["q_proj"])}, ["alpha_pattern", "object"]),
    "rank-pattern-value": ("lora", {"config_edit": _set("rank_pattern", {"q_proj": "two"})}, ["rank_pattern['q_proj']"]),
    "config-not-json": ("lora", {"config_edit": lambda c: b"{not json"}, ["adapter_config.json", "not valid JSON"]),
    "config-not-object": ("lora", {"config_edit": lambda c: b"[1, 2]"}, ["adapter_config.json", "JSON object"]),
    "config-not-utf8": ("lora", {"config_edit": lambda c: b"\xff\xfe{}"}, ["adapter_config.json", "not UTF-8"]),
    "shira-nan-index": ("shira", {"tensors_edit": _nan_index}, ["shira_indices", "NaN"]),
    "shira-negative-nnz": ("shira", {"sidecar_edit": _shira_nnz(-3)}, ["hubtool.json", f"weights[{Q}].nnz", "got -3"]),
    "shira-nnz-too-big": ("shira", {"sidecar_edit": _shira_nnz(10**6)}, ["hubtool.json", "nnz"]),
    "shira-nnz-drops-entries": ("shira", {"sidecar_edit": _shira_nnz(1)}, ["hubtool.json", "drops non-zero entries"]),
    "sidecar-shape": ("shira", {"sidecar_edit": lambda s: s["weights"][Q].__setitem__("shape", [64, 65])},
                      ["hubtool.json", "[64, 65]", "[64, 64]"]),
}


@pytest.mark.parametrize("case", sorted(PEFT))
def test_peft_folder(world: World, case: str) -> None:
    which, edits, words = PEFT[case]
    folder = _peft(world, world.lora if which == "lora" else world.shira, **edits)
    line = error_line(["import", folder, "--name", f"p-{world.counter}"])
    assert str(folder) in line, line
    for word in words:
        assert word in line, line


# --- recipe YAML and hubtool.json records ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (b"merge_method: ties\nparameters: {density: [0.5]}\nexperts: [fz@1]\n", ["parameters.density", "finite number"]),
        (b"merge_method: [ties]\nexperts: [fz@1]\n", ["merge_method", "expected a string"]),
        (b"merge_method: ties\nexperts: [fz@1]\nselect: {where: [1]}\n", ["select.where", "string"]),
        (b"merge_method: ties\nparameters: {seed: " + b"9" * 5000 + b"}\nexperts: [fz@1]\n", ["not a usable YAML value"]),
        (fuzzing._LAUGHS, ["more than 100000 values"]),
        (b"\xff\xfe", ["not UTF-8"]),
        (b"[" * 50_000, ["YAML"]),
        (b"merge_method: ties\nexperts: [fz@99999999999999999999999]\n", ["fz@99999999999999999999999", "version"]),
        # the recipe's pydantic model: extra keys are refused at any depth, each field names its place
        (b"merge_method: ties\nexperts: [{expert: fz@1, weight: 2}]\n", ["experts[0].weight", "unknown key"]),
        (b"merge_method: ties\nexperts: [fz@1, 7]\n", ["experts[1]", "NAME@VERSION"]),
        (b"select: {tasks: [a, b], weights: [1, yes]}\n", ["select.weights[1]", "finite number"]),
        (b"parameters: {lambda: .inf}\nexperts: [fz@1]\n", ["parameters.lambda", "finite number"]),
    ],
    ids=["density-list", "method-list", "where-list", "bigint", "billion-laughs", "not-utf8", "deep", "version",
         "nested-extra-key", "expert-not-a-name", "weights-bool", "lambda-inf"],
)
def test_recipe(world: World, text: bytes, words: list[str]) -> None:
    path = world.path(".yaml")
    path.write_bytes(text)
    line = error_line(["compose", "--config", path, "--dry-run"])
    if "version" not in words:
        assert str(path) in line, line
    for word in words:
        assert word in line, line


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda r: r.__setitem__("metrics", {"colors": {"accuracy": "x"}}), ["metrics['colors']['accuracy']"]),
        (lambda r: r.__setitem__("tags", "qa"), ["tags", "array"]),
        (lambda r: r.__setitem__("version", 10**30), ["version"]),
        (lambda r: r.__setitem__("task", ["colors"]), ["task"]),
        (lambda r: r.pop("sha256"), ["sha256"]),
        (lambda r: r.__setitem__("description", {"a": 1}), ["description", "string"]),
    ],
    ids=["metric-text", "tags-string", "version-overflow", "task-list", "no-sha256", "description-object"],
)
def test_pulled_record(world: World, edit, words: list[str]) -> None:
    record = json.loads(json.dumps(world.record))
    edit(record)
    folder = world.path("-record")
    folder.mkdir()
    (folder / "fz.safetensors").write_bytes(world.packed)
    (folder / "hubtool.json").write_text(json.dumps(record))
    line = error_line(["__pull_record__", folder])
    for word in words:
        assert word in line, line


# --- task files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "where"),
    [
        ("latin1.jsonl", b'{"input": "a", "output": "b"}\n{"input": "caf\xe9", "output": "b"}\n', ":2:"),
        ("latin1.csv", b"input,output\na,b\nc,d\ncaf\xe9,x\n", ":4:"),
        ("huge.csv", b"input,output\na,b\n\"" + b"x" * (17 * 2**20) + b"\",y\n", ":3:"),
        ("badline.jsonl", b'{"input": "a", "output": "b"}\n{"input": \n', ":2:"),
        ("deep.jsonl", b'{"input": "a", "output": "b"}\n' + b"[" * 100_000 + b"\n", ":2:"),
        ("bigint.jsonl", b'{"input": "a", "output": ' + b"9" * 5000 + b"}\n", ":1:"),
    ],
    ids=["jsonl-not-utf8", "csv-not-utf8", "csv-huge-cell", "jsonl-bad-line", "jsonl-deep", "jsonl-bigint"],
)
def test_task_file(world: World, name: str, data: bytes, where: str) -> None:
    path = world.path("-" + name)
    path.write_bytes(data)
    line = error_line(["train", "--task", "t", "--data", path, "--base", world.root / "no-base"])
    assert f"{path}{where}" in line, line


# --- option values -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["train", "--max-steps", "0"], "--max-steps"),
        (["train", "--batch-size", "0"], "--batch-size"),
        (["train", "--grad-accum", "0"], "--grad-accum"),
        (["train", "--lr", "nan"], "--lr"),
        (["train", "--max-length", "1"], "--max-length"),
        (["train", "--epochs", "-1"], "--epochs"),
        (["train", "--keep-ratio", "1.5"], "--keep-ratio"),
        (["train", "--seed", "99999999999999999999999"], "--seed"),
        (["eval", "--limit", "-1"], "--limit"),
        (["list", "--limit", "-1"], "--limit"),
        (["compose", "--density", "0"], "--density"),
        (["compose", "--weights", "1,inf"], "--weights"),
        (["generate", "--max-new-tokens", "0"], "--max-new-tokens"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else v,
)
def test_option_values(world: World, argv: list[str], option: str) -> None:
    cmd, *rest = argv
    common = {
        "train": ["--task", "t", "--data", fuzzing._task_file(world), "--base", world.root / "no-base"],
        "eval": ["--task", "t", "--base", world.root / "no-base"],
        "list": [],
        "compose": ["--experts", "fz,fzl", "--method", "ties", "--dry-run"],
        "generate": ["--base", world.root / "no-base", "hi"],
    }[cmd]
    line = error_line([cmd, *common, *rest])
    assert option in line and "expected" in line, line


def test_library_api_checks_the_same(world: World) -> None:
    import hubtool
    from hubtool.errors import HubError

    for kwargs, option in (({"batch_size": 0}, "--batch-size"), ({"lr": float("nan")}, "--lr"),
                           ({"max_steps": -1}, "--max-steps"), ({"keep_ratio": 0.0}, "--keep-ratio")):
        with pytest.raises(HubError, match=option):
            hubtool.train("t", data=fuzzing._task_file(world), base=str(world.root / "no-base"), **kwargs)


# --- refs and --where ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["show", "fz@99999999999999999999999"], ["fz@99999999999999999999999", "version"]),
        (["show", "fz@9223372036854775808"], ["version"]),
        (["show", "fz@²"], ["expert ref", "NAME@VERSION"]),
        (["rm", "fz@" + "9" * 5000, "--yes"], ["expert ref"]),
        (["list", "--where", ",".join(["accuracy>=1"] * 100)], ["--where", "100 comparisons"]),
        (["list", "--where", "name=" + "x" * 10_000], ["--where", "characters"]),
        (["list", "--sort", ",".join(["-accuracy"] * 100)], ["--sort", "at most 16 keys"]),
    ],
    ids=["version-overflow", "version-int64", "unicode-digit", "5000-digits", "many-terms", "long-where", "long-sort"],
)
def test_refs_and_where(world: World, argv: list[str], words: list[str]) -> None:
    line = error_line(argv)
    for word in words:
        assert word in line, line
    assert len(line) < 400, line  # the 5000-digit value is not echoed in full


# --- markup, export --out, --task with --data, the model window -----------------------------------------


def test_markup_is_printed_as_text(world: World) -> None:
    root = world.path("-tasks")
    for name in ("[bold]b", "x[red]y[blink]"):
        (root / name).mkdir(parents=True)
        (root / name / "train.jsonl").write_text(world.task_jsonl)
    out = run_argv(["tasks"], env={"HUB_TASKS_PATH": str(root), "COLUMNS": "300"})
    assert out.code == 0, out.stderr
    assert "[bold]b" in out.stdout and "x[red]y[blink]" in out.stdout
    path = world.path(".safetensors")
    path.write_bytes(world.packed)
    out = run_argv(["import", str(path), "--name", "markup", "--task", "[red]t[/x]"])
    assert out.code == 0 and "[red]t[/x]" in out.stdout, out.stdout + out.stderr
    out = run_argv(["show", "markup"])
    assert out.code == 0 and "[red]t[/x]" in out.stdout, out.stdout + out.stderr


def test_export_refuses_to_overwrite(world: World) -> None:
    target = world.path(".safetensors")
    target.write_bytes(b"precious")
    line = error_line(["export", "fz", "--format", "hubtool", "--out", target])
    assert str(target) in line and "--force" in line and target.read_bytes() == b"precious"
    assert run_argv(["export", "fz", "--format", "hubtool", "--out", str(target), "--force"]).code == 0
    assert target.read_bytes() == world.packed
    folder = world.path("-peft")
    assert run_argv(["export", "fz", "--out", str(folder)]).code == 0
    (folder / "mine.txt").write_text("keep")
    line = error_line(["export", "fz", "--out", folder])
    assert str(folder) in line and "--force" in line and (folder / "mine.txt").is_file()
    assert run_argv(["export", "fz", "--out", str(folder), "--force"]).code == 0
    assert not (folder / "mine.txt").exists() and (folder / "adapter_model.safetensors").is_file()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]


def test_task_option_names_the_task_of_a_data_file(world: World) -> None:
    data = world.path("-colors.jsonl")
    data.write_text(world.task_jsonl)
    out = run_argv(["train", "--task", "qa", "--data", str(data), "--base", str(world.base), "--max-steps", "1",
                    "--batch-size", "2", "--max-length", "16", "--eval-limit", "0", "--quiet", "--name", "qa-run"])
    assert out.code == 0, out.stderr
    from hubtool.registry import Catalog

    rec = Catalog().get("qa-run")
    assert rec.task == "qa" and rec.tasks == ["qa"] and rec.config["data"]["task"] == "qa"


def test_eval_prompts_are_cut_to_the_model_window(tmp_path: Path) -> None:
    """GPT-2 has learned positions: a prompt past n_positions fails inside the model unless it is cut."""
    from tiny import save_word_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    from hubtool.data.tasks import Example, build_task
    from hubtool.evaluate import evaluate

    words = ["w"] + [f"t{i}" for i in range(40)]
    tokenizer = save_word_tokenizer(tmp_path, words)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=24, n_embd=32, n_layer=1, n_head=2, bos_token_id=1,
                        eos_token_id=2, pad_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    long = " ".join(f"t{i % 40}" for i in range(60))  # 60 tokens > 24 positions
    rows = [Example(f"{long} t{i}", "w") for i in range(4)] + [Example(f"{long} t{i}", "w", ["w", "t1"]) for i in range(4)]
    task = build_task("long", {"test": rows, "train": rows[:1]}, 0, "mem")
    scores = evaluate(model, tokenizer, task, split="test", max_new_tokens=4, batch_size=2)
    assert scores["n"] == len(task.test) and 0 <= scores["rougeL"] <= 100
    from hubtool.errors import HubError

    with pytest.raises(HubError, match="window of 24"):
        evaluate(model, tokenizer, task, split="test", max_new_tokens=24)
