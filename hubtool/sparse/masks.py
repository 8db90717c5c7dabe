"""Choosing a mask: scores per weight entry, exact per-layer top-k, B x B tiles, the re-selection schedule.

A mask is stored as the sorted int64 positions it keeps ("kept"): flat row-major positions into W
[out, in] for sparse adapters, tile ids on the ceil(out/B) x ceil(in/B) grid for block-sparse ones.

Catalog-aware masks (`hub train --avoid`): `Coverage` counts, per target weight, how many of the
catalog's experts already keep each entry (or tile), and `select` ranks by score / (1 + beta * count).
"""

from __future__ import annotations

import math
import zlib
from typing import Any

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


def select(
    scores: torch.Tensor,
    keep_ratio: float,
    block_size: int | None,
    covered: torch.Tensor | None = None,
    beta: float = 1.0,
) -> torch.Tensor:
    """The kept positions (sparse) or tiles (block_size given) for one weight's scores [out, in].

    covered: how many other experts already keep each entry ([out, in]) or tile ([n_tiles]), see
    Coverage; the ranking is then avoiding_top_k's.
    """
    if block_size is None:
        ranked, k = scores, kept_count(scores.numel(), keep_ratio)
    else:
        shape = (scores.shape[0], scores.shape[1])
        ranked, k = tile_scores(scores, block_size), kept_tiles(shape, keep_ratio, block_size)
    if covered is None:
        return top_k(ranked, k)
    return avoiding_top_k(ranked, covered, k, beta)


def avoiding_top_k(scores: torch.Tensor, covered: torch.Tensor, k: int, beta: float) -> torch.Tensor:
    """Sorted flat positions [k] of the k largest scores / (1 + beta * covered) (scores >= 0).

    beta = 0 is plain top_k; beta = inf is the limit beta -> inf, written out rather than computed
    (score / inf is 0 for every covered entry, which would tie with uncovered zero scores): every
    uncovered entry ranks above every covered one, and the covered ones, needed only when fewer than k
    entries are free, rank by score / covered. Ties go to the lowest position, as in top_k.
    """
    flat = scores.detach().reshape(-1).float()
    count = covered.reshape(-1).to(device=flat.device, dtype=torch.float32)
    if not math.isinf(beta):
        return top_k(flat / (1.0 + beta * count), k)
    free = (count == 0).nonzero().squeeze(1)  # sorted positions nobody covers
    if k <= free.numel():
        return free[top_k(flat[free], k)]
    taken = (count > 0).nonzero().squeeze(1)
    rest = taken[top_k(flat[taken] / count[taken], k - free.numel())]
    return torch.cat([free, rest]).sort().values


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


class Coverage:
    """What `hub train --avoid` ranks against: per target weight, how many avoided experts already keep
    each entry, and beta, the weight of that count in select().

        coverage = Coverage([("qa-sparse@1", path), ...], beta=1.0)
        adapter = Adapter.apply(model, config, coverage=coverage)   # calls coverage.build(...) once

    counts[module name] is [out, in] for a sparse adapter (Linear layout, GPT-2 Conv1D positions are
    transposed into it) and [n_tiles] for a block-sparse one, where a tile's count is the number of
    experts that keep ANY entry of it: an expert that touches a tile at all shares it, and a summed
    count would make a tile touched by one expert in 50 entries look like 50 experts. Counts are uint8
    (int16 from 256 experts on), on the training device: 1 byte per entry of each target weight.
    An avoided expert's LoRA/full weights (a merged expert may hold them) cover every entry and tell
    nothing about where to go, so they are not counted; `dense` lists them.
    """

    def __init__(self, sources: list[tuple[str, Any]], beta: float):
        self.sources = list(sources)  # (NAME@VERSION, packed file path)
        self.beta = float(beta)
        self.counts: dict[str, torch.Tensor] = {}  # module name -> counts, see above
        self.dense: dict[str, list[str]] = {}  # ref -> its weights with a dense (LoRA/full) delta

    def get(self, name: str) -> torch.Tensor | None:
        return self.counts.get(name)

    @torch.no_grad()
    def build(self, layers: dict[str, Any], block_size: int | None) -> None:
        """Count every source's kept positions into the layers' weights ({module name: SparseLayer}),
        reading each file once and one weight at a time (only positions are decoded into memory)."""
        from hubtool.errors import HubError
        from hubtool.format import ExpertReader

        n = len(self.sources)
        dtype = torch.uint8 if n < 256 else torch.int16 if n < 2**15 else torch.int32
        for name, layer in layers.items():
            size = TileGrid(layer.shape, block_size).cells if block_size else layer.shape[0] * layer.shape[1]
            self.counts[name] = torch.zeros(size, dtype=dtype, device=layer.weight.device)
        for ref, path in self.sources:
            reader = ExpertReader(path)
            for name, layer in layers.items():
                info = reader.weights.get(f"{name}.weight")
                if info is None:
                    continue  # the avoided expert does not adapt this weight
                stored = (layer.shape[1], layer.shape[0]) if layer.transposed else layer.shape
                if tuple(info["shape"]) != tuple(stored):
                    raise HubError(
                        f"--avoid {ref}: weight {name}.weight has shape {list(info['shape'])}, the base "
                        f"model's is {list(stored)}; is it an expert of another base model?"
                    )
                if info["delta"] in ("lora", "full"):
                    self.dense.setdefault(ref, []).append(f"{name}.weight")
                    continue
                pos = _kept_positions(reader.read(f"{name}.weight")).to(layer.weight.device)
                if layer.transposed:  # stored [in, out] -> the layer's [out, in]
                    pos = (pos % stored[1]) * stored[0] + pos // stored[1]
                if block_size:
                    cols = -(-layer.shape[1] // block_size)
                    rows, col = pos // layer.shape[1], pos % layer.shape[1]
                    pos = (rows // block_size * cols + col // block_size).unique()
                self.counts[name][pos] += 1  # positions are unique within one expert
        for name, layer in layers.items():
            if not block_size:
                self.counts[name] = self.counts[name].view(layer.shape)

    def covered_share(self) -> float:
        """The share of all counted entries (or tiles) that at least one avoided expert keeps."""
        total = sum(c.numel() for c in self.counts.values())
        return sum(int((c > 0).sum()) for c in self.counts.values()) / max(total, 1)


def _kept_positions(delta: Any) -> torch.Tensor:
    """Flat row-major positions [nnz] int64 a sparse or block-sparse delta keeps, in its stored layout."""
    if delta.kind == "sparse":
        return delta.indices.to(torch.int64)
    pos, inside = delta.grid.positions(delta.tiles)  # [n_tiles, B, B], edge tiles cut at W's border
    return pos[inside]
