"""PEFT adapter folders in and out of hubtool experts.

import_peft reads ``adapter_config.json`` + ``adapter_model.safetensors`` (never a pickle):
  LoRA         -> kind "lora", one LoraDelta per adapted weight
  SHiRA        -> kind "sparse": int32 [2, nnz] (row, col) coordinates become sorted flat positions
  Super-Tuning -> kind "sparse": int32 [nnz] flat positions, sorted
export_peft writes the reverse, a folder whose ``PeftModel.from_pretrained(base, folder)`` computes W + delta:
  sparse / block-sparse -> SHiRA (default) or Super-Tuning;  lora -> LoRA.

Both sparse tuners fix each layer's entry count from one global setting (SHiRA: r * (out + in); Super-Tuning:
int(out * in * (1 - sparsity))), while an expert's nnz varies per weight. Export therefore pads every weight
after its real entries with zero values at positions outside its mask (W + 0 = W exactly) and records the
real counts in ``hubtool.json``, which import uses to trim the padding again. The sidecar also carries the
expert's metadata and shapes; it is trusted only while the weights file still has the sha256 it records.

PEFT names tensors ``base_model.model.<module>.<tuner tensor>``; hubtool names weights ``<module>.weight``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hubtool.delta import BlockSparseDelta, Delta, Expert, LoraDelta, SparseDelta
from hubtool.delta.kinds import SPARSE_KINDS
from hubtool.errors import HubError
from hubtool.fileio import atomic_folder, sha256_file
from hubtool.format import safejson
from hubtool.format.safejson import finite

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
SIDECAR_FILE = "hubtool.json"
SIDECAR_FORMAT = "hubtool-peft-export"
FORMATS = ("shira", "supertuning", "lora")
PREFIX = "base_model.model."
_PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}

# LoRA options that make the adapter compute more than W + scale * B @ A on weight matrices.
_LORA_UNSUPPORTED = {
    "use_dora": "DoRA (a learned magnitude vector)",
    "lora_bias": "trained LoRA biases",
    "trainable_token_indices": "trainable token embeddings",
    "target_parameters": "LoRA on raw parameters (target_parameters)",
    "layer_replication": "layer replication",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "arrow_config": "Arrow routing",
    "use_qalora": "QA-LoRA input pooling",
    "use_bdlora": "block-diagonal LoRA",
}
# Inits that leave the base untouched; PiSSA, OLoRA, CorDA, LoftQ, ... rewrite W and so need a different base.
_LORA_PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal")


# --- import ------------------------------------------------------------------------------------------


def import_peft(
    folder: str | Path,
    *,
    name: str | None = None,
    task: str | None = None,
    base: str | None = None,
    trust_remote_code: bool = False,
) -> Expert:
    """Read a PEFT LoRA / SHiRA / Super-Tuning folder into an Expert.

    ``base`` overrides the base model (else hubtool.json's, else adapter_config's base_model_name_or_path);
    SHiRA and Super-Tuning need the base's weight shapes, read from its config when hubtool.json is absent
    (the base's own code, named by its ``auto_map``, runs only with trust_remote_code=True).
    The task defaults to the exported expert's, else "unknown".
    """
    folder = Path(folder).expanduser()
    if base is not None:
        _check_base_arg(base)
    config, tensors = _read_adapter(folder)
    sidecar = _read_sidecar(folder)
    meta = sidecar.get("expert", {})
    base_model = base or meta.get("base_model") or config.get("base_model_name_or_path")
    for key in ("base_model_name_or_path", "revision"):
        if config.get(key) is not None and not isinstance(config[key], str):
            raise HubError(f"{folder / CONFIG_FILE}: {key}: expected a string, got {str(config[key])[:60]!r}")
    if not base_model:
        raise HubError(
            f"{folder / CONFIG_FILE}: base_model_name_or_path is empty; pass the base model explicitly"
        )
    if config.get("modules_to_save"):
        raise HubError(f"{folder / CONFIG_FILE}: modules_to_save is set; experts hold weight deltas only")
    peft_type = config.get("peft_type")
    if peft_type == "LORA":
        deltas: dict[str, Delta] = dict(_lora_deltas(config, tensors, folder))
    elif peft_type in ("SHIRA", "SUPERTUNING"):
        deltas = _sparse_deltas(peft_type, config, tensors, sidecar, base_model, folder, trust_remote_code)
    else:
        raise HubError(
            f"{folder / CONFIG_FILE}: peft_type {peft_type!r} is not supported; "
            "expected LORA, SHIRA or SUPERTUNING"
        )
    kind = "lora" if peft_type == "LORA" else "sparse"
    _check_against_local_base(deltas, base_model, folder)
    for weight, spec in sidecar.get("weights", {}).items():
        if weight in deltas:
            deltas[weight].fingerprint = spec.get("fingerprint")
    first = next(iter(tensors.values()))
    return Expert(
        name=name or meta.get("name") or folder.resolve().name,
        task=task or meta.get("task") or "unknown",
        kind=meta.get("kind") or kind,
        base_model=base_model,
        deltas=deltas,
        base_revision=meta.get("base_revision") or config.get("revision"),
        keep_ratio=meta.get("keep_ratio", None if kind == "lora" else _keep_ratio(deltas)),
        value_dtype=meta.get("value_dtype") or _DTYPE_NAMES.get(first.dtype, "float32"),
        targets=meta.get("targets") or "|".join(sorted({w.split(".")[-2] for w in deltas})),
        config={"peft_config": config},
    )


def _sparse_deltas(
    peft_type: str,
    config: dict,
    tensors: dict,
    sidecar: dict,
    base_model: str,
    folder: Path,
    trust_remote_code: bool = False,
) -> dict[str, Delta]:
    shapes = _sidecar_shapes(sidecar)
    if shapes:  # hubtool.json's shapes are checked against the base when it is on this machine
        from hubtool.apply import check_shapes, local_base_shapes

        base_shapes = local_base_shapes(base_model)
        if base_shapes is not None:
            check_shapes(shapes, base_shapes, str(folder / SIDECAR_FILE), base_model)
    else:
        from hubtool.models import base_weight_shapes

        shapes = base_weight_shapes(base_model, trust_remote_code=trust_remote_code)
    if peft_type == "SHIRA":
        entries = _shira_entries(config, tensors, shapes, folder)
    else:
        entries = _supertuning_entries(config, tensors, folder)
    counts = {w: spec["nnz"] for w, spec in sidecar.get("weights", {}).items()}
    deltas: dict[str, Delta] = {}
    for weight, (flat, values) in entries.items():
        if weight not in shapes:
            raise HubError(f"{folder / WEIGHTS_FILE}: the base model {base_model} has no weight {weight}")
        n = counts.get(weight, flat.numel())  # drop export padding, stored after the real entries
        if not 0 <= n <= flat.numel():
            raise HubError(
                f"{folder / SIDECAR_FILE}: weights[{weight}].nnz {n}: expected 0 to the {flat.numel()} "
                f"entries {WEIGHTS_FILE} holds"
            )
        if n < flat.numel() and bool((values[n:] != 0).any()):  # export pads with zeros only
            raise HubError(
                f"{folder / SIDECAR_FILE}: weights[{weight}].nnz {n} drops non-zero entries of {WEIGHTS_FILE}; "
                "the file and hubtool.json disagree"
            )
        deltas[weight] = _sparse(shapes[weight], flat[:n], values[:n], folder / WEIGHTS_FILE, weight)
    return deltas


def _keep_ratio(deltas: dict[str, Delta]) -> float | None:
    numel = sum(math.prod(d.shape) for d in deltas.values())
    return sum(d.nnz for d in deltas.values()) / numel if numel else None


def _read_adapter(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not folder.is_dir():
        raise HubError(f"{folder} is not a folder; expected a PEFT adapter folder")
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        pickles = sorted(p.name for pattern in _PICKLES for p in folder.glob(pattern))
        if pickles:
            raise HubError(
                f"{folder} holds only pickled weights ({', '.join(pickles)}); hubtool never unpickles, "
                f"expected {WEIGHTS_FILE} (re-save the adapter with safe_serialization=True)"
            )
        raise HubError(f"{folder}: missing {WEIGHTS_FILE}; expected a PEFT adapter folder")
    try:
        # NaN / Infinity literals parse; the field holding one says so (lora_alpha, alpha_pattern).
        config = safejson.loads((folder / CONFIG_FILE).read_bytes(), str(folder / CONFIG_FILE), allow_nan=True)
    except OSError as err:
        raise HubError(f"{folder / CONFIG_FILE}: cannot read: {err.strerror}") from None
    if not isinstance(config, dict):
        raise HubError(f"{folder / CONFIG_FILE}: expected a JSON object")
    try:
        tensors = load_file(weights)
    except (SafetensorError, OSError) as err:
        raise HubError(f"{weights}: not a readable safetensors file ({err})") from err
    if not tensors:
        raise HubError(f"{weights}: holds no tensors")
    return config, tensors


def _module_tensors(
    tensors: dict[str, torch.Tensor], suffixes: tuple[str, ...], path: Path
) -> dict[str, dict]:
    """{weight: {suffix: tensor}} for keys ``base_model.model.<module>.<suffix>``; other keys are refused."""
    pattern = re.compile(rf"{re.escape(PREFIX)}(.+)\.({'|'.join(map(re.escape, suffixes))})")
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = pattern.fullmatch(key)
        if match is None:
            expected = f"{PREFIX}<module>.<{'|'.join(suffixes)}>"
            raise HubError(f"{path / WEIGHTS_FILE}: unexpected tensor {key}; expected {expected}")
        grouped.setdefault(f"{match[1]}.weight", {})[match[2]] = tensor
    for weight, parts in grouped.items():
        missing = [s for s in suffixes if s not in parts]
        if missing:
            raise HubError(f"{path / WEIGHTS_FILE}: {weight} lacks {', '.join(missing)}")
    return grouped


def _lora_deltas(config: dict, tensors: dict[str, torch.Tensor], folder: Path):
    for field, what in _LORA_UNSUPPORTED.items():
        if config.get(field):
            raise HubError(f"{folder / CONFIG_FILE}: {field} is set; hubtool cannot import {what}")
    if config.get("bias", "none") != "none":
        raise HubError(
            f"{folder / CONFIG_FILE}: bias={config['bias']!r}; expected 'none' (biases are not weight deltas)"
        )
    if config.get("init_lora_weights", True) not in _LORA_PLAIN_INITS:
        raise HubError(
            f"{folder / CONFIG_FILE}: init_lora_weights={config['init_lora_weights']!r} rewrites the base "
            "weights; convert the adapter with PEFT's path_initial_model_for_weight_conversion first"
        )
    alpha_pattern = _pattern(config, "alpha_pattern", folder)
    rank_pattern = _pattern(config, "rank_pattern", folder)
    for weight, parts in _module_tensors(tensors, ("lora_A.weight", "lora_B.weight"), folder).items():
        A, B = parts["lora_A.weight"], parts["lora_B.weight"]  # A [r, in], B [out, r]
        if A.dim() != 2 or B.dim() != 2 or A.shape[0] != B.shape[1]:
            raise HubError(
                f"{folder / WEIGHTS_FILE}: {weight} has lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)}; "
                "expected [r, in] and [out, r] (only linear layers are supported)"
            )
        rank, module = A.shape[0], weight.removesuffix(".weight")
        key = _matching_key(alpha_pattern, module)
        field = f"alpha_pattern[{key!r}]" if key is not None else "lora_alpha"
        alpha = _finite_number(
            alpha_pattern[key] if key is not None else config.get("lora_alpha", 8), folder / CONFIG_FILE, field
        )
        if rank == 0:
            raise HubError(f"{folder / WEIGHTS_FILE}: {weight} has rank 0; expected lora_A [r, in] with r >= 1")
        # PEFT scales by alpha / r with r from the config: a file whose tensors have another rank would
        # load differently there (or not at all), so the two must agree.
        key = _matching_key(rank_pattern, module)
        r_field = f"rank_pattern[{key!r}]" if key is not None else "r"
        r_config = rank_pattern[key] if key is not None else config.get("r", 8)
        if isinstance(r_config, bool) or not isinstance(r_config, int) or r_config < 1:
            raise HubError(f"{folder / CONFIG_FILE}: {r_field}={repr(r_config)[:40]}; expected a whole number >= 1")
        if r_config != rank:
            raise HubError(
                f"{folder / CONFIG_FILE}: {r_field}={r_config}, but {weight} in {WEIGHTS_FILE} has rank {rank}"
            )
        scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        if config.get("fan_in_fan_out"):
            # Conv1D stores W as [in, out] and PEFT adds (B @ A)^T = A^T @ B^T: same form, factors swapped.
            A, B = B.T.contiguous(), A.T.contiguous()
        yield weight, LoraDelta(shape=(B.shape[0], A.shape[1]), A=A, B=B, scale=scale)


def _pattern(config: dict, field: str, folder: Path) -> dict[str, Any]:
    """alpha_pattern / rank_pattern: {regex: value}; PEFT matches each key as a regex."""
    pattern = config.get(field) or {}
    if not isinstance(pattern, dict):
        raise HubError(f"{folder / CONFIG_FILE}: {field}: expected an object {{module regex: value}}")
    for key in pattern:
        try:
            re.compile(rf"(.*\.)?({key})$")
        except re.error as err:
            raise HubError(f"{folder / CONFIG_FILE}: {field}[{key!r}]: not a valid regex ({err})") from None
    return pattern


def _matching_key(pattern: dict[str, Any], module: str) -> str | None:
    # PEFT's own rule: a pattern key matches a module name ending in ".<key>" (or equal to it).
    return next((k for k in pattern if re.match(rf"(.*\.)?({k})$", module)), None)


def _finite_number(value: Any, path: Path, field: str) -> float:
    """A finite JSON number: not a string ("16" is not what PEFT reads), null, a bool, NaN or Infinity."""
    if not finite(value):
        raise HubError(f"{path}: {field}={repr(value)[:40]}; expected a finite number")
    return float(value)


def _shira_entries(
    config: dict, tensors: dict, shapes: dict, folder: Path
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    if config.get("fan_in_fan_out"):
        raise HubError(
            f"{folder / CONFIG_FILE}: fan_in_fan_out is set; SHiRA import expects nn.Linear [out, in] weights"
        )
    entries = {}
    for weight, parts in _module_tensors(tensors, ("shira_weight", "shira_indices"), folder).items():
        coords, values = parts["shira_indices"], parts["shira_weight"]  # [2, nnz] (row, col), [nnz]
        if coords.dim() != 2 or coords.shape[0] != 2 or values.shape != (coords.shape[1],):
            raise HubError(
                f"{folder / WEIGHTS_FILE}: {weight} has shira_indices {tuple(coords.shape)} and "
                f"shira_weight {tuple(values.shape)}; expected [2, nnz] and [nnz]"
            )
        if weight not in shapes:
            raise HubError(f"{folder / WEIGHTS_FILE}: the base model has no weight {weight}")
        rows, cols = _integral(coords, folder / WEIGHTS_FILE, f"{weight} shira_indices")  # [2, nnz]
        if len(shapes[weight]) != 2 or bool((cols < 0).any() | (cols >= shapes[weight][1]).any()):
            raise HubError(
                f"{folder / WEIGHTS_FILE}: {weight} has column indices outside its shape {shapes[weight]}"
            )
        entries[weight] = (rows * shapes[weight][1] + cols, values)
    return entries


def _supertuning_entries(
    config: dict, tensors: dict, folder: Path
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    if config.get("r") is not None:
        raise HubError(
            f"{folder / CONFIG_FILE}: r={config['r']} (the Supra hybrid) adds a LoRA part; "
            "hubtool imports pure Super-Tuning (r null) only"
        )
    if config.get("save_precomputed_indices") is False:
        raise HubError(
            f"{folder / CONFIG_FILE}: save_precomputed_indices is false, so the file has no positions; "
            "re-save the adapter with save_precomputed_indices=True"
        )
    grouped = _module_tensors(tensors, ("supertuning_values", "supertuning_indices"), folder)
    return {
        w: (_integral(p["supertuning_indices"], folder / WEIGHTS_FILE, f"{w} supertuning_indices"),
            p["supertuning_values"])
        for w, p in grouped.items()
    }


def _integral(indices: torch.Tensor, path: Path, what: str) -> torch.Tensor:
    """Indices as int64. Float indices (SHiRA saves float32 on some platforms) must be whole numbers:
    NaN, infinities or fractions would otherwise be cast to arbitrary positions without a word."""
    if indices.dtype == torch.bool or indices.is_complex():
        raise HubError(f"{path}: {what}: expected integer indices, got {indices.dtype}")
    if indices.is_floating_point():
        wide = indices.to(torch.float64)
        bad = ~torch.isfinite(wide) | (wide != wide.round()) | (wide.abs() > 2**53)
        if bool(bad.any()):
            raise HubError(f"{path}: {what}: {int(bad.sum())} indices are NaN, infinite or not whole numbers")
        return wide.to(torch.int64)
    return indices.to(torch.int64)


def _sparse(
    shape: tuple[int, ...], flat: torch.Tensor, values: torch.Tensor, path: Path, weight: str
) -> SparseDelta:
    """Sorted unique positions; repeated positions are summed, as PEFT's scatter-add / sparse COO does."""
    if len(shape) != 2 or flat.dim() != 1 or values.shape != flat.shape:
        raise HubError(
            f"{path}: {weight} expected a 2-D weight and [nnz] positions/values, got {shape} / "
            f"{tuple(flat.shape)} / {tuple(values.shape)}"
        )
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= shape[0] * shape[1]):
        raise HubError(f"{path}: {weight} has positions outside its shape {tuple(shape)}")
    positions, inverse = torch.unique(flat, sorted=True, return_inverse=True)
    summed = torch.zeros(positions.numel(), dtype=values.dtype).index_add_(0, inverse, values)
    return SparseDelta(shape=(shape[0], shape[1]), indices=positions, values=summed)


def _read_sidecar(folder: Path) -> dict[str, Any]:
    """hubtool.json when it describes exactly this weights file, else {} (e.g. retrained with PEFT since)."""
    path = folder / SIDECAR_FILE
    if not path.is_file():
        return {}
    try:
        sidecar = safejson.loads(path.read_bytes(), str(path))
    except OSError as err:
        raise HubError(f"{path}: cannot read: {err.strerror}") from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
        raise HubError(f"{path}: expected format {SIDECAR_FORMAT!r}")
    if sidecar.get("weights_sha256") != sha256_file(folder / WEIGHTS_FILE):
        return {}
    weights = sidecar.get("weights")
    if (
        not isinstance(sidecar.get("expert"), dict)
        or not isinstance(weights, dict)
        or not all(isinstance(s, dict) for s in weights.values())
    ):
        raise HubError(f"{path}: expected 'expert' and 'weights' (each with shape and nnz) objects")
    from hubtool.format.header import MAX_DIM, MAX_NUMEL

    for weight, spec in weights.items():
        shape, nnz = spec.get("shape"), spec.get("nnz")
        if not (isinstance(shape, list) and len(shape) == 2 and all(_whole(x) and 0 < x <= MAX_DIM for x in shape)
                and math.prod(shape) <= MAX_NUMEL):
            raise HubError(f"{path}: weights[{weight}].shape: expected [out, in] positive integers, got {str(shape)[:60]}")
        if not (_whole(nnz) and 0 <= nnz <= math.prod(shape)):
            raise HubError(f"{path}: weights[{weight}].nnz: expected 0 to {math.prod(shape)}, got {str(nnz)[:60]}")
        if spec.get("fingerprint") is not None and not isinstance(spec["fingerprint"], str):
            raise HubError(f"{path}: weights[{weight}].fingerprint: expected a string or null")
    expert = sidecar["expert"]
    for key in ("name", "task", "kind", "base_model", "base_revision", "value_dtype", "targets"):
        if expert.get(key) is not None and not isinstance(expert[key], str):
            raise HubError(f"{path}: expert.{key}: expected a string or null, got {str(expert[key])[:60]}")
    if expert.get("keep_ratio") is not None and not (
        finite(expert["keep_ratio"]) and 0 <= expert["keep_ratio"] <= 1
    ):
        raise HubError(f"{path}: expert.keep_ratio: expected a number in [0, 1], got {str(expert['keep_ratio'])[:60]}")
    return sidecar


def _whole(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _sidecar_shapes(sidecar: dict) -> dict[str, tuple[int, ...]]:
    return {w: tuple(spec["shape"]) for w, spec in sidecar.get("weights", {}).items()}


# A Hub model id: "name" or "org/name" (huggingface_hub's rules, loosely: the Hub itself answers the rest).
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")


def _check_base_arg(base: str) -> None:
    """An explicit base (`hub import FOLDER --base B`) must be something a model can come from: an embedded
    name, a model folder here, or a Hub id; a path that is not here is refused before anything is read."""
    from hubtool.models import EMBEDDED

    if base in EMBEDDED:
        return
    path = Path(base).expanduser()
    expected = f"expected a model folder (with config.json), a Hub id (org/name) or one of {', '.join(sorted(EMBEDDED))}"
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise HubError(f"--base {base}: {path} holds no config.json; {expected}")
        return
    if path.exists():
        raise HubError(f"--base {base}: is a file; {expected}")
    if base.startswith(("/", ".", "~")) or "\\" in base or ".." in base or not _HUB_ID.fullmatch(base):
        raise HubError(f"--base {base}: no such folder; {expected}")


def _check_against_local_base(deltas: dict[str, Delta], base_model: str, folder: Path) -> None:
    """Every weight the adapter changes is one of its base's, with the base's shape, when the base is on this
    machine (a Hub id is checked when it is loaded): before anything is registered, not when it is applied."""
    from hubtool.apply import check_shapes, local_base_shapes

    base_shapes = local_base_shapes(base_model)
    if base_shapes is not None:
        check_shapes({w: tuple(d.shape) for w, d in deltas.items()}, base_shapes, str(folder / WEIGHTS_FILE),
                     base_model)  # fmt: skip


# --- export ------------------------------------------------------------------------------------------


def export_peft(
    expert: Expert,
    out_dir: str | Path,
    *,
    base_model_name_or_path: str | None = None,
    format: str | None = None,
    card: Callable[..., str] | None = None,
) -> Path:
    """Write ``expert`` as a PEFT adapter folder at ``out_dir`` (which must not exist yet); returns it.

    ``format``: "shira" or "supertuning" for sparse / block-sparse experts (default "shira"), "lora" for LoRA
    experts (the default for them). ``base_model_name_or_path`` defaults to the expert's base model.
    ``card``: hubtool.hub.card.export_card (`hub export` passes it) writes README.md, the model card; given
    by the caller because the card belongs to the hub layer, above this one. None: no README.md.
    """
    deltas = {w: d for w, d in expert.deltas.items() if d.nnz}
    fmt = format or ("lora" if deltas and all(d.kind == "lora" for d in deltas.values()) else "shira")
    if fmt not in FORMATS:
        raise HubError(f"export format {fmt!r} is unknown; expected one of {', '.join(FORMATS)}")
    if not deltas:
        raise HubError(f"expert {expert.name} has no entries to export")
    for weight, delta in deltas.items():
        if not weight.endswith(".weight") or len(delta.shape) != 2:
            raise HubError(
                f"expert {expert.name}: {weight} is not a 2-D '<module>.weight'; PEFT adapts linear weights"
            )
        expected = ("lora",) if fmt == "lora" else SPARSE_KINDS
        if delta.kind not in expected:
            raise HubError(
                f"expert {expert.name}: {weight} is a {type(delta).__name__}; format {fmt!r} takes "
                f"{'LoRA' if fmt == 'lora' else 'sparse or block-sparse'} deltas only"
            )
    base = base_model_name_or_path or expert.base_model
    # Padding builds a [out * in] mask per weight: the shapes must be the base's before that.
    from hubtool.apply import check_against_base

    check_against_base({w: d.shape for w, d in deltas.items()}, expert.base_model, f"expert {expert.name}")
    if fmt == "lora":
        config, tensors = _lora_export(deltas, base)
        counts = {w: d.nnz for w, d in deltas.items()}
    else:
        entries = {w: _flat_entries(d) for w, d in deltas.items()}
        counts = {w: flat.numel() for w, (flat, _) in entries.items()}
        shapes = {w: d.shape for w, d in deltas.items()}
        config, tensors = (_shira_export if fmt == "shira" else _supertuning_export)(entries, shapes, base)

    from safetensors.torch import save_file

    with atomic_folder(out_dir) as tmp:
        save_file(tensors, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        config.save_pretrained(str(tmp))
        # PEFT keeps target_modules as a set, written in the order of the process's string hash: sorted,
        # the same expert always exports to the same bytes (and a second `hub push` changes nothing).
        written = json.loads((tmp / CONFIG_FILE).read_text())
        if isinstance(written.get("target_modules"), list):
            written["target_modules"] = sorted(written["target_modules"])
            (tmp / CONFIG_FILE).write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")
        sidecar = _sidecar(expert, deltas, counts, sha256_file(tmp / WEIGHTS_FILE))
        (tmp / SIDECAR_FILE).write_text(json.dumps(sidecar, indent=2) + "\n")
        padded = sum(
            t.numel() for k, t in tensors.items() if k.endswith(("shira_weight", "supertuning_values"))
        )
        if card is not None:
            text = card(expert, peft_format=fmt, base=base, nnz=sum(counts.values()), stored=padded,
                        sidecar=SIDECAR_FILE)
            (tmp / "README.md").write_text(text, encoding="utf-8")
    return Path(out_dir).expanduser().absolute()


def _flat_entries(delta: SparseDelta | BlockSparseDelta) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted flat positions [nnz], fp32 values [nnz]); a block delta gives its tiles' entries inside W."""
    return delta.entries()


def _pad(
    flat: torch.Tensor, values: torch.Tensor, numel: int, total: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Append total - nnz zero-valued entries at the first positions outside the mask."""
    # The first `total` positions hold at most nnz of the mask, so at least total - nnz free ones:
    # a mask of that many, not of the whole weight.
    span = min(numel, total)
    free = torch.ones(span, dtype=torch.bool)
    free[flat[flat < span]] = False
    extra = free.nonzero().squeeze(1)[: total - flat.numel()]
    return torch.cat([flat, extra]), torch.cat([values, torch.zeros(extra.numel(), dtype=values.dtype)])


def _shira_export(entries: dict, shapes: dict, base: str):
    from peft import ShiraConfig

    # One global r gives every layer r * (out + in) entries: take the smallest r that holds every layer.
    r = max(max(1, -(-flat.numel() // sum(shapes[w]))) for w, (flat, _) in entries.items())
    tensors = {}
    for weight, (flat, values) in entries.items():
        out, inp = shapes[weight]
        if r * (out + inp) > out * inp:
            raise HubError(
                f"{weight}: SHiRA needs r * (out + in) = {r * (out + inp)} entries per layer, more than "
                f"its {out * inp}; export with format='supertuning' instead"
            )
        flat, values = _pad(flat, values, out * inp, r * (out + inp))
        module = PREFIX + weight.removesuffix(".weight")
        tensors[f"{module}.shira_weight"] = values.contiguous()
        tensors[f"{module}.shira_indices"] = torch.stack([flat // inp, flat % inp]).to(torch.int32)  # [2, n]
    modules = sorted(w.removesuffix(".weight") for w in entries)
    # The random mask PEFT draws while building the layers is overwritten by our stored indices on load.
    config = ShiraConfig(
        r=r, target_modules=modules, random_seed=0, base_model_name_or_path=base, inference_mode=True, task_type="CAUSAL_LM"
    )
    return config, tensors


def _supertuning_export(entries: dict, shapes: dict, base: str):
    from peft import SupertuningConfig

    # PEFT gives each layer int(numel * (1 - sparsity)) entries; pick the largest sparsity that holds all.
    def count(weight: str, sparsity: float) -> int:
        return int(math.prod(shapes[weight]) * (1 - sparsity))

    sparsity = 1.0 - max(flat.numel() / math.prod(shapes[w]) for w, (flat, _) in entries.items())
    while any(count(w, sparsity) < flat.numel() for w, (flat, _) in entries.items()):
        sparsity = math.nextafter(sparsity, -math.inf)  # float rounding in 1 - (1 - keep)
    sparsity = max(sparsity, 0.0)
    tensors = {}
    for weight, (flat, values) in entries.items():
        flat, values = _pad(flat, values, math.prod(shapes[weight]), count(weight, sparsity))
        module = PREFIX + weight.removesuffix(".weight")
        tensors[f"{module}.supertuning_values"] = values.contiguous()
        tensors[f"{module}.supertuning_indices"] = flat.to(torch.int32)
    modules = sorted(w.removesuffix(".weight") for w in entries)
    config = SupertuningConfig(
        target_modules=modules, sparsity=sparsity, base_model_name_or_path=base, inference_mode=True, task_type="CAUSAL_LM"
    )
    return config, tensors


def _lora_export(deltas: dict[str, LoraDelta], base: str):
    from peft import LoraConfig

    tensors, ranks, alphas = {}, {}, {}
    for weight, delta in deltas.items():
        module = weight.removesuffix(".weight")
        tensors[f"{PREFIX}{module}.lora_A.weight"] = delta.A.contiguous()  # [r, in]
        tensors[f"{PREFIX}{module}.lora_B.weight"] = delta.B.contiguous()  # [out, r]
        ranks[module], alphas[module] = delta.A.shape[0], delta.scale * delta.A.shape[0]  # scale = alpha / r
    first = next(iter(ranks))
    # Modules that differ from the first get exact-name patterns (escaped: PEFT matches them as regexes).
    rank_pattern = {re.escape(m): r for m, r in ranks.items() if r != ranks[first]}
    alpha_pattern = {re.escape(m): a for m, a in alphas.items() if a != alphas[first]}
    config = LoraConfig(
        r=ranks[first],
        lora_alpha=alphas[first],
        target_modules=sorted(ranks),
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        base_model_name_or_path=base,
        inference_mode=True,
        task_type="CAUSAL_LM",  # so AutoPeftModelForCausalLM can load the folder by itself
    )
    return config, tensors


def _sidecar(expert: Expert, deltas: dict[str, Delta], counts: dict[str, int], weights_sha256: str) -> dict:
    return {
        "format": SIDECAR_FORMAT,
        "version": 1,
        "weights_sha256": weights_sha256,
        "expert": {
            "name": expert.name,
            "task": expert.task,
            "kind": expert.kind,
            "base_model": expert.base_model,
            "base_revision": expert.base_revision,
            "keep_ratio": expert.keep_ratio,
            "value_dtype": expert.value_dtype,
            "targets": expert.targets,
        },
        "weights": {
            w: {"shape": list(d.shape), "nnz": counts[w], "fingerprint": d.fingerprint}
            for w, d in deltas.items()
        },
    }
