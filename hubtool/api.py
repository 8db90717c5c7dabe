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
