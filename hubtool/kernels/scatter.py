"""Add a delta into a weight in place: the one dispatch point between the torch and Triton paths.

apply_expert (and anything else that folds deltas into weights) calls these three functions. CPU
weights take the torch path in hubtool.kernels.reference; CUDA weights take the Triton kernels in
hubtool.kernels.triton_sparse when triton is installed, else the torch path too (it runs on any
device). Arithmetic is fp32 whatever the weight's dtype: each touched entry is rounded once.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import torch

from hubtool.kernels import reference


def scatter_add_(
    weight: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """weight.view(-1)[indices] += scale * values; weight [out, in], indices [nnz] unique int64."""
    kernels = _backend(weight)
    indices, values = indices.to(weight.device), values.to(weight.device)
    return _in_place(weight, lambda w: kernels.sparse_scatter_add_(w, indices, values, scale))


def block_add_(
    weight: torch.Tensor, tiles: torch.Tensor, values: torch.Tensor, block_size: int, scale: float = 1.0
) -> torch.Tensor:
    """Add tiles scale * values [n_tiles, B, B] at tile positions [n_tiles] of weight's tile grid."""
    kernels = _backend(weight)
    tiles, values = tiles.to(weight.device), values.to(weight.device)
    return _in_place(weight, lambda w: kernels.block_scatter_add_(w, tiles, values, block_size, scale))


def dense_add_(weight: torch.Tensor, delta: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """weight += scale * delta [out, in], computed in fp32 and rounded once to weight's dtype."""
    # Same arithmetic as the scatter kernels (multiply, then add; no fused alpha), so a dense delta
    # and the same delta stored sparse give bit-identical weights.
    delta = delta.to(device=weight.device, dtype=torch.float32)
    if weight.dtype == torch.float32 and scale == 1.0:
        return weight.add_(delta)  # the same single fp32 add, in place: no temporaries
    return weight.copy_(weight.float() + delta * scale)


def _in_place(weight: torch.Tensor, add_: Callable[[torch.Tensor], object]) -> torch.Tensor:
    """Run a kernel that needs a contiguous weight, and write back if `weight` is a strided view."""
    if weight.is_contiguous():
        add_(weight)
        return weight
    work = weight.contiguous()
    add_(work)
    return weight.copy_(work)


def _backend(weight: torch.Tensor) -> ModuleType:
    """triton_sparse for CUDA weights when triton runs here; reference (torch) otherwise."""
    if weight.is_cuda:
        from hubtool.kernels import triton_sparse  # imports without triton; kernels need it

        if triton_sparse.triton_available():
            return triton_sparse
    return reference
