"""Triton kernels for sparse deltas: the GPU path of apply and of sparse/block-sparse training.

Same API and layouts as hubtool.kernels.reference (read its docstring first); each kernel here must
agree with its reference function, which tests/test_kernels.py checks under TRITON_INTERPRET=1.

  _scatter_add_kernel        one program per BLOCK kept entries: W[pos] += scale * v
  _grad_values_kernel        one program per BLOCK kept entries, loops over N in tiles:
                             grad[k] = sum_n g[n, row_k] * x[n, col_k]  (no [out, in] buffer)
  _block_scatter_add_kernel  one program per tile: W[tile] += scale * v[t], masked at W's edges
  _block_grad_kernel         one program per tile, loops over N in chunks: g[:, rows]ᵀ @ x[:, cols]

Indices are trusted (the format reader validated range, order and uniqueness). Uniqueness is what
lets the scatter kernels use a plain load-add-store instead of atomics: no two programs write one
entry. Importing this module without triton works; calling a kernel then raises ImportError.
TRITON_INTERPRET=1 (run on CPU tensors) must be set before triton is first imported: triton.jit
picks interpreter or compiler when each kernel, including triton.language's own, is defined.
"""

from __future__ import annotations  # keeps `tl.constexpr` annotations unevaluated without triton

import os

import torch

from hubtool.kernels import reference

try:
    import triton
    import triton.language as tl
except ImportError:  # the `gpu` extra is not installed
    triton = None
    tl = None

_SPARSE_BLOCK = 128  # kept entries per program
_N_TILE = 32  # rows of g and x read per loop step


def triton_available() -> bool:
    """True when the Triton kernels can run here: triton is installed and there is a GPU or the
    interpreter (TRITON_INTERPRET=1, CPU tensors) is on."""
    if triton is None:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") == "1"


def _jit(fn):
    return triton.jit(fn) if triton is not None else fn


# --- kernels ------------------------------------------------------------------------------------


@_jit
def _scatter_add_kernel(w_ptr, idx_ptr, val_ptr, nnz, scale, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < nnz
    pos = tl.load(idx_ptr + offs, mask=ok, other=0)  # int64 flat positions into W
    v = tl.load(val_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + pos, mask=ok, other=0.0).to(tl.float32)
    tl.store(w_ptr + pos, (w + v * scale).to(w_ptr.dtype.element_ty), mask=ok)


@_jit
def _grad_values_kernel(
    g_ptr, x_ptr, idx_ptr, out_ptr, nnz, n_rows, n_out, n_in, BLOCK: tl.constexpr, N_TILE: tl.constexpr
):
    # g [n_rows, n_out] and x [n_rows, n_in] are contiguous; out [nnz] fp32.
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < nnz
    pos = tl.load(idx_ptr + offs, mask=ok, other=0)
    row, col = pos // n_in, pos % n_in  # [BLOCK] each
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for n0 in range(0, n_rows, N_TILE):
        n = n0 + tl.arange(0, N_TILE).to(tl.int64)  # [N_TILE]
        both = (n < n_rows)[:, None] & ok[None, :]  # [N_TILE, BLOCK]
        # Sorted positions mean neighbouring entries share rows of g: those loads hit cache.
        gv = tl.load(g_ptr + n[:, None] * n_out + row[None, :], mask=both, other=0.0)
        xv = tl.load(x_ptr + n[:, None] * n_in + col[None, :], mask=both, other=0.0)
        acc += tl.sum(gv.to(tl.float32) * xv.to(tl.float32), axis=0)
    tl.store(out_ptr + offs, acc, mask=ok)


@_jit
def _block_scatter_add_kernel(
    w_ptr, tiles_ptr, val_ptr, n_out, n_in, grid_cols, scale, B: tl.constexpr, BP: tl.constexpr
):
    # BP = B rounded up to a power of two (tl.arange needs one); lanes >= B are masked off.
    t = tl.program_id(0).to(tl.int64)
    p = tl.load(tiles_ptr + t)
    i = tl.arange(0, BP)
    rows, cols = (p // grid_cols) * B + i, (p % grid_cols) * B + i
    r_ok, c_ok = (i < B) & (rows < n_out), (i < B) & (cols < n_in)
    ok = r_ok[:, None] & c_ok[None, :]  # [BP, BP]
    v = tl.load(val_ptr + t * B * B + i[:, None] * B + i[None, :], mask=ok, other=0.0)
    w_at = w_ptr + rows[:, None] * n_in + cols[None, :]
    w = tl.load(w_at, mask=ok, other=0.0).to(tl.float32)
    tl.store(w_at, (w + v.to(tl.float32) * scale).to(w_ptr.dtype.element_ty), mask=ok)


@_jit
def _block_grad_kernel(
    g_ptr,
    x_ptr,
    tiles_ptr,
    out_ptr,
    n_rows,
    n_out,
    n_in,
    grid_cols,
    B: tl.constexpr,
    BP: tl.constexpr,
    N_TILE: tl.constexpr,
    USE_DOT: tl.constexpr,
):
    # out[t] [B, B] = g[:, rows]ᵀ @ x[:, cols] over all n_rows; g, x contiguous; out fp32.
    t = tl.program_id(0).to(tl.int64)
    p = tl.load(tiles_ptr + t)
    i = tl.arange(0, BP)
    rows, cols = (p // grid_cols) * B + i, (p % grid_cols) * B + i
    r_ok, c_ok = (i < B) & (rows < n_out), (i < B) & (cols < n_in)
    acc = tl.zeros([BP, BP], dtype=tl.float32)
    for n0 in range(0, n_rows, N_TILE):
        n = n0 + tl.arange(0, N_TILE).to(tl.int64)
        n_ok = n < n_rows
        gt = tl.load(
            g_ptr + n[None, :] * n_out + rows[:, None], mask=r_ok[:, None] & n_ok[None, :], other=0.0
        )
        xt = tl.load(x_ptr + n[:, None] * n_in + cols[None, :], mask=n_ok[:, None] & c_ok[None, :], other=0.0)
        if USE_DOT:  # tensor cores; fp32 inputs in full precision so results match the reference
            acc = tl.dot(gt, xt, acc, input_precision="ieee")
        else:  # tl.dot needs every dim >= 16; small tiles take the broadcast product instead
            acc += tl.sum(gt.to(tl.float32)[:, :, None] * xt.to(tl.float32)[None, :, :], axis=1)
    # Lanes outside W loaded zeros, so their gradient is 0, as the reference defines it.
    tl.store(out_ptr + t * B * B + i[:, None] * B + i[None, :], acc, mask=(i < B)[:, None] & (i < B)[None, :])


# --- Python API (same signatures as reference) --------------------------------------------------


def sparse_scatter_add_(
    weight: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """``weight.view(-1)[indices] += scale * values`` in place (fp32 add); returns ``weight``."""
    _require(weight)
    if indices.numel() != values.numel():
        raise ValueError(f"indices has {indices.numel()} entries, values {values.numel()}")
    nnz = indices.numel()
    if nnz:
        grid = (triton.cdiv(nnz, _SPARSE_BLOCK),)
        _scatter_add_kernel[grid](
            weight, _flat(indices), _flat(values), nnz, float(scale), BLOCK=_SPARSE_BLOCK
        )
    return weight


def sparse_grad_values(
    g: torch.Tensor, x: torch.Tensor, indices: torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    """``(gᵀ x).view(-1)[indices]`` as fp32 [nnz], without forming the [out, in] product."""
    _require()
    out_f, in_f = shape
    g2, x2 = reference.as_rows(g, out_f), reference.as_rows(x, in_f)
    nnz = indices.numel()
    grad = torch.empty(nnz, dtype=torch.float32, device=g.device)
    if nnz:
        grid = (triton.cdiv(nnz, _SPARSE_BLOCK),)
        _grad_values_kernel[grid](
            g2, x2, _flat(indices), grad, nnz, g2.shape[0], out_f, in_f, BLOCK=_SPARSE_BLOCK, N_TILE=_N_TILE
        )
    return grad


def block_scatter_add_(
    weight: torch.Tensor,
    tiles: torch.Tensor,
    values: torch.Tensor,
    block_size: int,
    scale: float = 1.0,
) -> torch.Tensor:
    """Add B x B tiles ``scale * values`` [n_tiles, B, B] into ``weight`` in place; returns it."""
    _require(weight)
    n_out, n_in = weight.shape
    b = block_size
    if values.shape != (tiles.numel(), b, b):
        raise ValueError(f"values must be [{tiles.numel()}, {b}, {b}], got {tuple(values.shape)}")
    if tiles.numel():
        _block_scatter_add_kernel[(tiles.numel(),)](
            weight,
            _flat(tiles),
            values.contiguous(),
            n_out,
            n_in,
            -(-n_in // b),
            float(scale),
            B=b,
            BP=triton.next_power_of_2(b),
        )
    return weight


def block_grad_values(
    g: torch.Tensor,
    x: torch.Tensor,
    tiles: torch.Tensor,
    shape: tuple[int, int],
    block_size: int,
) -> torch.Tensor:
    """The B x B blocks of gᵀ x at ``tiles`` as fp32 [n_tiles, B, B]; entries outside W are 0."""
    _require()
    out_f, in_f = shape
    b = block_size
    g2, x2 = reference.as_rows(g, out_f), reference.as_rows(x, in_f)
    grad = torch.empty(tiles.numel(), b, b, dtype=torch.float32, device=g.device)
    if tiles.numel():
        bp = triton.next_power_of_2(b)
        _block_grad_kernel[(tiles.numel(),)](
            g2,
            x2,
            _flat(tiles),
            grad,
            g2.shape[0],
            out_f,
            in_f,
            -(-in_f // b),
            B=b,
            BP=bp,
            N_TILE=_N_TILE,
            USE_DOT=bp >= 16 and g2.dtype == x2.dtype,
        )
    return grad


def sparse_linear(
    x: torch.Tensor, weight: torch.Tensor, indices: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """y = x (W + D)ᵀ for a frozen mask, differentiable in x and values (Triton path)."""
    ops = reference.sparse_ops(indices, sparse_scatter_add_, sparse_grad_values)
    return reference.SparseLinearFn.apply(x, weight, values, ops)


def block_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    tiles: torch.Tensor,
    values: torch.Tensor,
    block_size: int,
) -> torch.Tensor:
    """y = x (W + D)ᵀ for frozen block tiles, differentiable in x and values (Triton path)."""
    ops = reference.block_ops(tiles, block_size, block_scatter_add_, block_grad_values)
    return reference.SparseLinearFn.apply(x, weight, values, ops)


def _require(weight: torch.Tensor | None = None) -> None:
    if triton is None:
        raise ImportError("triton is not installed: pip install 'hubtool[gpu]'")
    if weight is not None and (weight.dim() != 2 or not weight.is_contiguous()):
        raise ValueError(f"weight must be a contiguous [out, in] tensor, got shape {tuple(weight.shape)}")


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).contiguous()
