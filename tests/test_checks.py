"""hubtool.checks: the shared parsers of comma lists and dtype spellings (one implementation each)."""

from __future__ import annotations

import pytest

from hubtool import checks
from hubtool.errors import HubError


@pytest.mark.parametrize("value, expected", [
    (None, []), ("", []), ("qa", ["qa"]), (" qa , summarize ,", ["qa", "summarize"]),
    (["qa", "x,y", " "], ["qa", "x", "y"]), (("a,,b",), ["a", "b"]),
])  # fmt: skip
def test_items_splits_comma_lists_and_repeated_options(value, expected) -> None:
    assert checks.items(value) == expected


@pytest.mark.parametrize("spelling, name", [("bf16", "bfloat16"), ("FP16", "float16"), (" float32 ", "float32"),
                                            ("bfloat16", "bfloat16")])  # fmt: skip
def test_dtype_takes_short_and_long_spellings(spelling: str, name: str) -> None:
    assert checks.dtype(spelling) == name


@pytest.mark.parametrize("bad", ["int8", "", None, 16])
def test_dtype_refuses_others_naming_the_field(bad) -> None:
    with pytest.raises(HubError, match=r"^--out-dtype .*expected bf16, fp16 or fp32"):
        checks.dtype(bad, "--out-dtype")
