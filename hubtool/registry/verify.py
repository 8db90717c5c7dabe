"""What `hub verify` finds besides rows with bad blobs: the leftovers of a crash, and their removal.

A kill -9 can leave, and only leave (every writer writes a temp entry, fsyncs, renames):
  - a store temp file   blobs/.tmp-*            a registration or a fetch killed while staging its copy
  - a store trash file  blobs/ab/.trash-*       `hub rm` killed between moving the blob aside and deleting it
                                                (before its commit the row still needs it: it is put back)
  - an unreferenced blob blobs/ab/<sha256>...    a registration killed after placing its blob, before commit
  - a scratch entry     $HUB_HOME/tmp/*         push staging, pull downloads, packed files being registered
  - a model temp entry  $HUB_HOME/models/.*.tmp* a base-model conversion killed before its rename
  - a run's temp file   $HUB_HOME/runs/*/.*.tmp  `hub train` killed while saving a checkpoint or its expert
Temp, trash and scratch entries carry a liveness lock (fileio): only those nobody holds are leftovers.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from hubtool import paths
from hubtool.fileio import claim_abandoned, remove_entry
from hubtool.registry.blobs import TEMP_PREFIX, TRASH_PREFIX, is_location

# Unreferenced blobs younger than this are left alone where the database has no global write lock to
# rule out a registration in flight (PostgreSQL): placing a blob and committing its row take milliseconds.
GRACE_SECONDS = 600.0


def sweep(store: Any, referenced: set[str], report: Any, *, repair: bool, grace: float) -> None:
    """Fill report's leftover fields (orphans, temp, trash, scratch, in_use; removed, restored and recent
    when `repair`: recent are unreferenced blobs younger than `grace`, kept). `referenced`: every blob location a row points to. Safe to call again (it starts afresh)."""
    for name in ("orphans", "recent", "temp", "trash", "scratch", "in_use", "removed", "restored", "errors"):
        getattr(report, name).clear()
    now = time.time()
    root = Path(store.root)
    for location, path in store.files():
        if path.name.startswith(TEMP_PREFIX):
            _leftover(path, "temp", report, repair)
        elif path.name.startswith(TRASH_PREFIX):
            _trash(root, location, path, referenced, report, repair)
        elif location not in referenced:
            try:
                age = now - path.lstat().st_mtime
            except FileNotFoundError:
                continue
            if repair and is_location(location):
                if age < grace:
                    report.recent.append(path)  # maybe a registration between placing and committing
                else:
                    _remove(path, "orphan", report)
            else:
                report.orphans.append(path)  # (a file that is no blob address is never ours to delete)
    runs = paths.runs_dir()
    folders = [(paths.hub_home() / "tmp", False), (paths.models_dir(), True)]
    folders += [(run, True) for run in sorted(runs.iterdir()) if run.is_dir()] if runs.is_dir() else []
    for folder, temp_only in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if temp_only and not _is_temp_name(path.name):
                continue
            _leftover(path, "scratch", report, repair)


def _is_temp_name(name: str) -> bool:
    """What fileio.atomic_write (".<name>.XXXX.tmp") and atomic_folder (".<name>.tmp-XXXX") name temps."""
    return name.startswith(".") and (name.endswith(".tmp") or ".tmp-" in name)


def _leftover(path: Path, kind: str, report: Any, repair: bool) -> None:
    with claim_abandoned(path) as abandoned:
        if not abandoned:
            if path.exists() or path.is_symlink():
                report.in_use.append(path)
        elif repair:
            _remove(path, kind, report)
        else:
            getattr(report, kind).append(path)


def _trash(root: Path, location: str, path: Path, referenced: set[str], report: Any, repair: bool) -> None:
    folder, _, name = location.rpartition("/")
    target = f"{folder}/{name[len(TRASH_PREFIX):]}"
    with claim_abandoned(path) as abandoned:
        if not abandoned:
            report.in_use.append(path)
            return
        needed = is_location(target) and target in referenced and not (root / target).is_file()
        if not repair:
            report.trash.append(path)
        elif needed:  # `hub rm` died before its commit: the row is still there, so is its blob again
            os.replace(path, root / target)
            report.restored.append(target)
        else:
            _remove(path, "trash", report)


def _remove(path: Path, kind: str, report: Any) -> None:
    try:
        remove_entry(path)
    except FileNotFoundError:
        return
    except OSError as err:  # e.g. a read-only store: it stays, and is reported as still there
        getattr(report, "orphans" if kind == "orphan" else kind).append(path)
        report.errors.append(f"{path}: {err.strerror or err}")
        return
    report.removed.append({"path": str(path), "kind": kind})
