"""Kernels that fold sparse deltas into weights: torch reference (CPU, any device) and Triton (GPU).

Callers use the dispatching entry points here; hubtool.kernels.scatter picks the backend per weight.
"""

from hubtool.kernels.scatter import block_add_, dense_add_, scatter_add_

__all__ = ["block_add_", "dense_add_", "scatter_add_"]
