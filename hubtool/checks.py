"""The rules for numeric settings, declared once: the CLI's option parsers (hubtool.cli._common) and the
library API (hubtool.train, hubtool.evaluate, ...) both call these, so `hub train --batch-size 0` and
`hubtool.train(..., batch_size=0)` fail with the same message naming the setting.

Stdlib only (imported by `hub --help`).
"""

from __future__ import annotations

import math
from typing import Any

from hubtool.errors import HubError, shown

MAX_COUNT = 2**31 - 1  # steps, examples, tokens, batch sizes: larger is a typo, not a plan
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit



def count(value: Any, field: str, *, low: int = 1, high: int = MAX_COUNT) -> int:
    """A whole number in [low, high] (bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        rule = f"a whole number of at least {low}" if high == MAX_COUNT else f"a whole number in [{low}, {high}]"
        raise HubError(f"{field} {shown(value, 40)}: expected {rule}")
    return value


def optional_count(value: Any, field: str, *, low: int = 1, high: int = MAX_COUNT) -> int | None:
    return None if value is None else count(value, field, low=low, high=high)


def seed(value: Any, field: str = "seed") -> int:
    return count(value, field, low=0, high=MAX_SEED)


def number(value: Any, field: str, *, low: float | None = None, low_open: bool = False,
           high: float | None = None) -> float:
    """A finite number, optionally bounded: low < value (low_open) or low <= value, and value <= high."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    try:
        x = float(value) if ok else math.nan
    except OverflowError:
        x = math.nan
    if not math.isfinite(x) or (low is not None and (x <= low if low_open else x < low)) or (
        high is not None and x > high
    ):
        if low is None and high is None:
            rule = "a finite number"
        elif high is None:
            rule = f"a number {'>' if low_open else '>='} {low:g}"
        else:
            rule = f"a number in {'(' if low_open else '['}{low:g}, {high:g}]"
        raise HubError(f"{field} {shown(value, 40)}: expected {rule}")
    return x


def positive(value: Any, field: str) -> float:
    return number(value, field, low=0.0, low_open=True)


def optional_positive(value: Any, field: str) -> float | None:
    return None if value is None else positive(value, field)


def ratio(value: Any, field: str) -> float:
    """A fraction in (0, 1]: keep ratios, densities."""
    return number(value, field, low=0.0, low_open=True, high=1.0)


def items(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """A comma list, or a list of comma lists (a repeatable option): "qa, summarize" / ["qa", "x,y"] ->
    the stripped, non-empty names in order."""
    if value is None:
        return []
    parts = value.split(",") if isinstance(value, str) else [p for v in value for p in str(v).split(",")]
    return [p.strip() for p in parts if p.strip()]


# dtype spellings users type (PyTorch's and the short ones) -> the names the file format and recipes store
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "bfloat16": "bfloat16", "float16": "float16",
          "float32": "float32"}  # fmt: skip


def dtype(value: Any, field: str = "--dtype") -> str:
    """"bf16" -> "bfloat16" (also fp16, fp32 and the long names, any case)."""
    key = value.strip().lower() if isinstance(value, str) else None
    if key not in DTYPES:
        raise HubError(f"{field} {shown(value, 40)}: expected bf16, fp16 or fp32 (or bfloat16, float16, float32)")
    return DTYPES[key]
