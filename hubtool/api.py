"""Library glue behind `hub import` / `hub export`: move experts between files, PEFT folders and the catalog."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from hubtool.errors import HubError
from hubtool.fileio import scratch_dir
from hubtool.paths import models_dir, tmp_dir


def value_dtype_name(dtype: str | None) -> str | None:
    """"bf16" -> "bfloat16" (also fp16, fp32 and the long names); None stays None."""
    from hubtool import checks

    return None if dtype is None else checks.dtype(dtype)


def import_expert(
    path: str | os.PathLike,
    *,
    name: str | None = None,
    task: str | None = None,
    tags: Iterable[str] = (),
    base: str | None = None,
    dtype: str | None = None,
    catalog=None,
    trust_remote_code: bool = False,
):
    """Register a packed expert file, or a PEFT adapter folder converted to our format, in the catalog.

    `dtype` (bf16, fp16, fp32 or their long names) converts the values on the way in; by default a
    packed file keeps its value dtype and a PEFT folder its tensors' (a SHiRA's fp32 stays fp32).

    `base` names the base model of a PEFT folder (default: its adapter_config's); a packed file
    records its own base model, so giving `base` for one is an error. A base model's own code (its
    config's auto_map) runs only with trust_remote_code=True.
    """
    from hubtool.registry import Catalog

    value_dtype = value_dtype_name(dtype)
    path = Path(path).expanduser()
    if not path.exists():
        raise HubError(
            f"{path}: no such file or folder (expected a .safetensors expert or a PEFT adapter folder)"
        )
    if path.is_dir() and not (path / "adapter_config.json").is_file():
        raise HubError(f"{path}: not a PEFT adapter folder (expected adapter_config.json inside)")
    if path.is_file() and base is not None:
        raise HubError(
            f"--base {base!r}: {path} is a packed expert, which names its own base model; "
            "--base is for PEFT adapter folders"
        )
    if path.is_file():
        from hubtool.format.header import read_header

        header = read_header(path)  # torch-free: a wrong or truncated file fails in ~0.1 s, before any work
    cat = Catalog.open(catalog)
    if path.is_file() and value_dtype in (None, header["value_dtype"]):
        return cat.register(path, name=name, task=task, tags=tags)
    from hubtool.format import unpack
    from hubtool.interop.peft import import_peft
    from hubtool.models import base_id

    expert = unpack(path) if path.is_file() else import_peft(
        path,
        name=name,
        task=task,
        base=None if base is None else base_id(base),
        trust_remote_code=trust_remote_code,
    )
    return register_expert(cat, expert, value_dtype=value_dtype, name=name, task=task, tags=tags)


def register_expert(cat, expert, *, value_dtype: str | None = None, **register):
    """Pack an in-memory expert to a temporary file beside the blob store and register it
    (Catalog.register's keywords pass through); the catalog copies it into place."""
    from hubtool.format import pack

    # locked while in use: after a kill `hub verify --repair` knows it for a leftover
    with scratch_dir(tmp_dir(), "register-") as tmp:
        pack(expert, tmp / "expert.safetensors", value_dtype=value_dtype)
        return cat.register(tmp / "expert.safetensors", **register)


def export_expert(ref: str, out: str | os.PathLike, *, fmt: str = "peft", catalog=None, force: bool = False) -> Path:
    """Write an expert out of the catalog: `peft` (a folder PeftModel.from_pretrained loads) or `hubtool`
    (the packed file, byte for byte). Returns what was written. An existing `out` (a file, or a folder
    that is not empty) is an error unless force=True, which replaces it only once the new one is complete."""
    target = Path(out).expanduser().absolute()
    try:
        return _export(ref, out, fmt=fmt, catalog=catalog, force=force)
    except OSError as err:
        # The file system refused `out`, its folder or the temp beside it (/proc/x, a read-only folder, a full
        # disk): the message names --out, never the temp it was writing first.
        failed = Path(os.fsdecode(err.filename)).absolute() if err.filename is not None else None
        if failed is None or not (failed == target or failed.parent == target.parent or failed in target.parents
                                  or target in failed.parents):  # fmt: skip
            raise
        raise HubError(f"--out {out}: can't write there ({err.strerror or err}); expected a path in a writable "
                       "folder") from None


def _export(ref: str, out: str | os.PathLike, *, fmt: str, catalog, force: bool) -> Path:
    from hubtool.hub.pull import hub_download
    from hubtool.registry import Catalog

    if fmt not in ("peft", "hubtool"):
        raise HubError(f"--format {fmt!r}: expected 'peft' or 'hubtool'")
    cat = Catalog.open(catalog, download=hub_download())
    rec = cat.get(ref)
    into_folder = os.fspath(out).endswith(("/", os.sep))  # "out/" means a folder, even a new one
    out = Path(out).expanduser()
    if fmt == "hubtool":
        if out.is_dir() or into_folder:
            from hubtool.registry.lookup import NAME

            if not NAME.fullmatch(rec.name):  # a row edited by hand must not pick a path outside `out`
                raise HubError(f"{rec.ref}: catalog name {rec.name!r} is not a valid expert name; fix the row")
            out = out / f"{rec.name}-v{rec.version}.safetensors"
        if out.is_dir():
            raise HubError(f"--out {out}: is a folder; expected a file name (or a folder ending in '/')")
        _refuse_existing(out, force)
        from hubtool.registry.blobs import copy_verified

        copy_verified(cat.blob_path(rec), out, rec.sha256, rec.ref)  # a rename over the old file
        return out
    from hubtool.hub.card import export_card  # the model card, as `hub push` writes it
    from hubtool.interop.peft import export_peft

    _refuse_existing(out, force)
    if not force or not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return export_peft(cat.load(rec.ref), out, base_model_name_or_path=_loadable_base(rec.base_model),
                           card=export_card)
    # --force over a filled folder: write beside it, then swap, so a failed export leaves the old one. Both
    # live in one locked temp folder beside `out` (".NAME.tmp-XXXX", atomic_folder's name for it): after a
    # kill it is abandoned, and the next export to `out` removes it.
    import shutil

    from hubtool.fileio import locked_mkdtemp, stale_temp_folders

    out = out.absolute()
    for stale in stale_temp_folders(out):
        shutil.rmtree(stale, ignore_errors=True)
    fd, work = locked_mkdtemp(out.parent, f".{out.name}.tmp-")
    try:
        staging, old = work / "new", work / "old"
        export_peft(cat.load(rec.ref), staging, base_model_name_or_path=_loadable_base(rec.base_model),
                    card=export_card)
        os.rename(out, old)
        os.rename(staging, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.close(fd)
    return out


def _refuse_existing(out: Path, force: bool) -> None:
    """Never overwrite without being asked (huggingface_hub and transformers do, silently)."""
    if force or not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    what = "a folder that is not empty" if out.is_dir() else "a file"
    raise HubError(f"--out {out}: already exists ({what}); pass --force to replace it")


def _loadable_base(base_model: str) -> str:
    """What an exported adapter_config.json should name as base_model_name_or_path so that
    AutoPeftModelForCausalLM can load the base: an existing local folder as an absolute path, the
    embedded model as its converted folder (once converted), a Hub id unchanged."""
    from hubtool.models import EMBEDDED

    if base_model in EMBEDDED:
        folder = models_dir() / base_model
        return str(folder) if folder.is_dir() else base_model
    path = Path(base_model).expanduser()
    return str(path.resolve()) if path.is_dir() else base_model


def evaluate_expert(
    target: str | None,
    task: str,
    *,
    base: str | None = None,
    split: str = "test",
    limit: int | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    catalog=None,
    store: bool = True,
    trust_remote_code: bool = False,
    max_prompt_tokens: int | None = None,
) -> dict[str, float]:
    """Score an expert (catalog ref, packed file, PEFT folder) or a model folder, or with target=None the
    base model, on a task (prompts cut from the left to max_prompt_tokens when given). Metrics go to the catalog: on the expert's row, or as the base model's baseline.
    A model's own code (its config's auto_map) runs only with trust_remote_code=True."""
    from hubtool.apply import apply_expert
    from hubtool.data import load_task
    from hubtool.evaluate import score
    from hubtool.hub.pull import hub_download
    from hubtool.models import base_id, load_base, resolve_base
    from hubtool.registry import Catalog

    cat = Catalog.open(catalog, download=hub_download())
    expert, rec = None, None
    model_path = None
    if target is not None:
        path = Path(target)
        if path.is_dir() and (path / "adapter_config.json").is_file():
            from hubtool.interop.peft import import_peft

            expert = import_peft(path, trust_remote_code=trust_remote_code)
        elif path.is_dir():
            model_path = str(path)  # a composed model folder: evaluate it as it is
        elif path.is_file():
            from hubtool.format import unpack

            expert = unpack(path)
        else:
            rec = cat.get(target)
            expert = cat.load(rec.ref)
    base_name = model_path or base or (expert.base_model if expert is not None else None)
    if base_name is None:
        raise HubError("eval: give an expert or --base MODEL")
    # Before the model: a bad task name fails in a second, not after loading. A task trained on from a
    # file is found by name through the catalog's tasks table.
    task_data = load_task(task, catalog=cat)
    # fp32: an expert's small deltas would mostly round away if added into bf16 weights.
    import torch

    model, tokenizer = load_base(base_name, dtype=torch.float32, trust_remote_code=trust_remote_code)
    if tokenizer is None:
        raise HubError(f"base model {base_name}: no tokenizer files; evaluation needs one")
    if expert is not None:
        apply_expert(model, expert)
    scored = score(model, tokenizer, task_data, split=split, limit=limit, max_new_tokens=max_new_tokens,
                   batch_size=batch_size, max_prompt_tokens=max_prompt_tokens)
    if store:
        # Per-example rows beside the aggregates: what `hub eval --compare` pairs example by example.
        if rec is not None:
            scored.store(cat, rec.ref)
        elif target is None:
            scored.store(cat, base_model=base_id(base_name), base_revision=resolve_base(base_name)[1])
    return {**scored.metrics, **scored.run}


def compare(
    a: str,
    b: str,
    *,
    tasks: Iterable[str] | None = None,
    split: str = "test",
    draws: int = 2000,
    seed: int = 0,
    catalog=None,
) -> dict:
    """`hub eval --compare A,B`: two models' stored per-example results compared by a paired, stratified
    bootstrap (hubtool/stats.py). A and B are expert refs, or "base" for the base model of the other. B is
    the reference: difference = A - B, retention = 100 * sum_t A_t / sum_t B_t, gain = 100 * sum_t (A_t -
    base_t) / sum_t (B_t - base_t) (only when neither is "base", both share a base model and it has rows on
    every task). Over `tasks`, default every task both have rows for on `split`; per task and overall (the
    mean over tasks, equal weight), each as {value, low, high} (95% percentile interval)."""
    from hubtool.registry import Catalog
    from hubtool.stats import LEVEL, Bootstrap

    cat = Catalog.open(catalog)
    if a == "base" and b == "base":
        raise HubError("--compare base,base: expected at least one expert ref (base is the base model of the other)")
    records = {side: cat.get(ref) for side, ref in (("a", a), ("b", b)) if ref != "base"}
    base_models = {rec.base_model for rec in records.values()}
    # "base" means the other's base model; with two experts, the gain needs the one base model they share.
    base_model = next(iter(base_models)) if len(base_models) == 1 else None
    subjects = {side: (rec.ref, None) for side, rec in records.items()}
    for side, ref in (("a", a), ("b", b)):
        if ref == "base":
            subjects[side] = (None, base_model)

    def name(side: str) -> str:
        ref, model = subjects[side]
        return ref if ref is not None else f"base model {model}"

    def evaluated(side: str) -> dict[str, dict]:
        ref, model = subjects[side]
        return {e["task"]: e for e in cat.evaluations(ref, base_model=model, split=split)}

    have = {side: evaluated(side) for side in ("a", "b")}
    if tasks is None:
        chosen = sorted(set(have["a"]) & set(have["b"]))
        if not chosen:
            raise HubError(
                f"--compare {a},{b}: no task has per-example results ({split} split) for both; "
                f"`hub eval` each of them on the same task first"
            )
    else:
        chosen = list(dict.fromkeys(tasks))
        for task in chosen:
            for side in ("a", "b"):
                if task not in have[side]:
                    raise HubError(
                        f"--task {task}: {name(side)} has no per-example results on it ({split} split); "
                        f"run `hub eval` on it first"
                    )
    if len(records) == 2 and base_model is not None:
        base_has = {e["task"] for e in cat.evaluations(None, base_model=base_model, split=split)}
        if set(chosen) <= base_has:
            subjects["base"] = (None, base_model)
    # Rows named as messages name them; outcomes paired by (index in the split, key of the input): the
    # same index with another prompt is another example, and the bootstrap refuses it.
    label = {side: name(side) + (f" ({side.upper()})" if side != "base" else "") for side in subjects}
    outcomes = {}
    for side, (ref, model) in subjects.items():
        outcomes[label[side]] = {
            task: {(r["idx"], r["key"]): r["value"] for r in cat.examples(ref, task, base_model=model, split=split)}
            for task in chosen
        }
    try:
        boot = Bootstrap(outcomes, draws=draws, seed=seed)
    except HubError as why:
        raise HubError(f"--compare {a},{b}: {why}") from None

    def stats(over: list[str]) -> dict:
        out = {
            "a": boot.mean(label["a"], over).as_dict(),
            "b": boot.mean(label["b"], over).as_dict(),
            "difference": boot.diff(label["a"], label["b"], over).as_dict(),
            "retention": boot.retention(label["a"], label["b"], over).as_dict(),
            "base": None,
            "gain": None,
        }
        if "base" in label:
            out["base"] = boot.mean(label["base"], over).as_dict()
            out["gain"] = boot.gain(label["a"], label["b"], label["base"], over).as_dict()
        return out

    metrics = {task: {have[s][task]["metric"] for s in ("a", "b")} for task in chosen}
    return {
        "a": name("a"),
        "b": name("b"),
        "base": base_model if "base" in label else None,
        "split": split,
        "draws": draws,
        "seed": seed,
        "level": LEVEL,
        "convention": "difference = A - B; retention = 100 * sum A / sum B; gain = 100 * (A - base) / (B - base)",
        "tasks": [
            {"task": task, "metric": "/".join(sorted(metrics[task])), "n": boot.sizes[task], **stats([task])}
            for task in chosen
        ],
        "overall": {"tasks": len(chosen), "n": sum(boot.sizes[t] for t in chosen), **stats(chosen)},
    }
