"""The delta data model: Expert, its delta kinds (kinds.py: the registry) and the tile grid (see deltas.py).

Merge methods, apply, PEFT interop and the packed format all work on these classes. Names are bound
lazily: `hubtool.delta.kinds` (what the catalog and the format header read) stays free of torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from hubtool.delta.kinds import DELTA_KINDS, EXPERT_KINDS, KIND, SPARSE_KINDS, Kind, get_kind

_LAZY = {
    "DELTA_TYPES": "hubtool.delta.deltas",
    "BlockSparseDelta": "hubtool.delta.deltas",
    "Delta": "hubtool.delta.deltas",
    "Expert": "hubtool.delta.deltas",
    "FullDelta": "hubtool.delta.deltas",
    "LoraDelta": "hubtool.delta.deltas",
    "SparseDelta": "hubtool.delta.deltas",
    "TileGrid": "hubtool.delta.grid",
}

__all__ = [
    "DELTA_KINDS",
    "DELTA_TYPES",
    "EXPERT_KINDS",
    "KIND",
    "SPARSE_KINDS",
    "BlockSparseDelta",
    "Delta",
    "Expert",
    "FullDelta",
    "Kind",
    "LoraDelta",
    "SparseDelta",
    "TileGrid",
    "get_kind",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'hubtool.delta' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
