"""The adapter kinds: one registry, one name each (no torch import here).

A *kind* is how an expert adapts its base weights: `sparse`, `block-sparse`, `lora` or `full`. The same
word is `hub train --kind`, `AdapterConfig.kind`, the catalog's `kind` column, the packed file's `kind`
and its per-weight `delta` (docs/format.md), and the experiment presets' kinds. Everything that varies by
kind starts here:

    KIND[name].delta_type  the Delta class (hubtool.delta.deltas), its packed tensors and their checks
    KIND[name].sparse      whether it keeps a set of positions (a mask): sparse and block-sparse
    KIND[name].lr          `hub train`'s default learning rate (the paper's)
    KIND[name].legacy      the names format-version-1 files may use for it (read, never written)

The packed codec (hubtool.format.packed: CODECS) and the trainable layers (hubtool.sparse.layers:
LAYER_FACTORIES) sit in layers above this one (pyproject.toml's import-linter contracts), so they key
their tables by this registry and refuse to import when a kind lacks an entry (tests/test_delta.py
checks every table against it). Adding a kind: its Delta class and its entry here, then its codec and
its layer, which those checks name.
"""

from __future__ import annotations

from dataclasses import dataclass

from hubtool.errors import HubError, shown


@dataclass(frozen=True)
class Kind:
    name: str
    delta: str  # class name in hubtool.delta.deltas (named, not imported: this module stays torch-free)
    sparse: bool  # keeps a set of positions (masked); LoRA and full deltas cover every entry of W
    lr: float  # default peak learning rate of `hub train --kind NAME`
    legacy: tuple[str, ...] = ()  # this kind's names in format-version-1 files
    doc: str = ""

    @property
    def delta_type(self) -> type:
        from hubtool.delta import deltas  # torch: only when a delta is built

        return getattr(deltas, self.delta)


# The paper's learning rates: 1e-4 for sparse adapters and LoRA, 3e-5 for full fine-tuning.
KIND: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("sparse", "SparseDelta", True, 1e-4,
             doc="the kept entries of W, exactly keep_ratio of each weight"),
        Kind("block-sparse", "BlockSparseDelta", True, 1e-4, legacy=("block",),
             doc="the kept B x B tiles of W"),
        Kind("lora", "LoraDelta", False, 1e-4, doc="scale * B @ A of rank r"),
        Kind("full", "FullDelta", False, 3e-5, legacy=("dense", "full-delta"),
             doc="a dense delta: a full fine-tune's W - W0"),
    )
}  # fmt: skip

MERGED = "merged"  # an expert kind, not an adapter kind: a merge holds whatever its parents held
DELTA_KINDS: tuple[str, ...] = tuple(KIND)
EXPERT_KINDS: tuple[str, ...] = (*DELTA_KINDS, MERGED)
SPARSE_KINDS: tuple[str, ...] = tuple(k for k, spec in KIND.items() if spec.sparse)
# Experts whose files keep positions: the sparse kinds, and merges (whose positions are their parents').
MASKED_EXPERT_KINDS: tuple[str, ...] = (*SPARSE_KINDS, MERGED)
DEFAULT_LR: dict[str, float] = {k: spec.lr for k, spec in KIND.items()}
# Old name -> kind, for format-version-1 files (and catalog queries that still say "full-delta").
LEGACY_NAMES: dict[str, str] = {old: k for k, spec in KIND.items() for old in spec.legacy}


def check_table(table: object, where: str) -> None:
    """A table keyed by kind (a codec, a layer factory) covers exactly the registry's kinds."""
    missing, extra = set(DELTA_KINDS) - set(table), set(table) - set(DELTA_KINDS)
    if missing or extra:
        raise RuntimeError(f"{where}: no entry for kinds {sorted(missing)}; entries for unknown kinds {sorted(extra)}"
                           " (hubtool.delta.kinds is the list)")


def get_kind(name: object, option: str = "--kind") -> Kind:
    """The registry entry of `name`; a HubError naming `option` and the kinds otherwise."""
    spec = KIND.get(name) if isinstance(name, str) else None
    if spec is None:
        raise HubError(f"{option} {shown(name, 40)}: expected one of {', '.join(DELTA_KINDS)}")
    return spec
