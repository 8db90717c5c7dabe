"""Merging experts: methods (a registry of small functions), the plan, the streaming executor.

    from hubtool.merge import compose, METHODS
    compose(tasks=["qa", "summarize"], out="merged")

Layout: recipe.py (what to merge, as YAML), plan.py (choosing experts, mapping weights), methods.py
(one function per merge method), execute.py (streaming shard by shard), compose.py (the API).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "METHODS": "hubtool.merge.methods",
    "merge_method": "hubtool.merge.methods",
    "Recipe": "hubtool.merge.recipe",
    "make_plan": "hubtool.merge.plan",
    "compose": "hubtool.merge.compose",
    "evaluate_result": "hubtool.merge.compose",
    "ComposeResult": "hubtool.merge.compose",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hubtool.merge' has no attribute {name!r}")
