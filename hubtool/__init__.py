"""hubtool: a hub for sparse parameter-efficient experts.

The public API is imported lazily so `import hubtool` (and `hub --help`) stays fast:
    from hubtool import Catalog, train, compose, evaluate, pack, unpack, apply_expert
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "Catalog": "hubtool.registry",
    "Expert": "hubtool.format",
    "pack": "hubtool.format",
    "unpack": "hubtool.format",
    "apply_expert": "hubtool.apply",
    "train": "hubtool.train",
    "AdapterConfig": "hubtool.sparse.config",  # train(task, adapter=AdapterConfig(...), training=TrainConfig(...))
    "TrainConfig": "hubtool.sparse.config",
    "compose": "hubtool.merge.compose",
    "evaluate": "hubtool.evaluate",
    "load_base": "hubtool.models",
    "import_expert": "hubtool.api",
    "export_expert": "hubtool.api",
    "push": "hubtool.hub.push",
    "pull": "hubtool.hub.pull",
    "HubError": "hubtool.errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hubtool' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
