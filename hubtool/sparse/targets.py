"""Which modules of a base model an adapter touches: `--targets qkv|attn|mlp|all|REGEX`.

Presets are architecture-agnostic: `qkv` means the attention query/key/value projections of
whatever model is loaded (Llama's q_proj/k_proj/v_proj, Phi-3's fused qkv_proj, GPT-2's c_attn,
GPT-NeoX's query_key_value, BERT's query/key/value, ...). Only linear-like modules are candidates:
torch Linear ([out, in] weight) and transformers' Conv1D (GPT-2; weight stored transposed, [in, out]).
"""

from __future__ import annotations

import re

from torch import nn

from hubtool.errors import HubError

# Leaf names of q/k/v projections across the architectures transformers ships.
QKV_NAMES = frozenset(
    {
        "q_proj",
        "k_proj",
        "v_proj",
        "qkv_proj",
        "c_attn",
        "query_key_value",
        "Wqkv",
        "query",
        "key",
        "value",
        "q_lin",
        "k_lin",
        "v_lin",
        "in_proj",
    }
)
_ATTN_PARENT = re.compile(r"attn|attention", re.IGNORECASE)
_MLP_PARENT = re.compile(r"mlp|feed_forward|ffn|experts?$", re.IGNORECASE)
_NEVER = re.compile(r"(^|\.)(lm_head|embed_out|output_layer|score|classifier)$")


def is_linear_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def find_targets(model: nn.Module, targets: str) -> list[str]:
    """Module names (``model.layers.0.self_attn.q_proj``) selected by a preset or a regex, in model order.

    Raises HubError naming the linear modules that do exist when nothing matches.
    """
    matcher = _preset(targets)
    linear = [name for name, m in model.named_modules() if is_linear_like(m) and not _NEVER.search(name)]
    chosen = [name for name in linear if matcher(name)]
    if not chosen:
        leaves = sorted({name.rsplit(".", 1)[-1] for name in linear})
        raise HubError(
            f"targets {targets!r} match no linear module of {type(model).__name__}; "
            f"its linear modules are named: {', '.join(leaves) or '(none)'}"
        )
    return chosen


def target_shapes(model: nn.Module, targets: str) -> dict[str, tuple[int, int]]:
    """Module name -> its weight's [out, in] (Conv1D's stored [in, out] read back), for find_targets'
    choice; works on a model built on the meta device, so before any weight is loaded."""
    out = {}
    for name in find_targets(model, targets):
        module = model.get_submodule(name)
        rows, cols = module.weight.shape[:2]
        out[name] = (int(cols), int(rows)) if type(module).__name__ == "Conv1D" else (int(rows), int(cols))
    return out


def _preset(targets: str):
    if not isinstance(targets, str) or not targets.strip():  # an empty regex would match every module
        raise HubError(f"targets {targets!r}: expected qkv, attn, mlp, all or a regex over module names")
    parents = lambda name: name.split(".")[:-1]
    if targets == "qkv":
        return lambda name: name.rsplit(".", 1)[-1] in QKV_NAMES and _inside(parents(name), _ATTN_PARENT)
    if targets == "attn":
        return lambda name: _inside(parents(name), _ATTN_PARENT)
    if targets == "mlp":
        return lambda name: _inside(parents(name), _MLP_PARENT)
    if targets == "all":
        return lambda name: True
    try:
        pattern = re.compile(targets)
    except re.error as err:
        raise HubError(
            f"targets: {targets!r} is neither qkv/attn/mlp/all nor a valid regex ({err})"
        ) from None
    return lambda name: pattern.search(name) is not None


def _inside(parents: list[str], container: re.Pattern[str]) -> bool:
    return any(container.search(p) for p in parents)
