"""A cheap, deterministic fingerprint of a base weight, so applying an expert to the wrong base fails.

sha256 over the shape and a strided sample of at most 65536 entries rounded to bf16. Why this shape:
- cheap: hashing a 3072x9216 weight in full costs ~0.1 s per layer; a fixed-size sample is O(1) and
  still catches a different checkpoint, which changes nearly every entry.
- rounded to bf16: a checkpoint stored in fp32 and the same checkpoint stored in bf16 (made by
  torch's round-to-nearest-even cast) give identical bf16 samples, so an expert trained on either
  applies to both. (An fp16 copy may round differently and is not promised to match.)
- the shape goes in the hash so two weights that share a sample but not a shape differ.
"""
# (torch is imported inside fingerprint(): hubtool.format binds this function eagerly so the
# submodule of the same name can never shadow it, and that import must not pull in torch.)

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

SAMPLE = 65536


def fingerprint(weight: torch.Tensor) -> str:
    """16 hex digits identifying `weight` (any shape, dtype and device) up to bf16 rounding."""
    import torch

    flat = weight.detach().reshape(-1)
    step = max(1, -(-flat.numel() // SAMPLE))  # ceil, so at most SAMPLE entries
    sample = flat[::step].to(torch.bfloat16).cpu().view(torch.int16).numpy().astype("<i2")
    digest = hashlib.sha256(json.dumps(list(weight.shape)).encode())
    digest.update(sample.tobytes())
    return digest.hexdigest()[:16]
