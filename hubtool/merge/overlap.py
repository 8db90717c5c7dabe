"""Pairwise mask overlap of the experts in a compose plan: how much of each other's kept positions they share.

    plan = make_plan(catalog, build_recipe(tasks="qa,summarize"))
    report = pairwise_overlap(plan)
    report.overall[i][j]            # Jaccard |A∩B| / |A∪B| over every adapted weight
    report.per_layer["layer 3"]     # the same, with the weights of one transformer layer pooled
    write_heatmap(report, "overlap.png")

Counts are pooled before dividing: a layer's Jaccard is (sum of its weights' |A∩B|) / (sum of their
|A∪B|), so a big weight counts for more than a small one, as it does in the merged model. An expert that
does not touch a weight holds no positions of it. LoRA and full deltas touch every entry of their
weights, so their "mask" is all of W (known from the header: nothing of theirs is read).

Memory: one weight at a time, and of it only the sparse experts' positions (sorted int64 arrays,
intersected with a binary search); nothing is merged and the base model is never read.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hubtool.errors import HubError

_LAYER = re.compile(r"\.(\d+)\.")


def layer_of(weight: str) -> str:
    """'layer N' for a weight of transformer layer N (the first '.N.' in its name), else the name itself;
    the same grouping as `hub compose --dry-run`."""
    m = _LAYER.search(weight)
    return f"layer {m.group(1)}" if m else weight


def _layer_order(key: str) -> tuple:
    parts = key.split()
    return (0, int(parts[1])) if len(parts) == 2 and parts[0] == "layer" and parts[1].isdigit() else (1, key)


def _jaccard(inter: list[list[int]], union: list[list[int]]) -> list[list[float | None]]:
    """inter / union entrywise; None where the union is empty (neither expert touches anything there)."""
    return [[(i / u if u else None) for i, u in zip(ri, ru)] for ri, ru in zip(inter, union)]


@dataclass
class OverlapReport:
    refs: list[str]  # NAME@VERSION of each expert, in plan order
    overall: list[list[float | None]]  # [N][N] Jaccard over all adapted weights
    per_layer: dict[str, list[list[float | None]]]  # layer -> [N][N] Jaccard (layers in model order)
    intersections: list[list[int]]  # [N][N] |A∩B| over all weights; the diagonal is |A|
    unions: list[list[int]]  # [N][N] |A∪B| over all weights
    layer_intersections: dict[str, list[list[int]]] = field(default_factory=dict)
    layer_unions: dict[str, list[list[int]]] = field(default_factory=dict)

    @property
    def pairs(self) -> list[tuple[int, int]]:
        n = len(self.refs)
        return [(i, j) for i in range(n) for j in range(i + 1, n)]

    def layer_means(self) -> dict[str, float | None]:
        """Per layer: the mean Jaccard over the pairs of experts (pairs where neither touches the layer
        are left out; None when no pair is left, e.g. a single expert)."""
        out: dict[str, float | None] = {}
        for layer, matrix in self.per_layer.items():
            vals = [matrix[i][j] for i, j in self.pairs if matrix[i][j] is not None]
            out[layer] = sum(vals) / len(vals) if vals else None
        return out

    def overall_mean(self) -> float | None:
        vals = [self.overall[i][j] for i, j in self.pairs if self.overall[i][j] is not None]
        return sum(vals) / len(vals) if vals else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "refs": list(self.refs),
            "overall": self.overall,
            "overall_mean": self.overall_mean(),
            "intersections": self.intersections,
            "unions": self.unions,
            "layers": [
                {"layer": layer, "mean": mean, "jaccard": self.per_layer[layer],
                 "intersections": self.layer_intersections[layer], "unions": self.layer_unions[layer]}
                for layer, mean in self.layer_means().items()
            ],
        }


def _positions(reader: Any, weight: str) -> np.ndarray | None:
    """Sorted unique flat positions an expert keeps in `weight`; None for a dense delta (all of W)."""
    info = reader.weights[weight]
    if info["delta"] in ("lora", "full"):
        return None
    delta = reader.read(weight)
    if delta.kind == "sparse":
        pos = delta.indices
    else:  # block-sparse: the kept tiles' entries inside W
        pos, inside = delta.grid.positions(delta.tiles)
        pos = pos[inside].sort().values
    return pos.to("cpu").numpy().astype(np.int64, copy=False)


def _intersect(a: np.ndarray | None, b: np.ndarray | None, numel: int) -> int:
    """|A∩B| of two sorted unique position arrays (None = every position of W)."""
    if a is None:
        return numel if b is None else int(b.size)
    if b is None:
        return int(a.size)
    if a.size > b.size:
        a, b = b, a
    if a.size == 0:
        return 0
    at = np.searchsorted(b, a)  # binary search the smaller array's positions in the larger one
    at[at == b.size] = 0
    return int(np.count_nonzero(b[at] == a))


def pairwise_overlap(plan: Any) -> OverlapReport:
    """The pairwise Jaccard of the chosen experts' masks, overall and per layer (see the module doc)."""
    readers = plan.readers()
    n = len(plan.choices)
    refs = [c.ref for c in plan.choices]
    zeros = lambda: [[0] * n for _ in range(n)]
    inter_all, union_all = zeros(), zeros()
    layer_inter: dict[str, list[list[int]]] = {}
    layer_union: dict[str, list[list[int]]] = {}
    for weight, idx in plan.weights.items():
        shape = plan.shapes[weight]
        numel = int(shape[0]) * int(shape[1])
        sets = {i: _positions(readers[i], weight) for i in idx}  # this weight only
        sizes = [0] * n
        for i, pos in sets.items():
            sizes[i] = numel if pos is None else int(pos.size)
        layer = layer_of(weight)
        li = layer_inter.setdefault(layer, zeros())
        lu = layer_union.setdefault(layer, zeros())
        for i in range(n):
            for j in range(i, n):
                if i not in sets and j not in sets:
                    continue
                if i == j:
                    both = either = sizes[i]
                else:
                    both = _intersect(sets[i], sets[j], numel) if i in sets and j in sets else 0
                    either = sizes[i] + sizes[j] - both
                for a, b in {(i, j), (j, i)}:
                    li[a][b] += both
                    lu[a][b] += either
                    inter_all[a][b] += both
                    union_all[a][b] += either
        del sets
    order = sorted(layer_inter, key=_layer_order)
    return OverlapReport(
        refs=refs,
        overall=_jaccard(inter_all, union_all),
        per_layer={k: _jaccard(layer_inter[k], layer_union[k]) for k in order},
        intersections=inter_all,
        unions=union_all,
        layer_intersections={k: layer_inter[k] for k in order},
        layer_unions={k: layer_union[k] for k in order},
    )


# --- the heatmap ---------------------------------------------------------------------------------------


def heatmap_png(report: OverlapReport) -> bytes:
    """A PNG: the overall N×N Jaccard matrix (annotated, refs as labels) and, beside it, layer × pair.

    Colours run from 0 to the largest value between two different experts (the diagonal, always 1,
    would otherwise flatten every real overlap into one colour); the numbers are exact."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise HubError("--png: needs matplotlib; install it with: pip install matplotlib") from None

    n, pairs, layers = len(report.refs), report.pairs, list(report.per_layer)
    nan = float("nan")
    grid = np.array([[nan if v is None else v for v in row] for row in report.overall], dtype=float)
    per = np.array([[nan if report.per_layer[layer][i][j] is None else report.per_layer[layer][i][j]
                     for i, j in pairs] for layer in layers], dtype=float).reshape(len(layers), len(pairs))
    off = [grid[i, j] for i, j in pairs if not np.isnan(grid[i, j])] + [v for v in per.ravel() if not np.isnan(v)]
    vmax = max(off) if off and max(off) > 0 else 1.0
    panels = 2 if pairs else 1
    width = 2.4 + 0.9 * n + (2.4 + 0.6 * len(pairs) if pairs else 0)
    height = max(3.4, 1.8 + 0.6 * n, 1.8 + 0.22 * min(len(layers), 60))
    fig = Figure(figsize=(min(width, 24), min(height, 20)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]

    def annotate(ax, values):
        for (r, c), v in np.ndenumerate(values):
            ax.text(c, r, "-" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if not np.isnan(v) and v > 0.6 * vmax else "white")

    ax = axes[0]
    image = ax.imshow(grid, vmin=0.0, vmax=vmax, cmap="viridis")
    ax.set_xticks(range(n), report.refs, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), report.refs, fontsize=8)
    ax.set_title("mask overlap (Jaccard), all weights", fontsize=9)
    annotate(ax, grid)
    fig.colorbar(image, ax=ax, shrink=0.8)
    if pairs:
        ax2 = axes[1]
        image2 = ax2.imshow(per, vmin=0.0, vmax=vmax, cmap="viridis", aspect="auto", interpolation="nearest")
        ax2.set_xticks(range(len(pairs)), [f"{report.refs[i]} × {report.refs[j]}" for i, j in pairs],
                       rotation=45, ha="right", fontsize=7)
        step = max(1, len(layers) // 40)
        ax2.set_yticks(range(0, len(layers), step), layers[::step], fontsize=7)
        ax2.set_title("per layer, per pair", fontsize=9)
        if per.size <= 240:
            annotate(ax2, per)
        fig.colorbar(image2, ax=ax2, shrink=0.8, label="Jaccard")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_heatmap(report: OverlapReport, path: str | os.PathLike[str]) -> int:
    """Write heatmap_png(report) to `path` atomically; returns the bytes written."""
    from hubtool.fileio import atomic_write

    data = heatmap_png(report)
    try:
        with atomic_write(path) as f:
            f.write(data)
    except OSError as err:
        raise HubError(f"--png {path}: cannot write: {err.strerror or err}") from None
    return len(data)
