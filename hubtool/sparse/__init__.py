"""Sparse adapters and the training loop (issue 3).

    config.py      AdapterConfig: kind, targets, keep ratio, mask score and schedule (no torch)
    targets.py     find_targets: `qkv`/`attn`/`mlp`/`all`/regex -> module names of any architecture
    masks.py       scores, exact per-layer top-k, B x B tiles, the re-selection schedule
    layers.py      the layer per adapter kind (sparse/block-sparse, LoRA, full), one shape
    adapters.py    Adapter: apply to a model, mask life cycle, checkpoints, to_expert, merge
    trainer.py     Trainer: AdamW loop, evaluation, best checkpoint, resume, Ctrl-C, progress
    checkpoint.py  atomic checkpoint files

Only the config is imported here, so `import hubtool.sparse` stays free of torch.
"""

from hubtool.sparse.config import MASK_SCORES, AdapterConfig

__all__ = ["MASK_SCORES", "AdapterConfig"]
