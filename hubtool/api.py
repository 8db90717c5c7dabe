"""Library glue behind `hub import` / `hub export`: move experts between files, PEFT folders and the catalog."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from hubtool.errors import HubError
from hubtool.paths import hub_home


def import_expert(path: str | os.PathLike, *, name: str | None = None, task: str | None = None,
                  tags: Iterable[str] = (), catalog=None):
    """Register a packed expert file, or a PEFT adapter folder converted to our format, in the catalog."""
    from hubtool.registry import Catalog

    cat = catalog if hasattr(catalog, "register") else Catalog(catalog)
    path = Path(path)
    if path.is_dir():
        if not (path / "adapter_config.json").is_file():
            raise HubError(f"{path}: not a PEFT adapter folder (expected adapter_config.json inside)")
        from hubtool.format import pack
        from hubtool.interop.peft import import_peft

        expert = import_peft(path, name=name, task=task)
        # Pack to a temporary file beside the blob store; the catalog copies it into place.
        tmp_dir = hub_home() / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".safetensors", dir=tmp_dir)
        os.close(fd)
        try:
            pack(expert, tmp)
            return cat.register(tmp, name=name, task=task, tags=tags)
        finally:
            Path(tmp).unlink(missing_ok=True)
    if path.is_file():
        return cat.register(path, name=name, task=task, tags=tags)
    raise HubError(f"{path}: no such file or folder (expected a .safetensors expert or a PEFT adapter folder)")


def export_expert(ref: str, out: str | os.PathLike, *, fmt: str = "peft", catalog=None) -> Path:
    """Write an expert out of the catalog: `peft` (a folder PeftModel.from_pretrained loads) or `hubtool` (the packed file)."""
    from hubtool.registry import Catalog

    cat = catalog if hasattr(catalog, "get") else Catalog(catalog)
    rec = cat.get(ref)
    out = Path(out)
    if fmt == "hubtool":
        if out.is_dir():
            out = out / f"{rec.name}-v{rec.version}.safetensors"
        tmp = out.with_name(out.name + ".tmp")
        shutil.copyfile(cat.blob_path(rec), tmp)
        os.replace(tmp, out)
        return out
    if fmt == "peft":
        from hubtool.interop.peft import export_peft

        export_peft(cat.load(rec.ref), out, base_model_name_or_path=rec.base_model)
        return out
    raise HubError(f"--format {fmt!r}: expected 'peft' or 'hubtool'")


# Keys of evaluate()'s result that describe the run, not the model's quality; not stored as metrics.
_RUN_KEYS = ("examples", "examples_per_s", "seconds", "n")


def evaluate_expert(target: str | None, task: str, *, base: str | None = None, split: str = "test",
                    limit: int | None = None, max_new_tokens: int = 64, batch_size: int = 8,
                    catalog=None, store: bool = True) -> dict[str, float]:
    """Score an expert (catalog ref, packed file, PEFT folder) or a model folder, or with target=None the
    base model, on a task. Metrics go to the catalog: on the expert's row, or as the base model's baseline."""
    from hubtool.apply import apply_expert
    from hubtool.evaluate import evaluate
    from hubtool.models import base_id, load_base, resolve_base
    from hubtool.registry import Catalog

    cat = catalog if hasattr(catalog, "get") else Catalog(catalog)
    expert, rec = None, None
    model_path = None
    if target is not None:
        path = Path(target)
        if path.is_dir() and (path / "adapter_config.json").is_file():
            from hubtool.interop.peft import import_peft

            expert = import_peft(path)
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
    model, tokenizer = load_base(base_name)
    if expert is not None:
        apply_expert(model, expert)
    result = evaluate(model, tokenizer, task, split=split, limit=limit, max_new_tokens=max_new_tokens,
                      batch_size=batch_size)
    metrics = {k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and k not in _RUN_KEYS}
    if store:
        if rec is not None:
            cat.set_metrics(rec.ref, task, metrics)
        elif target is None:
            _, revision = resolve_base(base_name)
            cat.set_base_metrics(base_id(base_name), task, metrics, revision=revision)
    return {**metrics, **{k: v for k, v in result.items() if k in _RUN_KEYS}}
