"""The delta data model: Expert, its four delta kinds and the tile grid (see deltas.py).

Merge methods, apply, PEFT interop and the packed format all work on these classes.
"""

from hubtool.delta.deltas import (
    DELTA_KINDS,
    DELTA_TYPES,
    EXPERT_KINDS,
    BlockSparseDelta,
    Delta,
    Expert,
    FullDelta,
    LoraDelta,
    SparseDelta,
)
from hubtool.delta.grid import TileGrid

__all__ = [
    "DELTA_KINDS",
    "DELTA_TYPES",
    "EXPERT_KINDS",
    "BlockSparseDelta",
    "Delta",
    "Expert",
    "FullDelta",
    "LoraDelta",
    "SparseDelta",
    "TileGrid",
]
