"""The packed expert format: one self-describing .safetensors file per expert (docs/format.md)."""

from hubtool.format.types import KINDS, BlockDelta, Delta, DenseDelta, Expert, LoraDelta, SparseDelta

__all__ = ["KINDS", "BlockDelta", "Delta", "DenseDelta", "Expert", "LoraDelta", "SparseDelta"]
