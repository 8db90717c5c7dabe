"""The layers that stand in for a target linear module, one per adapter kind, all of one shape.

Every layer holds the base weight as W [out, in] with requires_grad=False (GPT-2's Conv1D stores
[in, out]; it is transposed once on wrapping and back on merge/export, so everything inside works
in the Linear convention) and answers the same three questions:
    forward(x)      y = x (W + delta)ᵀ + bias
    delta_dense()   the delta as an fp32 [out, in] tensor
    to_delta()      a hubtool.format delta in the *stored* layout of the base parameter
and merged() returns a plain Linear/Conv1D with the delta folded in.

SparseLayer (sparse and block-sparse) moves through phases, see hubtool.sparse.adapters:
    dense   a dense fp32 delta [out, in] is trained; once a mask exists the forward uses only the
            kept entries, but the gradient stays dense (straight-through) so the next re-selection
            can score every entry; the adapter zeroes it outside the mask before each step
    probe   no delta at all: one backward reports dL/dW [out, in] to a callback that picks the mask
            (snip / grad), then the dense gradient is dropped
    frozen  only the kept values [nnz] (or tiles [n_tiles, B, B]) exist; forward/backward through
            hubtool.kernels (W + D folded into one matmul, values' gradient = (gᵀx) at the kept entries)

Folding in place (frozen phase, while fold_weights(True), which Adapter.folded() and so the Trainer
turn on): W itself holds W + D at the kept entries (hubtool.kernels.fold), refreshed in O(nnz) when
the values change, so forward and backward are the plain dense matmuls of the base layer and no
W-sized copy is made. Turning it off puts W back bit for bit. While folded, base_weight() (and so
stored_weight, merged(), fingerprints) still answers with the base weight.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hubtool.delta import BlockSparseDelta, Delta, FullDelta, LoraDelta, SparseDelta
from hubtool.delta.grid import TileGrid
from hubtool.kernels import reference
from hubtool.kernels.fold import Fold, FoldedLinearFn
from hubtool.sparse.masks import dense_mask


class DeltaLayer(nn.Module):
    """Common part: the frozen base weight/bias and the layout bookkeeping."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.transposed = type(base).__name__ == "Conv1D"
        w = base.weight.detach()
        self.weight = nn.Parameter(w.t().contiguous() if self.transposed else w, requires_grad=False)
        bias = getattr(base, "bias", None)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.weight.shape[0], self.weight.shape[1])

    @property
    def stored_weight(self) -> torch.Tensor:
        """W in the base parameter's own layout (what fingerprints and expert keys refer to)."""
        w = self.base_weight()
        return w.t() if self.transposed else w

    def base_weight(self) -> torch.Tensor:
        """The base W [out, in] (a layer that folds its delta into W in place answers with a copy)."""
        return self.weight

    def delta_dense(self) -> torch.Tensor:
        raise NotImplementedError

    def to_delta(self) -> Delta:
        raise NotImplementedError

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """A plain Linear (or Conv1D) with W + delta, on W's device and dtype."""
        w = (self.base_weight().float() + self.delta_dense().to(self.weight.device)).to(self.weight.dtype)
        out_f, in_f = self.shape
        if self.transposed:
            from transformers.pytorch_utils import Conv1D

            module = Conv1D(out_f, in_f)
            w = w.t()
        else:
            module = nn.Linear(in_f, out_f, bias=self.bias is not None)
        module = module.to(device=w.device, dtype=w.dtype)
        module.weight.copy_(w)
        if self.bias is not None:
            module.bias.copy_(self.bias)
        module.requires_grad_(False)
        return module


class SparseLayer(DeltaLayer):
    """Sparse (block_size None) or block-sparse (B x B tiles) delta on one weight."""

    def __init__(self, base: nn.Module, block_size: int | None = None):
        super().__init__(base)
        self.block_size = block_size
        self.delta: nn.Parameter | None = None  # dense phase, fp32 [out, in]
        self.values: nn.Parameter | None = None  # frozen phase, fp32 [nnz] or [n_tiles, B, B]
        self.anchor: nn.Parameter | None = None  # probe phase: a scalar so autograd reaches this layer
        self.register_buffer("kept", None)  # int64 positions [nnz] or tile ids [n_tiles]
        self.register_buffer("mask", None, persistent=False)  # bool [out, in], dense phase only
        self._on_grad: Callable[[torch.Tensor], None] | None = None
        self._fold_enabled = False
        self._fold: Fold | None = None

    @property
    def phase(self) -> str:
        if self.values is not None:
            return "frozen"
        if self.delta is not None:
            return "dense"
        return "probe" if self.anchor is not None else "new"

    # --- phase changes ------------------------------------------------------------------------------

    def begin_dense(self) -> None:
        self.delta = nn.Parameter(torch.zeros(self.shape, device=self.weight.device))

    def begin_probe(self, on_grad: Callable[[torch.Tensor], None]) -> None:
        self.anchor = nn.Parameter(torch.zeros((), device=self.weight.device))
        self._on_grad = on_grad

    def set_mask(self, kept: torch.Tensor) -> None:
        """Dense phase: from now on only `kept` entries act in the forward pass."""
        self.kept = kept.to(self.weight.device)
        self.mask = dense_mask(self.kept, self.shape, self.block_size)

    @torch.no_grad()
    def mask_grad_(self) -> None:
        if self.delta is not None and self.delta.grad is not None and self.mask is not None:
            self.delta.grad.masked_fill_(~self.mask, 0.0)

    @torch.no_grad()
    def freeze(self, kept: torch.Tensor | None = None) -> nn.Parameter | None:
        """Keep only the values at `kept` (default: the current mask); returns the dropped dense delta.

        Values start from the dense delta at the kept entries (zeros when there was none).
        """
        self.unfold_()  # the positions may change: W goes back to the base first
        if kept is not None:
            self.kept = kept.to(self.weight.device)
        if self.kept is None:
            raise RuntimeError("freeze() before any mask was selected")
        old = self.delta
        start = (
            self.gather(old)
            if old is not None
            else torch.zeros(self._values_shape(), device=self.weight.device)
        )
        self.values = nn.Parameter(start.float().contiguous())
        self.delta, self.mask, self.anchor, self._on_grad = None, None, None, None
        return old

    def reset(self) -> None:
        """Back to phase "new" (no delta, no mask), with W restored; a checkpoint load starts here."""
        self.unfold_()
        self.delta = self.values = self.anchor = None
        self.kept, self.mask, self._on_grad = None, None, None

    # --- folding W + D into W in place (frozen phase) ---------------------------------------------

    def fold_weights(self, enabled: bool) -> None:
        """Allow (True) or stop (False) keeping W + D in W between steps; stopping restores W exactly."""
        self._fold_enabled = enabled
        if not enabled:
            self.unfold_()

    @property
    def folded(self) -> bool:
        return self._fold is not None

    def unfold_(self) -> None:
        """Restore W bit for bit if it holds W + D (the next folded forward folds again)."""
        if self._fold is not None:
            self._fold.restore_()
            self._fold = None

    def base_weight(self) -> torch.Tensor:
        return self.weight if self._fold is None else self._fold.base_weight()

    def _folded_weight(self) -> torch.Tensor:
        """W holding W + D for the current values: the fold is made on first use, refreshed after steps."""
        if self._fold is None:
            if self.block_size is None:
                positions, take = self.kept, None
            else:  # only tile entries inside W are written; `take` picks their values from [n_tiles, B, B]
                pos, inside = TileGrid(self.shape, self.block_size).positions(self.kept)
                inside = inside.reshape(-1)
                small = torch.int32 if self.weight.numel() < 2**31 else torch.int64  # 4 bytes per entry
                positions = pos.reshape(-1)[inside].to(small)
                take = None if bool(inside.all()) else inside.nonzero().squeeze(1).to(small)
            self._fold = Fold(self.weight, positions, take)
        return self._fold.sync_(self.values)

    def _values_grad(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """(g, x) -> fp32 gradient of the values, for the backend that runs this weight."""
        kernels, kept, shape = _kernels(self.weight), self.kept, self.shape
        if self.block_size is not None:
            b = self.block_size
            return lambda g, x: kernels.block_grad_values(g, x, kept, shape, b)
        # The CSR pattern is rebuilt per backward (0.05-0.6 ms a layer here, ~0.2% of a step): keeping it
        # would add 4 bytes per kept entry to the training state.
        return lambda g, x: kernels.sparse_grad_values(g, x, kept, shape)

    def gather(self, dense: torch.Tensor) -> torch.Tensor:
        """The kept entries of a dense [out, in] tensor, in the values layout (zeros outside W for tiles)."""
        flat = dense.detach().reshape(-1)
        if self.block_size is None:
            return flat[self.kept]
        pos, inside = TileGrid(self.shape, self.block_size).positions(self.kept)
        return torch.where(inside, flat[pos], torch.zeros((), dtype=flat.dtype, device=flat.device))

    def _values_shape(self) -> tuple[int, ...]:
        n = int(self.kept.numel())
        return (n,) if self.block_size is None else (n, self.block_size, self.block_size)

    # --- compute --------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.values is not None:
            kernels = _kernels(self.weight)
            if self._fold_enabled and self.weight.is_contiguous():
                y = FoldedLinearFn.apply(x, self._folded_weight(), self.values, self._values_grad())
            elif self.block_size is None:
                y = kernels.sparse_linear(x, self.weight, self.kept, self.values)
            else:
                y = kernels.block_linear(x, self.weight, self.kept, self.values, self.block_size)
        elif self.delta is not None:
            d = self.delta if self.mask is None else _MaskedStraightThrough.apply(self.delta, self.mask)
            y = F.linear(x, self.weight + d.to(self.weight.dtype))
        elif self.anchor is not None:
            y = _ProbeGrad.apply(x, self.weight, self.anchor, self._on_grad)
        else:
            y = F.linear(x, self.weight)
        return y if self.bias is None else y + self.bias

    def delta_dense(self) -> torch.Tensor:
        if self.values is not None:
            out = torch.zeros(self.shape[0] * self.shape[1], device=self.weight.device)
            if self.block_size is None:
                out[self.kept] = self.values.detach().float()
            else:
                pos, inside = TileGrid(self.shape, self.block_size).positions(self.kept)
                out[pos[inside]] = self.values.detach().float()[inside]
            return out.view(self.shape)
        if self.delta is not None:
            d = self.delta.detach().float()
            return d if self.mask is None else d * self.mask
        return torch.zeros(self.shape, device=self.weight.device)

    def to_delta(self) -> Delta:
        if self.values is None:
            raise RuntimeError("to_delta() needs a frozen mask; call Adapter.freeze() first")
        kept, values = self.kept.cpu(), self.values.detach().float().cpu()
        if self.block_size is None:
            if self.transposed:
                kept, values = _transpose_positions(kept, values, self.shape)
            return SparseDelta(shape=_stored(self.shape, self.transposed), indices=kept, values=values)
        if self.transposed:
            kept, values = _transpose_tiles(kept, values, self.shape, self.block_size)
        return BlockSparseDelta(
            shape=_stored(self.shape, self.transposed), block_size=self.block_size, tiles=kept, values=values
        )


class LoraLayer(DeltaLayer):
    """y = x Wᵀ + (alpha / r) · x Aᵀ Bᵀ, A [r, in] Kaiming-uniform (as PEFT), B [out, r] zeros."""

    def __init__(self, base: nn.Module, rank: int, alpha: float, generator: torch.Generator):
        super().__init__(base)
        out_f, in_f = self.shape
        a = torch.empty(rank, in_f)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        self.A = nn.Parameter(a.to(self.weight.device))
        self.B = nn.Parameter(torch.zeros(out_f, rank, device=self.weight.device))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low_rank = F.linear(F.linear(x, self.A.to(x.dtype)), self.B.to(x.dtype)) * self.scale  # [..., out]
        return F.linear(x, self.weight, self.bias) + low_rank

    def delta_dense(self) -> torch.Tensor:
        return (self.B.detach().float() @ self.A.detach().float()) * self.scale

    def to_delta(self) -> Delta:
        a, b = self.A.detach().float().cpu(), self.B.detach().float().cpu()
        if self.transposed:  # (B A)ᵀ = Aᵀ Bᵀ: the stored-layout factors swap roles
            a, b = b.t().contiguous(), a.t().contiguous()
        return LoraDelta(shape=_stored(self.shape, self.transposed), A=a, B=b, scale=self.scale)


class FullLayer(DeltaLayer):
    """Full fine-tuning of W, trained as a dense fp32 delta (same gradient as training W itself,
    and with weight decay 0 the same AdamW trajectory) so the expert is exactly W_t - W0."""

    def __init__(self, base: nn.Module):
        super().__init__(base)
        self.delta = nn.Parameter(torch.zeros(self.shape, device=self.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight + self.delta.to(self.weight.dtype), self.bias)

    def delta_dense(self) -> torch.Tensor:
        return self.delta.detach().float()

    def to_delta(self) -> Delta:
        d = self.delta_dense().cpu()
        return FullDelta(
            shape=_stored(self.shape, self.transposed), values=d.t().contiguous() if self.transposed else d
        )


# --- autograd helpers -------------------------------------------------------------------------------


class _MaskedStraightThrough(torch.autograd.Function):
    """Forward: delta ⊙ mask. Backward: the gradient passes unmasked, so delta.grad is the dense
    dL/dW_eff [out, in] that scores every entry at the next re-selection."""

    @staticmethod
    def forward(ctx, delta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return delta * mask

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return g, None


class _ProbeGrad(torch.autograd.Function):
    """y = x Wᵀ; backward hands dL/dW = gᵀx [out, in] to a callback (which turns it into a mask at
    once, so at most one layer's dense gradient exists at a time) and returns only grad_x."""

    @staticmethod
    def forward(ctx, x, weight, anchor, on_grad):
        ctx.save_for_backward(x, weight)
        ctx.on_grad = on_grad
        return F.linear(x, weight)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        out_f, in_f = weight.shape
        ctx.on_grad(g.reshape(-1, out_f).float().t() @ x.reshape(-1, in_f).float())
        grad_x = g @ weight.to(g.dtype) if ctx.needs_input_grad[0] else None
        return grad_x, None, torch.zeros((), device=g.device), None


def _kernels(weight: torch.Tensor):
    """Triton kernels for CUDA weights when triton runs here, else the torch reference (same API)."""
    if weight.is_cuda:
        from hubtool.kernels import triton_sparse

        if triton_sparse.triton_available():
            return triton_sparse
    return reference


# --- layout helpers ---------------------------------------------------------------------------------


def _stored(shape: tuple[int, int], transposed: bool) -> tuple[int, int]:
    return (shape[1], shape[0]) if transposed else shape


def _transpose_positions(kept: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]):
    """Flat positions in [out, in] -> sorted positions in [in, out], values reordered alike."""
    out_f, in_f = shape
    moved = (kept % in_f) * out_f + kept // in_f
    order = moved.argsort()
    return moved[order], values[order]


def _transpose_tiles(tiles: torch.Tensor, values: torch.Tensor, shape: tuple[int, int], b: int):
    """Tile ids on the [out, in] grid -> sorted ids on the [in, out] grid, each tile transposed."""
    grid = TileGrid(shape, b)
    moved = (tiles % grid.cols) * grid.rows + tiles // grid.cols
    order = moved.argsort()
    return moved[order], values.transpose(1, 2)[order].contiguous()
