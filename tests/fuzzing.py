"""The file fuzzer: bad packed files, safetensors headers, PEFT folders, recipe YAML, hubtool.json records,
task files, option values, refs and --where expressions, run through the real `hub` entry point in-process.

    world = World.build(tmp)                     # tiny Llama base, a catalog with two experts, valid files
    for case in cases(world, seed=0, n=300):     # each: a class name, argv, files written on demand
        outcome = run_case(world, case)          # hubtool.cli.main with sys.argv patched; exit code + stderr
        assert outcome.ok, outcome               # exit 0, or exit 1 with one "Error:" line; never 2 or a hang

Used by tests/test_fuzz.py (a few hundred cases, fixed seed) and benchmarks/fuzz.py (10,000 cases, counts
per class, max case time, RSS growth). The mutations start from valid files written by hubtool itself, so
many cases are near misses (one field wrong) rather than noise.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import signal
import struct
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --- the world every case starts from --------------------------------------------------------------------

Q, K = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"
WORDS = ["what", "color", "is", "?", "red", "blue", "green", "pink"]


@dataclass
class World:
    root: Path
    base: Path  # a tiny Llama folder (with a word tokenizer): q_proj [64, 64], k_proj [32, 64]
    home: Path  # HUB_HOME
    packed: bytes  # a valid sparse expert of `base`, registered as "fz"
    lora_packed: bytes  # a valid LoRA expert of `base`, registered as "fzl"
    shira: Path  # `hub export fz` (SHiRA folder, with hubtool.json)
    lora: Path  # `hub export fzl` (LoRA folder)
    recipe: str  # a valid compose recipe (YAML) naming fz@1 and fzl@1
    record: dict  # a valid hubtool.json expert record (what `hub push` writes)
    task_jsonl: str
    task_csv: str
    counter: int = 0

    @classmethod
    def build(cls, root: Path) -> World:
        import torch
        from tiny import make_tiny_llama, save_word_tokenizer

        from hubtool.delta import Expert, LoraDelta, SparseDelta
        from hubtool.format import pack_bytes

        root = Path(root)
        base, home = root / "base", root / "home"
        model = make_tiny_llama(base)
        save_word_tokenizer(base, WORDS)
        os.environ["HUB_HOME"] = str(home)
        os.environ.pop("HUB_CATALOG", None)
        params = dict(model.named_parameters())
        gen = torch.Generator().manual_seed(0)
        from hubtool.format import fingerprint

        sparse, lora = {}, {}
        for w in (Q, K):
            shape = tuple(params[w].shape)
            n = shape[0] * shape[1]
            pos = torch.randperm(n, generator=gen)[: n // 20].sort().values
            sparse[w] = SparseDelta(shape, pos, torch.randn(pos.numel(), generator=gen) * 0.01, fingerprint(params[w]))
            lora[w] = LoraDelta(shape, torch.randn(2, shape[1], generator=gen), torch.randn(shape[0], 2, generator=gen) * 0.01,
                                2.0, fingerprint(params[w]))
        kw = {"base_model": str(base), "task": "colors"}
        packed = pack_bytes(Expert(name="fz", kind="sparse", deltas=sparse, keep_ratio=0.05,
                                   metrics={"colors": {"accuracy": 50.0}}, **kw))
        lora_packed = pack_bytes(Expert(name="fzl", kind="lora", deltas=lora, **kw))
        world = cls(root, base, home, packed, lora_packed, root / "shira", root / "lora", "", {}, "", "")
        for data, name in ((packed, "fz"), (lora_packed, "fzl")):
            path = root / f"{name}.safetensors"
            path.write_bytes(data)
            world.must("import", path)
        world.must("export", "fz", "--out", world.shira)
        world.must("export", "fzl", "--out", world.lora)
        from hubtool.merge.recipe import ExpertSpec, Recipe

        world.recipe = Recipe(method="ties", experts=[ExpertSpec("fz@1"), ExpertSpec("fzl@1", 0.5)], density=0.5).to_yaml()
        from hubtool.hub.push import pushed_record
        from hubtool.registry import Catalog

        cat = Catalog()
        world.record = _jsonable(pushed_record(cat, cat.get("fz@1"), "fz.safetensors"))  # what `hub push` writes
        rows = [{"input": f"what color is {w} ?", "output": c, "options": WORDS[4:]} for w, c in zip(WORDS * 3, WORDS[4:] * 6)]
        world.task_jsonl = "".join(json.dumps(r) + "\n" for r in rows)
        world.task_csv = "input,output\n" + "".join(f"{r['input']},{r['output']}\n" for r in rows)
        return world

    def must(self, *argv: Any) -> str:
        out = run_argv([str(a) for a in argv])
        if out.code != 0:
            raise RuntimeError(f"fuzz world: hub {' '.join(map(str, argv))} failed: {out.stderr}")
        return out.stdout

    def path(self, suffix: str = "") -> Path:
        """A fresh path under the world's scratch folder (cases never share files)."""
        self.counter += 1
        folder = self.root / "cases"
        folder.mkdir(exist_ok=True)
        return folder / f"c{self.counter}{suffix}"


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


# --- running one case ------------------------------------------------------------------------------------


class CaseTimeout(BaseException):
    """Raised by the alarm inside a case that runs too long (a BaseException: `main` must not catch it)."""


@dataclass
class Outcome:
    code: int | None
    stderr: str
    stdout: str
    seconds: float
    error: str | None = None  # why the outcome breaks the contract; None when it is a clean accept or error

    @property
    def ok(self) -> bool:
        return self.error is None


def _quiet_consoles(out: io.StringIO, err: io.StringIO, width: str | None = None):
    """Point the CLI's consoles at out/err. Rich fixes a console's width from COLUMNS when it is made (at
    import, where pytest-xdist workers have COLUMNS=80), so a case's own COLUMNS is applied here."""
    from hubtool.cli import _common

    saved = (_common.console.file, _common.err_console.file, _common.console._width)
    _common.console.file, _common.err_console.file = out, err
    if width is not None and width.isdigit():
        _common.console.width = int(width)
    return saved


def run_argv(argv: list[str], *, timeout: float = 30.0, env: dict[str, str] | None = None) -> Outcome:
    """`hub ARGV` in this process: the exit code, stderr and stdout, and whether it kept the contract
    (exit 0, or exit 1 with exactly one 'Error:' line on stderr; no traceback, no hang)."""
    from hubtool import cli
    from hubtool.cli import _common

    out, err = io.StringIO(), io.StringIO()
    saved = _quiet_consoles(out, err, (env or {}).get("COLUMNS"))
    old_argv, old_env = sys.argv, {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    sys.argv = ["hub", *argv]

    def alarm(signum: int, frame: Any) -> None:
        raise CaseTimeout()

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    start = time.perf_counter()
    code: int | None = None
    error = None
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            cli.main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except CaseTimeout:
        error = f"hang: more than {timeout:.0f} s"
    except BaseException as exc:  # noqa: BLE001 - anything escaping main breaks the contract
        error = f"escaped main: {type(exc).__name__}: {exc}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        sys.argv = old_argv
        _common.console.file, _common.err_console.file, _common.console.width = saved
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = time.perf_counter() - start
    stderr = err.getvalue()
    if error is None:
        error = contract_error(code, stderr, out.getvalue())
    return Outcome(code, stderr, out.getvalue(), seconds, error)


def contract_error(code: int | None, stderr: str, stdout: str) -> str | None:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    if "Traceback" in stderr + stdout:
        return "traceback printed"
    if code == 0:
        return None
    if code == 2:
        return f"internal error: {stderr.strip()[:500]}"
    if code != 1:
        return f"exit {code}: {stderr.strip()[:300]}"
    if len(lines) != 1 or not lines[0].startswith("Error:"):
        return f"not one 'Error:' line: {stderr.strip()[:300]!r}"
    return None


# --- cases -----------------------------------------------------------------------------------------------


@dataclass
class Case:
    cls: str  # the input class (what the benchmark counts by)
    what: str  # the mutation, for the report
    make: Callable[[World, Case], list[str]]  # writes the case's files, returns argv
    env: dict[str, str] = field(default_factory=dict)


def run_case(world: World, case: Case, *, timeout: float = 30.0) -> Outcome:
    try:
        argv = case.make(world, case)
    except Exception as exc:  # a bug in the generator, not in hubtool: say so loudly
        raise RuntimeError(f"fuzz generator {case.cls}/{case.what} failed: {exc!r}") from exc
    return run_argv(argv, timeout=timeout, env=case.env)


# Values that break naive readers: each is a JSON value (or, for _EVIL_TEXT, a string) that something
# in hubtool has at some point mistaken for a string, a number or a small list.
def _deep(n: int) -> str:
    """A stand-in for [[[...1...]]] n deep: _dumps writes it out (Python's own json cannot)."""
    return f"\x01DEEP{n}\x01"


def _big(n: int) -> str:
    """A stand-in for an n-digit integer (Python refuses to write one of more than 4300 digits)."""
    return f"\x01BIG{n}\x01"


_MARK = re.compile(r'"\\u0001(DEEP|BIG)(\d+)\\u0001"')


def _expand(m: re.Match) -> str:
    n = int(m[2])
    return "[" * n + "1" + "]" * n if m[1] == "DEEP" else "9" * n


_EVIL_VALUES: list[Callable[[random.Random], Any]] = [
    lambda r: _deep(r.choice([50, 500, 5000, 50000])),
    lambda r: _big(r.choice([20, 400, 5000])),
    lambda r: -r.randint(1, 10**6),
    lambda r: [r.random(), "x"],
    lambda r: {"a": [1, {"b": None}]},
    lambda r: None,
    lambda r: True,
    lambda r: r.choice([float("nan"), float("inf"), -float("inf"), 1e308 * 10]),
    lambda r: "",
    lambda r: "[/x] [bold]markup[/bold]",
    lambda r: "../../etc/passwd",
    lambda r: "x" * r.choice([200, 100_000]),
    lambda r: "\x00nul",
    lambda r: 0,
    lambda r: 1.5,
    lambda r: r.choice(["1e999", "-0", "NaN", "0x10", "१२"]),
    lambda r: [],
    lambda r: {},
]
_INT_LIMIT_FREE = True  # json.dumps writes big ints fine; json.loads of a 5000-digit int raises ValueError


def evil(r: random.Random) -> Any:
    return r.choice(_EVIL_VALUES)(r)


def _dumps(value: Any) -> str:
    text = json.dumps(value, allow_nan=True)
    return _MARK.sub(_expand, text)


def _mutate_bytes(r: random.Random, data: bytes) -> tuple[str, bytes]:
    how = r.choice(["truncate", "flip", "zero-run", "insert", "splice"])
    b = bytearray(data)
    if how == "truncate":
        return how, bytes(b[: r.randrange(0, len(b))])
    if how == "flip":
        for _ in range(r.randint(1, 8)):
            i = r.randrange(len(b))
            b[i] ^= 1 << r.randrange(8)
        return how, bytes(b)
    if how == "zero-run":
        i = r.randrange(len(b))
        b[i : i + r.randint(1, 64)] = bytes(min(64, len(b) - i))
        return how, bytes(b)
    if how == "insert":
        i = r.randrange(len(b))
        return how, bytes(b[:i] + os.urandom(r.randint(1, 32)) + b[i:])
    i, j = sorted(r.randrange(len(b)) for _ in range(2))
    return how, bytes(b[:i] + b[j:])


def _split_st(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _join_st(header: Any, payload: bytes, *, raw: str | None = None) -> bytes:
    text = (raw if raw is not None else _dumps(header)).encode("utf-8", "surrogatepass")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + payload


def _mutate_header(r: random.Random, data: bytes) -> tuple[str, bytes]:
    """One structured change to a valid packed file's header: a metadata field, a weight entry, a tensor entry."""
    header, payload = _split_st(data)
    meta = header["__metadata__"]
    weights = json.loads(meta["weights"])
    tensors = [k for k in header if k != "__metadata__"]
    how = r.choice(["meta", "meta-json", "meta-drop", "weight", "weight-drop", "tensor", "tensor-add",
                    "header-len", "many-tensors", "deep", "bigint", "not-object"])
    if how == "meta":
        key = r.choice(sorted(meta))
        meta[key] = _dumps(evil(r)) if r.random() < 0.5 else str(evil(r))[:2000]
    elif how == "meta-json":
        key = r.choice(["metrics", "parents", "config", "tasks", "weights", "nnz", "keep_ratio", "targets"])
        meta[key] = _dumps(r.choice([evil(r), {"colors": {"accuracy": evil(r)}}, [evil(r)], {"t": evil(r)},
                                     [{"ref": evil(r), "weight": evil(r)}]]))
    elif how == "meta-drop":
        meta.pop(r.choice(sorted(meta)))
    elif how in ("weight", "weight-drop"):
        w = r.choice(sorted(weights))
        key = r.choice(["delta", "shape", "nnz", "fingerprint", "encoding", "scale", "block_size"])
        if how == "weight-drop":
            weights[w].pop(key, None)
        elif key == "shape":
            weights[w]["shape"] = r.choice([[10**12, 10**12], [1, 1], [64, 65], [2**40, 2], [0, 64], [64], evil(r)])
        else:
            weights[w][key] = evil(r)
        meta["weights"] = _dumps(weights)
    elif how == "tensor":
        t = header[r.choice(tensors)]
        key = r.choice(["dtype", "shape", "data_offsets"])
        t[key] = r.choice([evil(r), [2**62, 2**62], [0, 2**63], [-1, 4], ["1", 2], "F64", "I64"])
    elif how == "tensor-add":
        header[f"{Q}.extra"] = {"dtype": "F32", "shape": [r.choice([0, 1, 2**31])], "data_offsets": [0, 4]}
    elif how == "header-len":
        n = r.choice([0, 7, 2**31, 2**63 - 1, 2**64 - 1, 100 * 2**20 + 1])
        return how, struct.pack("<Q", n) + data[8:]
    elif how == "many-tensors":
        count = r.choice([1000, 20000, 1000, 20000, 140000])  # the cap is 131072
        for i in range(count):
            header[f"t{i}"] = {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}
    elif how == "deep":
        return how, _join_st(None, payload, raw="{" + '"a":[' * r.choice([100, 2000, 100000]) + "1")
    elif how == "bigint":
        digits = "9" * r.choice([5000, 100000])
        raw = _dumps(header).replace('"data_offsets": [0', f'"data_offsets": [{digits}', 1)
        return how, _join_st(None, payload, raw=raw)
    else:
        return how, _join_st(None, payload, raw=r.choice(["[]", "null", "1", '"x"', "{", "\ud800", "{\"__metadata__\": []}"]))
    return how, _join_st(header, payload)


def _packed_cases(r: random.Random) -> Case:
    source = r.choice(["sparse", "lora"])
    byte_level = r.random() < 0.3

    def make(world: World, case: Case) -> list[str]:
        data = world.packed if source == "sparse" else world.lora_packed
        how, bad = _mutate_bytes(r, data) if byte_level else _mutate_header(r, data)
        path = world.path(".safetensors")
        path.write_bytes(bad)
        case.what = f"{source}:{how}"
        follow = r.choice(["import", "import", "export", "compose"])
        if follow == "import":
            return ["import", str(path), "--name", f"fz-{world.counter}"]
        # Accepted files are then exported or composed against the real base (shapes, allocations).
        name = f"fzx-{world.counter}"
        if run_argv(["import", str(path), "--name", name]).code != 0:
            return ["import", str(path), "--name", name]
        if follow == "export":
            return ["export", name, "--out", str(world.path("-peft"))]
        return ["compose", "--experts", f"{name},fz", "--out", str(world.path("-model"))]

    case = Case("packed" if byte_level or r.random() < 0.5 else "header", "", make)
    return case


def _shape_cases(r: random.Random) -> Case:
    """Well-formed files whose shapes, nnz or positions do not fit the base (or claim huge tensors)."""

    def make(world: World, case: Case) -> list[str]:
        import torch

        from hubtool.delta import BlockSparseDelta, Expert, FullDelta, LoraDelta, SparseDelta
        from hubtool.format import pack_bytes

        how = r.choice(["sparse-shape", "sparse-huge", "sparse-big", "lora-shape", "lora-huge", "full-shape",
                        "block-huge", "missing-weight", "transposed", "remote-base"])
        base_model = str(world.base)
        case.what = how
        w = r.choice([Q, K])
        if how == "sparse-shape":
            shape = r.choice([(64, 65), (63, 64), (32, 32), (1, 4096)])
            deltas = {w: SparseDelta(shape, torch.tensor([0, 5]), torch.ones(2))}
        elif how == "sparse-huge":
            shape = r.choice([(2**31, 2**31), (10**9, 10**9), (2**40, 4)])
            deltas = {w: SparseDelta(shape, torch.tensor([0, 2**33]), torch.ones(2))}
        elif how in ("sparse-big", "remote-base"):  # inside the header's caps: only the base can refuse it
            shape = r.choice([(2**20, 2**20), (2**31 - 1, 512), (4096, 2**28)])
            deltas = {w: SparseDelta(shape, torch.tensor([0, shape[1] * 3 + 1]), torch.ones(2))}
            if how == "remote-base":
                base_model = "fuzz-org/not-on-this-machine"
        elif how == "lora-shape":
            deltas = {w: LoraDelta((64, 63), torch.ones(1, 63), torch.ones(64, 1), 1.0)}
        elif how == "lora-huge":
            rows = r.choice([2**31, 10**8])
            deltas = {w: LoraDelta((rows, 1), torch.ones(0, 1), torch.ones(rows, 0), 1.0)} if rows < 10**9 else \
                {w: LoraDelta((64, 64), torch.ones(1, 64), torch.ones(64, 1), 1.0)}
        elif how == "full-shape":
            deltas = {w: FullDelta((8, 8), torch.ones(8, 8))}
        elif how == "block-huge":
            deltas = {w: BlockSparseDelta((2**30, 2**30), 16, torch.tensor([0, 7]), torch.ones(2, 16, 16))}
        elif how == "missing-weight":
            deltas = {"model.layers.9.self_attn.q_proj.weight": SparseDelta((64, 64), torch.tensor([1]), torch.ones(1))}
        else:
            deltas = {K: SparseDelta((64, 32), torch.tensor([1, 2]), torch.ones(2))}
        kind = next(iter(deltas.values())).kind
        path = world.path(".safetensors")
        try:
            path.write_bytes(pack_bytes(Expert(name="bad", task="colors", kind=kind, base_model=base_model,
                                               deltas=deltas)))
        except Exception as exc:  # pack refused it: then the header route must refuse it too
            if type(exc).__name__ not in ("FormatError", "HubError"):
                raise
            header, payload = _split_st(world.packed)
            weights = json.loads(header["__metadata__"]["weights"])
            weights[w]["shape"] = [2**31, 2**31]
            header["__metadata__"]["weights"] = json.dumps(weights)
            path.write_bytes(_join_st(header, payload))
        name = f"fzs-{world.counter}"
        if run_argv(["import", str(path), "--name", name]).code != 0:
            return ["import", str(path), "--name", name]
        follow = r.choice(["export", "compose", "compose-expert", "generate", "overlap"])
        if how == "remote-base":  # a second one of the same base, so there is something to merge with
            other = f"fzr-{world.counter}"
            if run_argv(["import", str(path), "--name", other]).code != 0:
                return ["import", str(path), "--name", other]
            follow = r.choice(["compose-expert-remote", "overlap-remote", "export"])
            if follow == "compose-expert-remote":
                return ["compose", "--experts", f"{name},{other}", "--as-expert", f"m{world.counter}"]
            if follow == "overlap-remote":
                return ["overlap", "--experts", f"{name},{other}"]
        if follow == "export":
            return ["export", name, "--out", str(world.path("-peft"))]
        if follow == "compose":
            return ["compose", "--experts", f"{name},fz", "--out", str(world.path("-model"))]
        if follow == "compose-expert":
            return ["compose", "--experts", f"{name},fz", "--as-expert", f"m{world.counter}"]
        if follow == "overlap":
            return ["overlap", "--experts", f"{name},fz"]
        return ["generate", name, "what color", "--max-new-tokens", "2"]

    case = Case("shapes", "", make)
    return case


def _peft_cases(r: random.Random) -> Case:
    def make(world: World, case: Case) -> list[str]:
        import shutil

        src = world.shira if r.random() < 0.5 else world.lora
        folder = world.path("-peft")
        shutil.copytree(src, folder)
        config = json.loads((folder / "adapter_config.json").read_text())
        how = r.choice(["config-field", "config-field", "config-text", "weights-bytes", "weights-tensor",
                        "sidecar", "sidecar-field", "no-sidecar"])
        case.what = f"{src.name}:{how}"
        if how == "config-field":
            key = r.choice(["r", "lora_alpha", "alpha_pattern", "rank_pattern", "peft_type", "target_modules",
                            "use_rslora", "fan_in_fan_out", "bias", "base_model_name_or_path", "modules_to_save",
                            "init_lora_weights", "random_seed", "sparsity", "revision"])
            config[key] = r.choice([evil(r), 0, None, "x", {"q_proj": evil(r)}, {"[": 2}, {"q_proj": 0}, {"(": "a"}])
            (folder / "adapter_config.json").write_text(_dumps(config))
        elif how == "config-text":
            (folder / "adapter_config.json").write_bytes(r.choice([b"", b"[1,2]", b"\xff\xfe", b"{", b"null",
                                                                   ("[" * 100000).encode()]))
        elif how == "weights-bytes":
            f = folder / "adapter_model.safetensors"
            f.write_bytes(_mutate_bytes(r, f.read_bytes())[1])
        elif how == "weights-tensor":
            _mutate_peft_tensors(r, folder, case)
        elif how == "sidecar":
            (folder / "hubtool.json").write_bytes(r.choice([b"", b"[]", b"{", b"\xff", b'{"format": 1}']))
        elif how == "sidecar-field":
            side = json.loads((folder / "hubtool.json").read_text())
            target = r.choice(["expert", "weights", "top"])
            if target == "expert":
                side["expert"][r.choice(list(side["expert"]))] = evil(r)
            elif target == "weights":
                w = r.choice(list(side["weights"]))
                side["weights"][w][r.choice(["shape", "nnz", "fingerprint"])] = r.choice(
                    [evil(r), -5, 10**9, [2**40, 2**40], [64, 64, 64], [0, 0]])
            else:
                side[r.choice(list(side))] = evil(r)
            (folder / "hubtool.json").write_text(_dumps(side))
        else:
            (folder / "hubtool.json").unlink()
        argv = ["import", str(folder), "--name", f"fzp-{world.counter}"]
        if r.random() < 0.3:
            argv += ["--base", str(world.base)]
        return argv

    case = Case("peft", "", make)
    return case


def _mutate_peft_tensors(r: random.Random, folder: Path, case: Case) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    f = folder / "adapter_model.safetensors"
    tensors = load_file(f)
    key = r.choice(sorted(tensors))
    t = tensors[key]
    how = r.choice(["nan", "negative", "huge-index", "shape", "dtype", "drop", "empty", "rank0"])
    case.what += f":{how}"
    if how == "nan":
        t = t.float().clone()
        t.view(-1)[0] = float("nan")
    elif how == "negative":
        t = t.clone()
        t.view(-1)[0] = -3
    elif how == "huge-index":
        t = t.to(torch.int64 if not t.is_floating_point() else t.dtype).clone()
        t.view(-1)[-1] = 2**31 - 1 if not t.is_floating_point() else 1e30
    elif how == "shape":
        t = t.reshape(-1)[: max(1, t.numel() // 2)].clone()
    elif how == "dtype":
        t = t.to(r.choice([torch.float64, torch.int8, torch.bool, torch.float16]))
    elif how == "drop":
        tensors.pop(key)
        save_file(tensors or {"x": torch.ones(1)}, f)
        return
    elif how == "empty":
        t = t.reshape(-1)[:0].clone()
    else:
        t = t[:0].clone() if t.dim() == 2 else t
    tensors[key] = t.contiguous()
    save_file(tensors, f)


def _recipe_cases(r: random.Random) -> Case:
    def make(world: World, case: Case) -> list[str]:
        import yaml

        doc = yaml.safe_load(world.recipe)
        how = r.choice(["field", "param", "expert", "text", "select", "drop", "special"])
        case.what = how
        path = world.path(".yaml")
        if how == "special":  # not a regular file: a FIFO (no writer: must not hang), endless devices, a folder
            kind = r.choice(["fifo", "/dev/zero", "/dev/urandom", "folder", "deep"])
            case.what = f"special:{kind}"
            if kind == "fifo":
                os.mkfifo(path)
            elif kind == "folder":
                path.mkdir()
            elif kind == "deep":  # valid YAML nested past the recipe's depth cap
                path.write_text("merge_method: ties\nexperts: [fz@1]\nselect: {tasks: " + "[" * 20 + "]" * 20 + "}\n")
            else:
                path = Path(kind)
        elif how == "text":
            path.write_bytes(r.choice([_LAUGHS, b"", b"[", b"- 1\n- 2\n", b"\xff\xfe\x00", b"a: !!python/object:os.system x\n",
                                       b"&a [*a]", ("[" * 50000).encode(), b"a: " + b"9" * 5000,
                                       b"merge_method: ties\nexperts: {x: 1}\n"]))
        else:
            if how == "field":
                doc[r.choice(["merge_method", "dtype", "base_model", "parameters", "experts", "select"])] = evil(r)
            elif how == "param":
                doc["parameters"][r.choice(["density", "lambda", "seed", "normalize", "other"])] = evil(r)
            elif how == "expert":
                e = r.choice(doc["experts"])
                e[r.choice(["expert", "sha256", "parameters"])] = evil(r)
                if r.random() < 0.5:
                    e["expert"] = r.choice(["fz@99999999999999999999999", "fz@best", "fz@0", "nope@1", "fz@-1", "fz@१"])
            elif how == "select":
                doc["select"] = {"tasks": r.choice([evil(r), ["colors"], "colors,"]), "where": evil(r),
                                 "pick": evil(r), "weights": evil(r)}
                doc.pop("experts")
            else:
                doc.pop(r.choice(sorted(doc)))
            try:
                text = yaml.safe_dump(doc, allow_unicode=True)
            except (RecursionError, yaml.YAMLError):
                text = world.recipe + "\nextra: [[[["
            path.write_text(text)
        return ["compose", "--config", str(path), *r.choice([["--dry-run"], ["--as-expert", f"r{world.counter}"]])]

    case = Case("recipe", "", make)
    return case


# "Billion laughs": nine aliases deep, each a list of nine of the one before (9^9 values once expanded).
_LAUGHS = b"a: &a [x, x, x, x, x, x, x, x, x]\n" + b"".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n".encode() for p, c in zip("abcdefgh", "bcdefghi")
) + b"merge_method: ties\nexperts: [*i]\n"


def _record_cases(r: random.Random) -> Case:
    """hubtool.json expert records, as `hub pull` reads them (the library path: no server needed)."""

    def make(world: World, case: Case) -> list[str]:
        record = json.loads(json.dumps(world.record))
        how = r.choice(["field", "field", "drop", "nested", "text", "types", "huge", "library"])
        case.what = how
        if how == "types":  # issue 15: lineage parents and ref of the wrong type
            key, value = r.choice([("lineage", {"parents": evil(r)}), ("ref", evil(r)), ("lineage", evil(r)),
                                   ("lineage", {"parents": [{"ref": "fz@1", r.choice(["role", "weight", "x"]): evil(r)}]}),
                                   ("task_info", {"sizes": {"train": evil(r)}}), ("version", evil(r))])
            record[key] = value
        elif how == "huge":  # fields of megabytes that would reach the catalog
            size = r.choice([20_000, 2_000_000])
            key = r.choice(["description", "metric", "task", "config", "tag", "parent"])
            case.what = f"huge:{key}"
            if key == "metric":
                record["metrics"] = {"colors": {"m" * size: 1.0}}
            elif key == "task":
                record["metrics"] = {"t" * size: {"accuracy": 1.0}}
            elif key == "config":
                record["config"] = {"notes": "c" * size}
            elif key == "tag":
                record["tags"] = ["t"] * (size // 100)
            elif key == "parent":
                record["lineage"] = {"parents": [{"ref": "p" * size}]}
            else:
                record["description"] = "d" * size
        elif how == "field":
            key = r.choice(["name", "task", "tasks", "tags", "metrics", "config", "version", "sha256", "file",
                            "lineage", "description", "base_model", "base_revision", "category", "task_info"])
            record[key] = evil(r)
        elif how == "drop":
            record.pop(r.choice(sorted(record)))
        elif how == "nested":
            key = r.choice(["metrics", "lineage", "task_info", "config"])
            record[key] = r.choice([{"colors": {"accuracy": evil(r)}}, {"parents": [evil(r), {"ref": evil(r)}]},
                                    {"category": evil(r), "sizes": evil(r), "tags": evil(r)}, {evil(r).__class__.__name__: evil(r)}])
        path = world.path("-record")
        path.mkdir()
        (path / "fz.safetensors").write_bytes(world.packed)
        if how == "text":
            (path / "hubtool.json").write_bytes(r.choice([b"", b"{", b"[]", b"\xff", b"[" * 100000, b"1" * 5000]))
        elif how == "library":  # one record many times (registered once), or more than a library may list
            n = r.choice([2, 1000, 10_001])
            case.what = f"library:{n}"
            (path / "hubtool_library.json").write_text(json.dumps({"experts": [record] * n}))
        else:
            (path / "hubtool.json").write_text(_dumps(record))
        return ["__pull_record__", str(path)]

    case = Case("record", "", make)
    return case


def _task_cases(r: random.Random) -> Case:
    def make(world: World, case: Case) -> list[str]:
        ext = r.choice([".jsonl", ".csv"])
        text = (world.task_jsonl if ext == ".jsonl" else world.task_csv).encode()
        how = r.choice(["bytes", "non-utf8", "huge-cell", "bad-line", "field", "empty", "bom", "nul"])
        case.what = f"{ext}:{how}"
        if how == "bytes":
            text = _mutate_bytes(r, text)[1]
        elif how == "non-utf8":
            i = r.randrange(len(text))
            text = text[:i] + b"\xff\xc3(" + text[i:]
        elif how == "huge-cell":
            big = b"x" * r.choice([200_000, 2_000_000])
            text = text + (b'"' + big + b'",y\n' if ext == ".csv" else b'{"input": "' + big + b'", "output": "y"}\n')
        elif how == "bad-line":
            lines = text.splitlines(keepends=True)
            lines.insert(r.randrange(len(lines)), r.choice([b"{\n", b"[1]\n", b"null\n", b'"x"\n', b'{"input": 1}\n',
                                                             b'{"input": "a", "output": ["x", 2]}\n', b"a,b,c,d\n",
                                                             b'{"input": "a", "output": "b", "options": "x"}\n',
                                                             b'{"input": "a", "output": "b", "options": [1, null]}\n']))
            text = b"".join(lines)
        elif how == "field":
            lines = text.splitlines(keepends=True)
            row = {"input": evil(r), "output": evil(r)} if ext == ".jsonl" else None
            lines.insert(1, (_dumps(row) + "\n").encode() if row else b'"' + str(evil(r)).encode()[:1000] + b'",x\n')
            text = b"".join(lines)
        elif how == "empty":
            text = r.choice([b"", b"\n\n", b"input,output\n"])
        elif how == "bom":
            text = b"\xef\xbb\xbf" + text
        else:
            text = text.replace(b"what", b"wh\x00at", 1)
        path = world.path(ext)
        path.write_bytes(text)
        # A base that is not there: an accepted task file then fails on the base model, cleanly and fast.
        return ["train", "--task", "t", "--data", str(path), "--base", str(world.root / "no-base"), "--quiet"]

    case = Case("task", "", make)
    return case


# Options that must be positive (or in a range), per command; values tried on each.
_BAD_NUMBERS = ["0", "-1", "nan", "inf", "-inf", "1e400", "99999999999999999999999", "x", "", "1.5", "0x10"]
_OPTIONS = {
    "train": ["--max-steps", "--epochs", "--batch-size", "--grad-accum", "--lr", "--max-length", "--max-train",
              "--max-val", "--eval-limit", "--max-new-tokens", "--keep-ratio", "--mask-interval", "--mask-steps",
              "--block-size", "--rank", "--alpha", "--seed"],
    "eval": ["--limit", "--max-new-tokens", "--max-prompt-tokens", "--batch-size"],
    "list": ["--limit"],
    "compose": ["--density", "--lambda", "--seed", "--eval-limit", "--weights"],
    "generate": ["--max-new-tokens"],
}


def _option_cases(r: random.Random) -> Case:
    def make(world: World, case: Case) -> list[str]:
        cmd = r.choice(sorted(_OPTIONS))
        opt = r.choice(_OPTIONS[cmd])
        value = r.choice(_BAD_NUMBERS)
        case.what = f"{cmd} {opt} {value}"
        missing = str(world.root / "no-base")
        if cmd == "train":
            return ["train", "--task", "t", "--data", _task_file(world), "--base", missing, opt, value, "--quiet"]
        if cmd == "eval":
            return ["eval", "--base", missing, "--task", _task_file(world), opt, value]
        if cmd == "list":
            return ["list", opt, value]
        if cmd == "compose":
            return ["compose", "--experts", "fz,fzl", "--method", "ties" if opt == "--density" else "task-arithmetic",
                    opt, value, "--dry-run"]
        return ["generate", "--base", missing, "hi", opt, value]

    return Case("options", "", make)


def _task_file(world: World) -> str:
    path = world.root / "task.jsonl"
    if not path.exists():
        path.write_text(world.task_jsonl)
    return str(path)


def _ref_cases(r: random.Random) -> Case:
    def make(world: World, case: Case) -> list[str]:
        ref = r.choice(["fz@99999999999999999999999", "fz@" + "9" * 5000, "fz@-1", "fz@0", "fz@१", "fz@²",
                        "fz@ 1", "@1", "fz@@1", "fz@latest", "fz@[/x]", "x" * 200, "fz\x00@1", "fz@" + "a" * 1000,
                        "[bold]fz", "fz@1.5", "fz@9223372036854775808", "fz@9223372036854775807"])
        cmd = r.choice(["show", "rm", "alias", "export", "compose", "push"])
        case.what = f"{cmd} {ref[:30]}"
        if cmd == "show":
            return ["show", ref]
        if cmd == "rm":
            return ["rm", ref, "--yes"] if not ref.startswith("fz@") or ref in ("fz@0",) else ["show", ref, "--json"]
        if cmd == "alias":
            return ["alias", ref, r.choice(["best", "99999999999999999999999", "[/x]", "a" * 300])]
        if cmd == "export":
            return ["export", ref, "--out", str(world.path("-out"))]
        if cmd == "push":
            return ["push", ref, "--repo", "org/x", "--endpoint", "http://127.0.0.1:9"]
        return ["compose", "--experts", f"{ref},fz", "--dry-run"]

    return Case("refs", "", make)


def _where_cases(r: random.Random) -> Case:
    def make(world: World, case: Case) -> list[str]:
        how = r.choice(["many", "long", "deep-op", "bignum", "sort", "markup"])
        case.what = how
        if how == "many":
            expr = ",".join(["accuracy>=1"] * r.choice([100, 1000, 20000]))
        elif how == "long":
            expr = "name=" + "x" * r.choice([1000, 100_000, 2_000_000])
        elif how == "deep-op":
            expr = "accuracy" + ">=" * r.choice([10, 10000]) + "1"
        elif how == "bignum":
            expr = r.choice(["version=99999999999999999999999", "nnz>" + "9" * 5000, "bytes<1e400", "keep_ratio>=nan"])
        elif how == "markup":
            expr = "name=[/x]"
        else:
            return ["list", "--sort", ",".join(["-accuracy"] * r.choice([10, 5000])), "--limit", "2"]
        cmd = r.choice(["list", "compose"])
        if cmd == "compose":
            return ["compose", "--tasks", "colors", "--where", expr, "--dry-run"]
        return ["list", "--where", expr]

    return Case("where", "", make)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _markup_cases(r: random.Random) -> Case:
    def make(world: World, case: Case) -> list[str]:
        evil_name = r.choice(["[/x]", "[bold]b[/bold]", "[link=file:///etc]x[/link]", "[/]", "a[b]c"])
        # `hub tasks` counts every built-in's examples (~4 s): one case in eight.
        how = r.choice(["tasks"] + ["import-task", "path", "train-task", "show-task"] * 2 + ["eval-task"])
        case.what = f"{how} {evil_name}"
        if how == "tasks":
            root = world.path("-tasks")
            folder = root / f"t{evil_name.replace('/', '_')}"
            folder.mkdir(parents=True)
            (folder / "train.jsonl").write_text(world.task_jsonl)
            case.env = {"HUB_TASKS_PATH": str(root)}
            return ["tasks"]
        if how == "import-task":
            path = world.path(".safetensors")
            path.write_bytes(world.packed)
            return ["import", str(path), "--name", f"fzm-{world.counter}", "--task", evil_name]
        if how == "path":
            folder = world.path(evil_name.replace("/", "_"))
            folder.mkdir()
            return ["import", str(folder / "x.safetensors")]
        if how == "show-task":  # an expert whose task (from its file) is markup: `hub show` prints it
            path = world.path(".safetensors")
            name = f"fzm-{world.counter}"
            run_argv(["import", str(path if path.exists() else _write(path, world.packed)), "--name", name,
                      "--task", evil_name])
            return ["show", name]
        if how == "eval-task":
            return ["eval", "--base", str(world.root / "no-base"), "--task", evil_name]
        data = world.path(f"{evil_name.replace('/', '_')}.jsonl")
        data.write_text(world.task_jsonl)
        return ["train", "--task", evil_name, "--data", str(data), "--base", str(world.root / "no-base")]

    return Case("markup", "", make)


def _compose_out_cases(r: random.Random) -> Case:
    """compose --out whose merge overflows (huge --lambda or --weights, a narrow --dtype), and --eval on an
    expert whose stored eval settings have the wrong shape (issue 15)."""

    def make(world: World, case: Case) -> list[str]:
        out = str(world.path("-out"))
        if r.random() < 0.3:
            name = f"fze{world.counter}"
            settings = r.choice([evil(r), {"limit": evil(r)}, {"split": evil(r)}, {"max_new_tokens": evil(r)},
                                 {"max_prompt_tokens": evil(r)}])
            case.what = f"eval-config {str(settings)[:40]}"
            from hubtool.format import pack_bytes, unpack

            expert = unpack(world.packed)
            try:  # the settings as JSON can hold them (markers as 1; NaN refused by the writer: a string)
                expert.name, expert.config = name, {"eval": json.loads(_MARK.sub("1", json.dumps(settings)))}
                data = pack_bytes(expert)
            except Exception:  # noqa: BLE001
                expert.config = {"eval": "x"}
                data = pack_bytes(expert)
            path = world.path(".safetensors")
            path.write_bytes(data)
            run_argv(["import", str(path), "--name", name])
            return ["compose", "--experts", name, "--out", out, "--eval", "--eval-limit", "2"]
        lam = r.choice(["1e300", "1e38", "3e38", "1e8", "1"])
        weights = r.choice(["1,1", "1e300,1", "1e38,1e38", "-1e38,1e38"])
        dtype = r.choice(["float16", "bfloat16", "float32"])
        method = r.choice(["task-arithmetic", "ties", "mean", "dare-linear"])
        case.what = f"{method} --lambda {lam} --weights {weights} --dtype {dtype}"
        extra = ["--lambda", lam] if method != "mean" else []
        return ["compose", "--experts", "fz,fzl", "--method", method, *extra, "--weights", weights, "--dtype", dtype,
                "--out", out]

    return Case("compose-out", "", make)


def _prompt_cases(r: random.Random) -> Case:
    """generate with prompts that argv can carry but text cannot: bytes that are not UTF-8 (lone surrogates
    once Python decodes argv), NUL, only spaces, very long."""

    def make(world: World, case: Case) -> list[str]:
        prompt = r.choice(["what \udcff color", "\udc80", "a\ud800b", "what\x00color", "   ", "what " * 5000,
                           "[/x] what", "what color is red ?"])
        case.what = f"{prompt[:20]!a}"
        return ["generate", "--base", str(world.base), prompt, "--max-new-tokens", "2"]

    return Case("prompt", "", make)


_ENDPOINTS = ["http://[::1", "http://a:b:c", "http://x\x01y", "ftp://x", "nohost", "http://", "http://127.0.0.1:99999",
              "http://exa mple.com", "https://", "http://127.0.0.1:9", "http://[::1]:9", "://x", "http://\udcff",
              "http://127.0.0.1:" + "9" * 5000]


def _endpoint_cases(r: random.Random) -> Case:
    """pull and push with malformed endpoints (--endpoint and HF_ENDPOINT); the well-formed ones are loopback
    ports where nothing listens (no case leaves this machine)."""

    def make(world: World, case: Case) -> list[str]:
        endpoint = r.choice(_ENDPOINTS)
        malformed = endpoint not in ("http://127.0.0.1:9", "http://[::1]:9")
        cmd = r.choice(["pull", "push"]) if malformed else "pull"
        case.what = f"{cmd} {endpoint[:30]!a}"
        argv = ["pull", "org/x"] if cmd == "pull" else ["push", "fz", "--repo", "org/x"]
        if r.random() < 0.5 and "\x00" not in endpoint:
            case.env = {"HF_ENDPOINT": endpoint}
            return argv
        return [*argv, "--endpoint", endpoint]

    return Case("endpoint", "", make)


def _catalog_file_cases(r: random.Random) -> Case:
    """A copy of the world's catalog in a home of its own, damaged: pages scrambled (a torn write, a bad disk),
    the file cut short, a JSON column holding text that is not JSON, a table dropped; or left whole. Then list
    (its fast path and the normal one), show, rm, verify."""

    def make(world: World, case: Case) -> list[str]:
        import shutil
        import sqlite3

        home = world.path("-home")
        shutil.copytree(world.home / "blobs", home / "blobs", ignore=shutil.ignore_patterns("catalogs"))
        db = home / "registry.db"
        src, dst = sqlite3.connect(world.home / "registry.db"), sqlite3.connect(db)
        src.backup(dst)  # a whole copy, WAL included
        src.close()
        dst.execute("PRAGMA journal_mode = DELETE")  # one file to damage
        how = r.choice(["pages", "pages", "truncate", "json", "json", "drop", "whole"])
        if how == "json":
            table, column = r.choice([("experts", "config"), ("tasks", "tags"), ("tasks", "sizes")])
            dst.execute(f"UPDATE {table} SET {column} = ?", (r.choice(['{"a": 1', "nan", "", "{'a': 1}", "\x00"]),))
        elif how == "drop":
            dst.execute("PRAGMA foreign_keys = OFF")
            dst.execute(f"DROP TABLE {r.choice(['expert_tasks', 'metrics', 'expert_tags', 'aliases', 'tasks'])}")
        dst.commit()
        dst.close()
        data = bytearray(db.read_bytes())
        if how == "pages":
            page = 4096
            for _ in range(r.randint(1, 3)):
                start = r.randrange(1, len(data) // page) * page  # never page 1: that is "not a database"
                data[start + r.randint(0, 8) : start + page] = r.randbytes(page - 8)
        elif how == "truncate":
            data = data[: r.randrange(100, len(data))]
        db.write_bytes(bytes(data))
        argv = r.choice([["list"], ["list", "--json"], ["list", "--task", "colors"], ["show", "fz"],
                         ["rm", "fz@1", "--yes"], ["verify"], ["verify", "--repair", "--json"]])
        case.what = f"{how}: {' '.join(argv)}"
        case.env = {"HUB_HOME": str(home)}
        return argv

    return Case("catalog-file", "", make)


GENERATORS: dict[str, Callable[[random.Random], Case]] = {
    "packed": _packed_cases,  # also yields "header" cases
    "shapes": _shape_cases,
    "peft": _peft_cases,
    "catalog-file": _catalog_file_cases,  # issue 15 (here: the classes' round-robin keeps recipe's near misses)
    "recipe": _recipe_cases,
    "record": _record_cases,
    "task": _task_cases,
    "options": _option_cases,
    "refs": _ref_cases,
    "where": _where_cases,
    "markup": _markup_cases,
    "compose-out": _compose_out_cases,  # issue 15
    "prompt": _prompt_cases,
    "endpoint": _endpoint_cases,
}


def cases(seed: int, n: int, classes: list[str] | None = None) -> Iterator[Case]:
    """n cases, round-robin over the classes, each with its own rng drawn from `seed` (same seed, same cases)."""
    names = classes or list(GENERATORS)
    master = random.Random(seed)
    for i in range(n):
        yield GENERATORS[names[i % len(names)]](random.Random(master.getrandbits(64)))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --- the pull-record entry point -------------------------------------------------------------------------

def pull_record(folder: str) -> None:
    """What `hub pull` does with a downloaded repo, minus the HTTP: read hubtool.json, check the entry,
    verify the file, register it. The fuzzer reaches it through `hub __pull_record__ FOLDER` (below)."""
    from hubtool.hub import pull as pull_mod
    from hubtool.registry import Catalog

    root = Path(folder)
    files = {p.name for p in root.iterdir()}
    entries = pull_mod._entries(files, "fuzz/repo@0", lambda paths: root)
    cat = Catalog()
    for entry in pull_mod._pick(entries, None, "fuzz/repo@0"):
        pull_mod._verify(root / entry["file"], entry, "fuzz/repo@0")
        pull_mod._base_warnings(cat, entry)
        if pull_mod._present(cat, entry) is None:
            pull_mod._register(cat, root / entry["file"], entry | {"name": f"pulled-{root.name}"})


def _install_pull_record_command() -> None:
    import typer

    from hubtool.cli import app

    if any(c.name == "__pull_record__" for c in app.registered_commands):
        return

    @app.command("__pull_record__", hidden=True)
    def _pull_record(folder: str) -> None:
        pull_record(folder)

    _ = typer


_install_pull_record_command()
