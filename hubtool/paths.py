"""Where hubtool keeps things on disk. Everything hangs off HUB_HOME (default ~/.cache/hubtool)."""

from __future__ import annotations

import os
from pathlib import Path


def hub_home() -> Path:
    return Path(os.environ.get("HUB_HOME") or Path.home() / ".cache" / "hubtool").expanduser()


def blobs_dir() -> Path:
    return hub_home() / "blobs"


def models_dir() -> Path:
    return hub_home() / "models"


def runs_dir() -> Path:
    """$HUB_HOME/runs: one folder per `hub train` run (checkpoints, the packed expert)."""
    return hub_home() / "runs"


def tmp_dir() -> Path:
    """$HUB_HOME/tmp (created): scratch files beside the blob store, on the same filesystem. Everything in
    it is made with fileio.scratch_dir (locked while in use): `hub verify --repair` removes what nobody holds."""
    path = hub_home() / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_catalog_url() -> str:
    """HUB_CATALOG (any SQLAlchemy URL) wins; else SQLite at $HUB_HOME/registry.db."""
    url = os.environ.get("HUB_CATALOG")
    if url:
        return url
    return f"sqlite:///{hub_home() / 'registry.db'}"
