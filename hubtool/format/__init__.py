"""The packed expert format: one self-describing .safetensors file per expert (docs/format.md).

Names are imported lazily: `from hubtool.format.header import read_header` (what the catalog and
`hub list` use) must not pull in torch through this package's __init__.
"""

from __future__ import annotations

import importlib
from typing import Any

# Bound eagerly (the module is torch-free at import): a lazy name equal to its submodule's name
# would be shadowed by the submodule once anything imports hubtool.format.fingerprint.
from hubtool.format.fingerprint import fingerprint as fingerprint

_LAZY = {
    "KINDS": "hubtool.format.header",
    "ENCODINGS": "hubtool.format.header",
    "read_header": "hubtool.format.header",
    # The data model lives in hubtool.delta; these names are re-exported for convenience.
    "BlockSparseDelta": "hubtool.delta",
    "Delta": "hubtool.delta",
    "FullDelta": "hubtool.delta",
    "Expert": "hubtool.delta",
    "LoraDelta": "hubtool.delta",
    "SparseDelta": "hubtool.delta",
    "ExpertReader": "hubtool.format.packed",
    "pack": "hubtool.format.packed",
    "pack_bytes": "hubtool.format.packed",
    "unpack": "hubtool.format.packed",
}

__all__ = [
    "ENCODINGS",
    "KINDS",
    "BlockSparseDelta",
    "Delta",
    "Expert",
    "ExpertReader",
    "FullDelta",
    "LoraDelta",
    "SparseDelta",
    "fingerprint",
    "pack",
    "pack_bytes",
    "read_header",
    "unpack",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'hubtool.format' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


def __dir__() -> list[str]:
    return __all__
