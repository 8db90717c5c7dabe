"""json.loads for text that came from a file: every failure is one HubError naming the file and field.

Python's json reader fails in ways that are not ValueError-shaped user errors: a 5000-digit integer
raises ValueError from the int-str limit, 100,000 nested brackets raise RecursionError, and a
1000-deep value parses but later breaks whatever walks it (json.dumps when the catalog stores it,
Rich when it prints it). Here depth is capped (MAX_DEPTH), integers are capped in size (MAX_INT_DIGITS:
SQLite and float() take at most ~19 and ~308 digits), and NaN / Infinity literals are refused unless
asked for. Stdlib only: hubtool.format.header uses it and must stay torch-free.

It is also the JSON reader of `hub serve`'s request bodies (hubtool/hub/server/http.py): there `error` makes
a 400 instead of a HubError, the depth cap is the server's, and lone surrogates are refused.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from hubtool.errors import HubError

MAX_DEPTH = 32  # deepest real value: a PEFT config inside an expert's config, ~5 levels
# Far above any count or size a file can justify (those are checked against the file itself), far
# below Python's 4300-digit int-str limit, whose ValueError would otherwise escape as a bug.
MAX_INT_DIGITS = 1000


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits")
    return int(text)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def loads(
    text: str | bytes, what: str, *, error: Callable[[str], Exception] = HubError, max_depth: int = MAX_DEPTH,
    allow_nan: bool = False, allow_surrogates: bool = True,
) -> Any:
    """The JSON value of `text`, else `error(f"{what}: ...")` saying what is wrong. `error` is an exception
    type or any callable that makes one from the message. Without `allow_surrogates`, a string or key
    holding an unpaired surrogate (JSON's "\\ud800" escape: no UTF-8 encoder can write it) is refused too."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as err:
            raise error(f"{what}: not UTF-8 text (byte {err.start})") from None
    kwargs: dict[str, Any] = {"parse_int": _parse_int}
    if not allow_nan:
        kwargs["parse_constant"] = _refuse_constant
    try:
        value = json.loads(text, **kwargs)
    except RecursionError:
        raise error(f"{what}: JSON nested too deeply (more than {max_depth} levels)") from None
    except ValueError as err:  # JSONDecodeError, _parse_int's and _refuse_constant's refusals
        raise error(f"{what}: not valid JSON ({' '.join(str(err).split())[:200]})") from None
    check_depth(value, what, error=error, max_depth=max_depth, allow_surrogates=allow_surrogates)
    return value


def check_depth(value: Any, what: str, *, error: Callable[[str], Exception] = HubError,
                max_depth: int = MAX_DEPTH, max_nodes: int | None = None, allow_surrogates: bool = True) -> None:
    """Refuse containers nested more than max_depth deep (iterative: deep input cannot blow the stack),
    with max_nodes, more values than that (YAML aliases make a small file a huge tree), and without
    allow_surrogates, strings and keys that are not valid Unicode (an unpaired surrogate)."""
    stack = [(value, 1)]
    seen = 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if max_nodes is not None and seen > max_nodes:
            raise error(f"{what}: more than {max_nodes} values (YAML aliases expanding?)")
        if isinstance(item, str):
            if not allow_surrogates:
                _check_unicode(item, what, error)
            continue
        if isinstance(item, dict):
            if not allow_surrogates:
                for key in item:
                    if isinstance(key, str):
                        _check_unicode(key, what, error)
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            raise error(f"{what}: JSON nested too deeply (more than {max_depth} levels)")
        stack.extend((child, depth + 1) for child in children)


def _check_unicode(text: str, what: str, error: Callable[[str], Exception]) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"{what}: holds an unpaired surrogate (\\ud800-\\udfff)") from None


def finite(value: Any) -> bool:
    """A JSON number (not a bool) that float() can hold and that is not NaN or infinite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False
