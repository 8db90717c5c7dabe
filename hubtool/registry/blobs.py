"""Content-addressed blob store: $HUB_HOME/blobs/ab/abcdef....safetensors, named by sha256.

A blob file only ever appears complete: bytes go to a temp file in the store (same filesystem),
are fsynced, and are renamed into place. Identical content is stored once. Temp files start with
".tmp-" and trashed blobs (removed, awaiting their transaction's commit) with ".trash-".
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hubtool.errors import HubError
from hubtool.fileio import CHUNK, fsync_path, sha256_file

SUFFIX = ".safetensors"
# The only form a location takes: "ab/<64 lowercase hex>.safetensors", ab the sha256's first two digits.
_LOCATION = re.compile(r"([0-9a-f]{2})/(\1[0-9a-f]{62})" + re.escape(SUFFIX))


def blob_location(sha256: str) -> str:
    """Where a blob lives, relative to the store (what catalog rows keep)."""
    return f"{sha256[:2]}/{sha256}{SUFFIX}"


def check_location(location: str, sha256: str | None = None) -> str:
    """`location` if it is a blob address (and, given `sha256`, that blob's); else a HubError. Catalog rows
    are plain SQL anyone can edit: a row saying "../../file" must never make hub rm delete that file."""
    match = _LOCATION.fullmatch(location) if isinstance(location, str) else None
    if match is None:
        raise HubError(
            f"blob location {location!r} in the catalog: expected ab/<sha256>.safetensors inside the blob "
            "store (ab = the sha256's first two hex digits); refusing to touch it (was the catalog edited?)"
        )
    if sha256 is not None and match[2] != sha256:
        raise HubError(
            f"blob location {location!r} in the catalog: expected {blob_location(sha256)} for the row's "
            "sha256; refusing to touch it (was the catalog edited?)"
        )
    return location


@dataclass(frozen=True)
class Staged:
    """A complete, fsynced copy of a file waiting in the store under a temp name."""

    path: Path
    sha256: str
    size: int


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, location: str) -> Path:
        """The file of a blob location; a HubError for anything but ab/<sha256>.safetensors, so no
        catalog row can point any read, trash or delete outside the store."""
        return self.root / check_location(location)

    @contextmanager
    def stage(self, src: Path) -> Iterator[Staged]:
        """Copy src into a temp file in the store, hashing on the way; the temp file is gone on exit
        unless place() has moved it into the store."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=SUFFIX)
        tmp = Path(tmp_name)
        try:
            h, size = hashlib.sha256(), 0
            with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            yield Staged(tmp, h.hexdigest(), size)
        finally:
            tmp.unlink(missing_ok=True)

    def place(self, staged: Staged) -> str:
        """Move a staged file to its content address (or keep the existing, intact copy)."""
        location = blob_location(staged.sha256)
        final = self.path(location)
        if final.exists() and sha256_file(final) == staged.sha256:
            return location  # deduplicated; the staged copy is dropped when stage() exits
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.path, final)  # also repairs a corrupted copy at that address
        fsync_path(final.parent)
        return location

    def trash(self, location: str) -> Path | None:
        """Move a blob aside (to be deleted once the catalog transaction that drops its last row
        commits). While the catalog holds the write lock no registration can then find the blob
        and point a new row at it. None if the blob was already gone."""
        blob = self.path(location)
        trashed = blob.with_name(f".trash-{blob.name}")
        try:
            os.replace(blob, trashed)
        except FileNotFoundError:
            return None
        return trashed

    def restore(self, trashed: Path, location: str) -> None:
        """Undo trash() when the transaction failed."""
        os.replace(trashed, self.path(location))

    def files(self) -> Iterator[tuple[str, Path]]:
        """Every file in the store as (location, path), temp and trash files included."""
        if not self.root.is_dir():
            return
        for path in sorted(self.root.rglob("*")):
            if path.is_file():
                yield path.relative_to(self.root).as_posix(), path
