"""Training checkpoints: one file per role in a checkpoint folder, each written atomically.

    <out_dir>/checkpoint/state.pt   adapter tensors, optimizer, scheduler, RNG states, step, best so far
    <out_dir>/checkpoint/best.pt    the adapter tensors at the best validation loss

Files hold only tensors and plain containers and are read back with ``torch.load(weights_only=True)``,
so loading a checkpoint never runs pickled code.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import torch

from hubtool.errors import HubError
from hubtool.fileio import atomic_write


def save(obj: dict[str, Any], path: Path) -> None:
    """Write atomically (temp file, fsync, rename): an interrupted save never leaves half a checkpoint."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def load(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:  # truncated or foreign files
        raise HubError(f"{path}: not a readable hubtool checkpoint ({type(err).__name__}: {err})") from None


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    # random.setstate wants tuples all the way down; serialisation may hand back lists
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
