"""Executing a plan: stream the base model shard by shard, merge each adapted weight, write, free.

Memory stays at about one shard plus the current weight's expert entries, whatever the model size:
  for each base shard:                        (safe_open: tensors are read one at a time)
      for each tensor in it:
          adapted?  inputs = every chosen expert's entries for this weight   (ExpertReader.read)
                    merged = METHODS[method](inputs)       sparse, on the union of positions
                    W = W + merged                         hubtool.kernels scatter-add, fp32, rounded once
      write the output shard (temp folder), drop it, go on
Inputs for the next weights are decoded ahead in a thread pool (decoding positions is the costly part).
A merged expert (`merged_expert`) needs no base weights at all: only the experts' entries.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from hubtool.delta import Expert, FullDelta, SparseDelta
from hubtool.errors import FingerprintError, HubError
from hubtool.merge.methods import MergeParams, WeightInputs, merge_weight
from hubtool.merge.plan import Plan

INDEX = "model.safetensors.index.json"
RECIPE_FILE = "hubtool_recipe.yml"
PROVENANCE_FILE = "hubtool.json"
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Files of a base model folder that describe the old weights, not the merged model.
_NOT_COPIED = {INDEX, "README.md", "hubtool-model.json", RECIPE_FILE, PROVENANCE_FILE}

Progress = Callable[[str, int, int], None]  # (what, done, total)


def params_of(plan: Plan) -> MergeParams:
    r = plan.recipe
    return MergeParams(density=r.density, lam=r.lam, seed=r.seed, normalize=r.normalize)


# --- inputs of one weight, decoded ahead ---------------------------------------------------------------


class Inputs:
    """Every chosen expert's entries of the weights in `order`, decoded one weight ahead: while the
    caller merges weight i, the experts of weight i+1 are read and decoded in parallel (one task per
    expert). Memory: two weights' entries at most."""

    def __init__(self, plan: Plan, order: list[str], threads: int = 2) -> None:
        self.plan, self.readers = plan, plan.readers()
        self.order = [w for w in order if w in plan.weights]
        self.pool = ThreadPoolExecutor(max(1, threads))
        self.pending: dict[str, list[Any]] = {}  # weight -> one future per expert touching it
        self.index = {w: k for k, w in enumerate(self.order)}
        self.w = torch.tensor([c.weight for c in plan.choices], dtype=torch.float32)
        self.refs = [c.ref for c in plan.choices]

    def _read(self, i: int, name: str) -> tuple[tuple[torch.Tensor, torch.Tensor], str | None]:
        delta = self.readers[i].read(name)
        return delta.entries(), delta.fingerprint

    def _submit(self, name: str) -> list[Any]:
        return [self.pool.submit(self._read, i, name) for i in self.plan.weights[name]]

    def get(self, name: str) -> tuple[WeightInputs, list[str | None]]:
        futures = self.pending.pop(name, None) or self._submit(name)
        k = self.index.get(name, len(self.order)) + 1
        if k < len(self.order) and self.order[k] not in self.pending:  # the next weight, while we wait
            self.pending[self.order[k]] = self._submit(self.order[k])
        done = dict(zip(self.plan.weights[name], (f.result() for f in futures)))
        empty = (torch.zeros(0, dtype=torch.int64), torch.zeros(0))
        entries = [done[i][0] if i in done else empty for i in range(len(self.plan.choices))]
        fingerprints = [done[i][1] if i in done else None for i in range(len(self.plan.choices))]
        return WeightInputs(name, self.plan.shapes[name], entries, self.w, self.refs), fingerprints

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _check_fingerprints(plan: Plan, name: str, weight: torch.Tensor, fingerprints: list[str | None]) -> None:
    from hubtool.format.fingerprint import fingerprint

    wanted = [(plan.choices[i].ref, fp) for i, fp in enumerate(fingerprints) if fp is not None]
    if not wanted:
        return
    got = fingerprint(weight)
    for ref, fp in wanted:
        if fp != got:
            raise FingerprintError(
                f"expert {ref} was trained against a different base weight for {name}: expected {fp}, "
                f"the base model {plan.base_model} has {got}"
            )


# --- the base model's files ------------------------------------------------------------------------------


def base_folder(base_model: str) -> Path:
    """A local folder with the base model's files: the embedded model's, a local folder, or a Hub
    snapshot (through huggingface_hub, so HF_ENDPOINT and tokens work as in the HF tools)."""
    from hubtool.models import resolve_base

    source, _ = resolve_base(base_model)
    path = Path(source)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]))
    except Exception as err:  # noqa: BLE001  (network, auth, not found: one line)
        raise HubError(f"base model {source}: cannot download its files: {' '.join(str(err).split())}") from None


def shard_layout(folder: Path) -> list[tuple[str, list[str]]]:
    """[(shard file, [tensor names in file order])] of a safetensors model folder."""
    from safetensors import safe_open

    index = folder / INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = list(dict.fromkeys(weight_map.values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise HubError(f"{folder}: no model.safetensors or {INDEX}; compose needs a safetensors model")
    layout = []
    for name in files:
        with safe_open(str(folder / name), framework="pt") as f:
            layout.append((name, list(f.keys())))
    return layout


# --- model folder ---------------------------------------------------------------------------------------


def write_model(
    plan: Plan,
    out_dir: Path,
    *,
    threads: int = 2,
    progress: Progress | None = None,
    card: Callable[[Path], None] | None = None,
) -> Path:
    """Write the merged model as a complete HF folder at `out_dir` (atomically: all or nothing)."""
    from safetensors import safe_open

    from hubtool.fileio import atomic_folder

    folder = base_folder(plan.base_model)
    layout = shard_layout(folder)
    present = {n for _, names in layout for n in names}
    missing = sorted(set(plan.weights) - present)
    if missing:
        raise HubError(f"base model {plan.base_model} has no weight {missing[0]} that the experts adapt")
    out_dtype = _DTYPES.get(plan.recipe.dtype) if plan.recipe.dtype else None
    params = params_of(plan)
    inputs = Inputs(plan, [n for _, names in layout for n in names], threads)
    weight_map: dict[str, str] = {}
    total_size, done = 0, 0
    try:
        with atomic_folder(out_dir) as tmp:
            for i, (shard, names) in enumerate(layout):
                out_name = f"model-{i + 1:05d}-of-{len(layout):05d}.safetensors"
                with safe_open(str(folder / shard), framework="pt") as f:
                    specs = [_out_spec(n, f.get_slice(n), out_dtype) for n in names]
                    # Header first (every tensor's dtype and shape is known), then each tensor as it is
                    # made: the writer holds one tensor, never the shard.
                    with ShardWriter(tmp / out_name, specs) as writer:
                        for name in names:
                            t = f.get_tensor(name)
                            dtype = out_dtype if out_dtype is not None and t.is_floating_point() else t.dtype
                            if name in plan.weights:
                                x, fingerprints = inputs.get(name)
                                _check_fingerprints(plan, name, t, fingerprints)
                                merged = merge_weight(plan.recipe.method, x, params)
                                base_bad = _not_finite(t)  # before: add_merged may add in place
                                t = _check_finite(plan, out_dir, name, base_bad, add_merged(t, merged, dtype))
                                del merged, x
                                done += 1
                                if progress:
                                    progress("weights", done, len(plan.weights))
                            elif t.dtype != dtype:
                                t = _check_finite(plan, out_dir, name, _not_finite(t), t.to(dtype))
                            writer.write(name, t)
                            total_size += t.numel() * t.element_size()
                            weight_map[name] = out_name
                            del t
                if progress:
                    progress("shards", i + 1, len(layout))
            index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
            (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
            _copy_side_files(folder, tmp, out_dtype)
            (tmp / RECIPE_FILE).write_text(plan.recipe.to_yaml())
            (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance(plan), indent=2) + "\n")
            if card is not None:
                card(tmp)
    finally:
        inputs.close()
    return out_dir


def _not_finite(t: torch.Tensor) -> int:
    return int((~torch.isfinite(t)).sum()) if t.is_floating_point() else 0


def _check_finite(plan: Plan, out_dir: Path, name: str, base_bad: int, after: torch.Tensor) -> torch.Tensor:
    """`after` (the tensor to write), unless it holds more inf/NaN entries than the base's (base_bad): a huge
    --lambda or weight, or large finite values times them, or a narrower --dtype, overflowed. As
    --as-expert refuses such values, a model folder must not be written with them (exit 0, unusable)."""
    bad = _not_finite(after)
    if bad > base_bad:
        dtype = str(after.dtype).removeprefix("torch.")
        r = plan.recipe
        if name not in plan.weights:  # only cast: the base's values do not fit the --dtype asked
            why = f"the base's values do not fit {dtype} (--dtype {r.dtype})"
        else:
            lam = "the method's default" if r.lam is None else f"{r.lam:g}"
            weights = ",".join(f"{c.weight:g}" for c in plan.choices)
            why = (f"the experts' deltas times --lambda {lam} and --weights {weights} overflow {dtype}; "
                   "use smaller values")
        raise HubError(f"--out {out_dir}: the merged {name} would hold {bad:,} entries that are not finite "
                       f"(inf or NaN): {why}; nothing was written")
    return after


_ST_TO_TORCH = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                "BOOL": torch.bool}
_TORCH_TO_ST = {v: k for k, v in _ST_TO_TORCH.items()}


def _out_spec(name: str, sl: Any, out_dtype: torch.dtype | None) -> tuple[str, str, list[int]]:
    """(name, safetensors dtype, shape) of a tensor as it will be written."""
    st = sl.get_dtype()
    if out_dtype is not None and _ST_TO_TORCH.get(st, torch.uint8).is_floating_point:
        st = _TORCH_TO_ST[out_dtype]
    return name, st, list(sl.get_shape())


class ShardWriter:
    """A safetensors file written tensor by tensor: the header (from the known dtypes and shapes) goes
    first, then each tensor's bytes in order. A writer thread does the file writes, so writing tensor i
    overlaps merging tensor i+1; at most two tensors wait in its queue (memory stays one tensor or so)."""

    def __init__(self, path: Path, specs: list[tuple[str, str, list[int]]]) -> None:
        import queue
        import threading

        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        self.expected: list[tuple[str, str, list[int]]] = []
        for name, st, shape in specs:
            numel = 1
            for d in shape:
                numel *= d
            size = numel * torch.empty(0, dtype=_ST_TO_TORCH[st]).element_size()
            header[name] = {"dtype": st, "shape": shape, "data_offsets": [offset, offset + size]}
            self.expected.append((name, st, shape))
            offset += size
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # tensors start 8-byte aligned, as safetensors writes them
        self.file = open(path, "wb")  # noqa: SIM115  (closed in __exit__: the writer is a context manager)
        self.file.write(len(text).to_bytes(8, "little") + text)
        self.at = 0
        self.queue: Any = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while (t := self.queue.get()) is not None:
            if self.error is None:
                try:
                    if t.numel():
                        self.file.write(t.contiguous().view(torch.uint8).reshape(-1).numpy())
                except BaseException as err:  # noqa: BLE001  (re-raised in the caller's thread)
                    self.error = err

    def write(self, name: str, t: torch.Tensor) -> None:
        want, st, shape = self.expected[self.at]
        if name != want or _TORCH_TO_ST[t.dtype] != st or list(t.shape) != shape:
            raise HubError(f"internal: shard writer expected {want} {st} {shape}, got {name} {t.dtype} {list(t.shape)}")
        if self.error is not None:
            raise self.error
        self.queue.put(t)
        self.at += 1

    def __enter__(self) -> ShardWriter:  # noqa: PYI034
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self.queue.put(None)
        self.thread.join()
        self.file.close()
        if kind is None:
            if self.error is not None:
                raise self.error
            if self.at != len(self.expected):
                raise HubError(f"internal: shard writer got {self.at} of {len(self.expected)} tensors")


def add_merged(weight: torch.Tensor, merged: Any, dtype: torch.dtype) -> torch.Tensor:
    """W + merged in one pass over W: the fp32 sum rounded once to `dtype` on the union; untouched
    entries keep their exact bits (-0.0 included)."""
    from hubtool.kernels import dense_add_

    # merged.values is -0.0 off the union, and x + (-0.0) == x for every x (-0.0 included), so one
    # fp32 add over all of W changes exactly the union's entries.
    return dense_add_(weight.float(), merged.values).to(dtype)  # fp32 [out, in], through hubtool.kernels


def _copy_side_files(src: Path, dst: Path, out_dtype: torch.dtype | None) -> None:
    """Config, generation config, tokenizer, chat template: everything but the old weights."""
    for path in sorted(src.iterdir()):
        if path.is_file() and path.suffix != ".safetensors" and path.name not in _NOT_COPIED \
                and not path.name.startswith("."):
            shutil.copyfile(path, dst / path.name)
    config = dst / "config.json"
    if out_dtype is not None and config.is_file():
        data = json.loads(config.read_text())
        name = str(out_dtype).removeprefix("torch.")
        for key in ("dtype", "torch_dtype"):
            if key in data:
                data[key] = name
        data.setdefault("dtype", name)
        config.write_text(json.dumps(data, indent=2) + "\n")


def provenance(plan: Plan) -> dict[str, Any]:
    return {
        "hubtool": "compose",
        "base_model": plan.base_model,
        "base_revision": plan.base_revision,
        "method": plan.recipe.method,
        "parents": [
            {"ref": c.ref, "task": c.task, "weight": c.weight, "sha256": c.record.sha256, "kind": c.record.kind,
             "chosen": c.reason}
            for c in plan.choices
        ],
        "recipe": plan.recipe.to_dict(),
    }


# --- merged expert --------------------------------------------------------------------------------------


def merged_deltas(plan: Plan, *, threads: int = 2, progress: Progress | None = None) -> Iterator[tuple[str, Any]]:
    """(weight, merged delta) for every adapted weight: sparse on the union of positions, or a full
    delta when the union covers more than half of W (a dense kind was among the inputs)."""
    params = params_of(plan)
    order = list(plan.weights)
    inputs = Inputs(plan, order, threads)
    try:
        for done, name in enumerate(order, 1):
            x, fingerprints = inputs.get(name)
            known = {fp for fp in fingerprints if fp is not None}
            if len(known) > 1:
                raise FingerprintError(f"the chosen experts were trained against different base weights for {name}")
            fp = known.pop() if known else None
            merged = merge_weight(plan.recipe.method, x, params)
            shape = plan.shapes[name]
            union, values = merged.entries()
            if union.numel() * 2 > shape[0] * shape[1]:  # the method already made the dense form
                yield name, FullDelta(shape, merged.values + 0.0, fp)  # + 0.0: -0.0 off the union -> 0.0
            else:
                yield name, SparseDelta(shape, union, values, fp)
            if progress:
                progress("weights", done, len(order))
    finally:
        inputs.close()


def merged_expert(plan: Plan, name: str, *, threads: int = 2, progress: Progress | None = None) -> Expert:
    deltas = dict(merged_deltas(plan, threads=threads, progress=progress))
    dtypes = {c.header()["value_dtype"] for c in plan.choices}
    value_dtype = "float32" if "float32" in dtypes else "float16" if dtypes == {"float16"} else "bfloat16"
    targets = {c.record.targets for c in plan.choices}
    return Expert(
        name=name,
        task=plan.tasks[0],
        kind="merged",
        base_model=plan.base_model,
        deltas=deltas,
        base_revision=plan.base_revision,
        keep_ratio=None,
        value_dtype=value_dtype,
        targets=targets.pop() if len(targets) == 1 else None,
        config={"merge": provenance(plan)},
        metrics={},
        parents=[c.ref for c in plan.choices],
    )

