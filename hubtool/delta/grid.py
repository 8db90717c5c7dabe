"""The B x B tile grid of a weight: the one place its arithmetic is written.

A weight W [out, in] is cut into ceil(out/B) x ceil(in/B) tiles, numbered row-major. Edge tiles of a
weight whose dims are not multiples of B stick out of W; their entries outside W are never stored
into W (they are zero padding in scores and gradients, and ignored when adding a delta).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TileGrid:
    shape: tuple[int, int]  # W's [out, in]
    block: int  # B

    @property
    def rows(self) -> int:
        return -(-self.shape[0] // self.block)

    @property
    def cols(self) -> int:
        return -(-self.shape[1] // self.block)

    @property
    def cells(self) -> int:
        """Tiles on the grid: the universe of tile positions."""
        return self.rows * self.cols

    def positions(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat positions in W of every entry of each tile, [n_tiles, B, B] int64, and which lie inside W.

        Positions outside W are clamped to 0 so they can be gathered safely; mask them with `inside`.
        """
        b, (out_f, in_f) = self.block, self.shape
        offs = torch.arange(b, device=tiles.device)
        rows = (tiles // self.cols * b)[:, None, None] + offs[None, :, None]  # [n_tiles, B, 1]
        cols = (tiles % self.cols * b)[:, None, None] + offs[None, None, :]  # [n_tiles, 1, B]
        inside = (rows < out_f) & (cols < in_f)  # [n_tiles, B, B]
        return torch.where(inside, rows * in_f + cols, 0), inside

    def inside_counts(self, tiles: torch.Tensor) -> torch.Tensor:
        """Entries of W each tile covers, [n_tiles] (B*B except for edge tiles)."""
        b = self.block
        rows = (self.shape[0] - tiles // self.cols * b).clamp(max=b)
        cols = (self.shape[1] - tiles % self.cols * b).clamp(max=b)
        return rows * cols

    def flatten(self, tiles: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tiles [n] with values [n, B, B] -> (sorted flat positions inside W [nnz], their values [nnz])."""
        pos, inside = self.positions(tiles)
        flat, vals = pos[inside], values[inside]
        order = torch.argsort(flat)
        return flat[order], vals[order]

    def pad(self, t: torch.Tensor) -> torch.Tensor:
        """[out, in] -> [rows*B, cols*B] with zeros on the bottom/right (no copy when it fits)."""
        b = self.block
        h, w = self.rows * b - t.shape[0], self.cols * b - t.shape[1]
        return t if h == 0 and w == 0 else torch.nn.functional.pad(t, (0, w, 0, h))

    def to_tiles(self, t: torch.Tensor) -> torch.Tensor:
        """[out, in] -> [cells, B, B], row-major tile order (padding with zeros)."""
        b = self.block
        # [rows*B, cols*B] -> [rows, B, cols, B] -> [rows, cols, B, B]
        return self.pad(t).view(self.rows, b, self.cols, b).permute(0, 2, 1, 3).reshape(self.cells, b, b)

    def from_tiles(self, tiles_dense: torch.Tensor) -> torch.Tensor:
        """[cells, B, B] -> [out, in] (the inverse of to_tiles, cropping the padding)."""
        b = self.block
        full = tiles_dense.view(self.rows, self.cols, b, b).permute(0, 2, 1, 3).reshape(self.rows * b, self.cols * b)
        return full[: self.shape[0], : self.shape[1]].contiguous()
