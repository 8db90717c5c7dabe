"""W + D kept folded into W itself while a frozen mask trains, so every forward/backward is a plain matmul.

The copy-per-call rule (reference.SparseLinearFn) builds W + D into a fresh copy of W twice per step
(forward, and again in backward) and pays a W-sized allocation and copy each time. With the mask
frozen only the m kept entries of W ever differ from the base, so they are written into W in place:

    fold     base = W.view(-1)[positions]          (the m base entries, W's dtype: the exact restore)
             W.view(-1)[positions] = base + values  (fp32 add, rounded once to W's dtype)
    refresh  the same write, whenever the values changed (an optimizer step): O(m) per layer per step
    restore  W.view(-1)[positions] = base            (bit for bit: W is as before the fold)

The written entries are the same arithmetic as reference.sparse_scatter_add_ (one fp32 add of the
base entry and the value, rounded once), so forward and backward see bit-identical weights.
Memory: m base entries (4 bytes each for fp32 W), instead of a transient W-sized copy.
"""

from __future__ import annotations

import torch


class Fold:
    """One weight W [out, in] (contiguous) with the values at `positions` folded in.

    positions  int64 [m], unique flat positions in W
    take       int64 [m] flat positions into values.view(-1) when the values are laid out differently
               (B x B tiles: only the entries inside W); None when values is [m] in positions' order
    """

    def __init__(self, weight: torch.Tensor, positions: torch.Tensor, take: torch.Tensor | None = None):
        if not weight.is_contiguous():
            raise ValueError("Fold needs a contiguous weight (it writes through weight.view(-1))")
        self.weight = weight
        self.positions = positions
        self.take = take
        with torch.no_grad():
            self.base = weight.view(-1)[positions].clone()  # [m], W's dtype
        self._values: torch.Tensor | None = None  # the tensor last folded, and its version counter
        self._version = -1

    @torch.no_grad()
    def sync_(self, values: torch.Tensor) -> torch.Tensor:
        """Make W hold base + values (skipped when these values, unchanged, are already folded); returns W."""
        if values is self._values and values._version == self._version:
            return self.weight
        v = values.detach().reshape(-1)
        if self.take is not None:
            v = v[self.take]
        if self.weight.dtype == torch.float32:
            summed = self.base + v.float()
        else:
            summed = (self.base.float() + v.float()).to(self.weight.dtype)
        self._write(summed)
        self._values, self._version = values, values._version
        return self.weight

    @torch.no_grad()
    def restore_(self) -> torch.Tensor:
        """Put the base entries back: W is bit for bit what it was before the fold."""
        self._write(self.base)
        self._values, self._version = None, -1
        return self.weight

    def _write(self, entries: torch.Tensor) -> None:
        # index_copy_ (int64 index) is ~4x faster than an index_put_ of the same entries on CPU;
        # positions are unique, so it is deterministic on every device.
        self.weight.view(-1).index_copy_(0, self.positions.long(), entries)

    def base_weight(self) -> torch.Tensor:
        """A copy of W as it was before the fold (W itself stays folded)."""
        w = self.weight.detach().clone()
        w.view(-1)[self.positions] = self.base
        return w


class FoldedLinearFn(torch.autograd.Function):
    """y = x W_effᵀ for a W_eff that already holds W + D; gradients for x and the values only.

    x [..., in]; w_eff [out, in] (saved, so an in-place refresh between this forward and its backward
    is caught by autograd's version check instead of silently giving wrong gradients); values are an
    input only so autograd routes their gradient, grad(g, x) -> fp32 gradient in the values' layout.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, w_eff: torch.Tensor, values: torch.Tensor, grad):
        ctx.save_for_backward(x, w_eff)
        ctx.grad = grad
        return x @ w_eff.to(x.dtype).t()

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, w_eff = ctx.saved_tensors
        grad_x = g @ w_eff.to(g.dtype) if ctx.needs_input_grad[0] else None  # [..., in]
        grad_values = ctx.grad(g, x) if ctx.needs_input_grad[2] else None
        return grad_x, None, grad_values, None
