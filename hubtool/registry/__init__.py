"""The catalog of experts: SQL tables, content-addressed blobs, migrations.

`from hubtool.registry import Catalog` must stay cheap (it is on `hub list`'s path): no torch,
transformers or alembic at import time. The names below are imported lazily, so that importing a
submodule that needs no SQLAlchemy (fastlist, records, where) does not pay for it either.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Catalog": "hubtool.registry.catalog",
    "parse_ref": "hubtool.registry.lookup",
    "ExpertRecord": "hubtool.registry.records",
    "TaskRecord": "hubtool.registry.records",
    "VerifyReport": "hubtool.registry.records",
}

__all__ = ["Catalog", "ExpertRecord", "TaskRecord", "VerifyReport", "parse_ref"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hubtool.registry' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
