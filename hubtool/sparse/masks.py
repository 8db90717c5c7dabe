"""Choosing a mask: scores per weight entry, exact per-layer top-k, B x B tiles, the re-selection schedule.

A mask is stored as the sorted int64 positions it keeps ("kept"): flat row-major positions into W
[out, in] for sparse adapters, tile ids on the ceil(out/B) x ceil(in/B) grid for block-sparse ones.
"""

from __future__ import annotations

import math
import zlib

import torch

from hubtool.delta.grid import TileGrid


def kept_count(total: int, keep_ratio: float) -> int:
    """round(keep_ratio * total), half up, at least 1: the exact number of entries kept per weight."""
    return _round_count(keep_ratio * total, total)


def kept_tiles(shape: tuple[int, int], keep_ratio: float, block_size: int) -> int:
    """round(keep_ratio * out * in / B^2), half up, at least 1, at most the number of tiles."""
    n_tiles = TileGrid(shape, block_size).cells
    return _round_count(keep_ratio * shape[0] * shape[1] / block_size**2, n_tiles)


def _round_count(amount: float, limit: int) -> int:
    return min(limit, max(1, math.floor(amount + 0.5)))


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted flat positions [k] of the k largest scores; ties go to the lowest position.

    torch.topk alone does not promise which of several equal scores it returns, so only the k-th
    largest *value* is taken from it; everything above it is kept and the rest of k is filled with
    the lowest-positioned entries equal to it. NaN scores rank last.
    """
    flat = scores.detach().reshape(-1).float().nan_to_num(nan=-math.inf)
    if k >= flat.numel():
        return torch.arange(flat.numel(), device=flat.device)
    kth = torch.topk(flat, k, sorted=False).values.min()
    above = (flat > kth).nonzero().squeeze(1)
    ties = (flat == kth).nonzero().squeeze(1)[: k - above.numel()]
    return torch.cat([above, ties]).sort().values


def tile_scores(scores: torch.Tensor, block_size: int) -> torch.Tensor:
    """Summed |score| of every B x B tile of [out, in], [n_tiles] in row-major grid order.

    Edge tiles of a weight whose dims are not multiples of B are partial: zero padding adds nothing.
    """
    grid = TileGrid((scores.shape[0], scores.shape[1]), block_size)
    return grid.to_tiles(scores.detach().float().abs()).sum(dim=(1, 2))  # [cells, B, B] -> [cells]


def select(scores: torch.Tensor, keep_ratio: float, block_size: int | None) -> torch.Tensor:
    """The kept positions (sparse) or tiles (block_size given) for one weight's scores [out, in]."""
    if block_size is None:
        return top_k(scores, kept_count(scores.numel(), keep_ratio))
    shape = (scores.shape[0], scores.shape[1])
    return top_k(tile_scores(scores, block_size), kept_tiles(shape, keep_ratio, block_size))


def dense_mask(kept: torch.Tensor, shape: tuple[int, int], block_size: int | None) -> torch.Tensor:
    """bool [out, in]: True where the mask keeps an entry of W."""
    mask = torch.zeros(shape[0] * shape[1], dtype=torch.bool, device=kept.device)
    if block_size is None:
        mask[kept] = True
    else:
        pos, inside = TileGrid(shape, block_size).positions(kept)
        mask[pos[inside]] = True
    return mask.view(shape)


def score(
    kind: str,
    *,
    weight: torch.Tensor,
    grad: torch.Tensor | None = None,
    delta: torch.Tensor | None = None,
    seed: int = 0,
    key: str = "",
) -> torch.Tensor:
    """Per-entry importance [out, in] (larger = keep).

    sensitivity  |delta * dL/dW_eff|  the paper's connection sensitivity of the trained delta
    snip         |W_eff * dL/dW_eff|  classic SNIP on the effective weight (no delta needed)
    grad         |dL/dW_eff|
    magnitude    |W|
    random       uniform, seeded by (seed, key) so every weight gets its own reproducible draw

    Sensitivity is ranked by magnitude, as the released mttl code does (its top-k takes abs() of
    the mask gradient first). A signed ranking would prefer entries where delta ⊙ grad > 0, i.e.
    where the current gradient is undoing what the delta learned, the least useful ones.
    """
    if kind == "sensitivity":
        return (delta * grad).abs()
    if kind == "snip":
        return (weight.float() * grad).abs()
    if kind == "grad":
        return grad.abs()
    if kind == "magnitude":
        return weight.float().abs()
    if kind == "random":
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
        return torch.rand(tuple(weight.shape), generator=gen).to(weight.device)
    raise ValueError(f"unknown mask score {kind!r}")


def selection_steps(interval: int, mask_steps: int, total_steps: int) -> list[int]:
    """Optimizer steps after which the mask is (re-)selected; the mask freezes after the last one.

    Every `interval` steps up to min(mask_steps, total_steps); if that window is shorter than one
    interval, one selection at its end, so the expert is always sparse when training stops.
    """
    window = max(1, min(mask_steps, total_steps))
    return list(range(interval, window + 1, interval)) or [window]
