"""Blob stores: where the packed files behind catalog rows live, named by their sha256.

`BlobStorage` is the interface the catalog uses. `LocalBlobStore` is a directory,
$HUB_HOME/blobs/ab/abcdef....safetensors. `HubBlobStore` is that directory (a subclass) in front of a Hub:
a row whose blob is not here but which records where it was pushed (hub_repo, hub_commit: set by `hub push`
and `hub pull`) is downloaded on first use, checked against the row's sha256 and placed in the directory.
So machines that share one catalog (one SQLite file, a PostgreSQL server) but not a disk can all compose,
show and export every row. The catalog knows no network: whoever opens it with a Hub hands the store a
`Download` function (hubtool.hub.pull.hub_download: HF_ENDPOINT, the Hugging Face Hub or a team's
`hub serve`); a store without one says which `hub pull` fetches the blob.

A blob file only ever appears complete: bytes go to a temp file in the store (same filesystem), are
fsynced, and are renamed into place. Identical content is stored once. Temp files start with ".tmp-" and
trashed blobs (removed, awaiting their transaction's commit) with ".trash-"; both carry a liveness lock
(fileio), so `hub verify` tells a crash's leftovers from a writer at work. A blob is placed only inside
the catalog write transaction that inserts its row: whoever holds the write lock sees no blob "in flight".

Many catalogs may share one store (every catalog opened with one HUB_HOME: registry.db, the experiment's
experiments/catalog.db, any `--catalog`). The store keeps the list of those that have placed a blob in it,
catalogs/<hash of the URL>.json (mode 0600: a PostgreSQL URL may hold a password), written before a
catalog's first blob lands, so `hub verify` can ask each of them which blobs it uses before it calls any
blob an orphan. catalogs/since marks when the list began: a blob older than that may belong to a catalog
that wrote here before catalogs were recorded.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from hubtool.errors import HubError, NotFoundError
from hubtool.fileio import (
    CHUNK,
    atomic_write,
    check_writable,
    crash_point,
    file_mode,
    fsync_path,
    locked_mkstemp,
    not_writable,
    scratch_dir,
    sha256_file,
)

SUFFIX = ".safetensors"
TEMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
CATALOGS_DIR = "catalogs"  # the store's list of the catalogs that have written to it (see the docstring)
_SINCE = "since"
# The only form a location takes: "ab/<64 lowercase hex>.safetensors", ab the sha256's first two digits.
_LOCATION = re.compile(r"([0-9a-f]{2})/(\1[0-9a-f]{62})" + re.escape(SUFFIX))
_WRITE_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


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


def is_location(location: str) -> bool:
    return _LOCATION.fullmatch(location) is not None


@dataclass(frozen=True)
class Staged:
    """A complete, fsynced copy of a file waiting in the store under a temp name."""

    path: Path
    sha256: str
    size: int


@dataclass(frozen=True)
class Trashed:
    """A blob moved aside by trash(); `fd` holds its liveness lock until unlink() or restore()."""

    path: Path
    fd: int

    def unlink(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)


@dataclass(frozen=True)
class HubOrigin:
    """Where a row says its blob can be had: a repo on a Hub endpoint at one commit."""

    repo: str
    commit: str


# download(origin, sha256, folder) -> the path, inside `folder`, of the file of `origin` whose content is
# `sha256` (unchecked: the store hashes it). The hub layer makes one (hubtool.hub.pull.hub_download).
Download = Callable[[HubOrigin, str, Path], Path]


class BlobStorage(Protocol):
    """What the catalog needs from a blob store. `root` is the local directory every store keeps."""

    root: Path

    def path(self, location: str) -> Path: ...
    def exists(self, location: str) -> bool: ...
    def open(self, location: str) -> BinaryIO: ...
    def stage(self, src: Path) -> AbstractContextManager[Staged]: ...
    def place(self, staged: Staged) -> str: ...
    def trash(self, location: str) -> Trashed | None: ...
    def restore(self, trashed: Trashed, location: str) -> None: ...
    def files(self) -> Iterator[tuple[str, Path]]: ...
    def fetch(self, location: str, sha256: str, origin: HubOrigin | None) -> Path: ...


class LocalBlobStore:
    """A directory of content-addressed blobs (the default store). `catalog`: the URL of the catalog
    writing through it, put on the store's list of catalogs before its first blob is placed."""

    def __init__(self, root: Path, *, catalog: str | None = None) -> None:
        self.root = Path(root)
        self.catalog = catalog
        self._enrolled = catalog is None

    def path(self, location: str) -> Path:
        """The file of a blob location; a HubError for anything but ab/<sha256>.safetensors, so no
        catalog row can point any read, trash or delete outside the store."""
        return self.root / check_location(location)

    def exists(self, location: str) -> bool:
        return self.path(location).is_file()

    def open(self, location: str) -> BinaryIO:
        path = self.path(location)
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise NotFoundError(f"blob {path} is missing; run `hub verify`") from None

    def _writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise not_writable(err, self.root, "blob store") from None
        check_writable(self.root, "blob store")

    @contextmanager
    def stage(self, src: Path) -> Iterator[Staged]:
        """Copy src into a temp file in the store, hashing on the way; the temp file is gone on exit
        unless place() has moved it into the store. Its liveness lock is held until exit."""
        self._writable()
        try:
            fd, tmp = locked_mkstemp(self.root, TEMP_PREFIX, SUFFIX, mode=file_mode())
        except OSError as err:
            if err.errno in _WRITE_ERRORS:
                raise not_writable(err, self.root, "blob store") from None
            raise
        try:
            h, size = hashlib.sha256(), 0
            with open(src, "rb") as f:
                crash_point("blob-stage")
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    try:
                        _write_all(fd, chunk)
                    except OSError as err:  # a full disk, a quota
                        if err.errno in _WRITE_ERRORS:
                            raise not_writable(err, self.root, "blob store") from None
                        raise
                    size += len(chunk)
            os.fsync(fd)
            yield Staged(tmp, h.hexdigest(), size)
        finally:
            tmp.unlink(missing_ok=True)
            os.close(fd)

    def place(self, staged: Staged) -> str:
        """Move a staged file to its content address (or keep the existing, intact copy)."""
        location = blob_location(staged.sha256)
        final = self.path(location)
        if not self._enrolled:  # listed before its first blob lands: a repair elsewhere then asks us
            enroll(self.root, self.catalog)
            self._enrolled = True
        if final.exists() and sha256_file(final) == staged.sha256:
            # Deduplicated; the staged copy is dropped when stage() exits. Touched, so that a repair on a
            # database without one global write lock (its grace period) never takes it for an old orphan.
            try:
                os.utime(final)
            except OSError:  # another user's file: the grace period is a safety margin, not a need
                pass
            return location
        crash_point("blob-place")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged.path, final)  # also repairs a corrupted copy at that address
        except OSError as err:
            if err.errno in _WRITE_ERRORS:
                raise not_writable(err, final.parent, "blob store") from None
            raise
        fsync_path(final.parent)
        return location

    def trash(self, location: str) -> Trashed | None:
        """Move a blob aside (to be deleted once the catalog transaction that drops its last row
        commits). While the catalog holds the write lock no registration can then find the blob
        and point a new row at it. None if the blob was already gone."""
        blob = self.path(location)
        trashed = blob.with_name(f"{TRASH_PREFIX}{blob.name}")
        if blob.is_dir() and not blob.is_symlink():  # before anything moves: the caller's transaction rolls back
            raise HubError(
                f"blob {blob} is a folder, not a file (made by hand?); expected the blob file hubtool placed: "
                "move the folder away, then try again (`hub verify` lists what is wrong in the store)"
            )
        try:
            fd = os.open(blob, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_SH)  # alive while we hold it: a repair leaves the trash alone
        except ImportError:
            pass
        try:
            os.replace(blob, trashed)
        except FileNotFoundError:
            os.close(fd)
            return None
        except OSError as err:
            os.close(fd)
            if err.errno in _WRITE_ERRORS:
                raise not_writable(err, blob.parent, "blob store") from None
            raise
        crash_point("blob-trashed")
        return Trashed(trashed, fd)

    def restore(self, trashed: Trashed | Path, location: str) -> None:
        """Undo trash() when the transaction failed."""
        final = self.path(location)  # checked before anything moves
        if not isinstance(trashed, Trashed):  # a bare path (a trash file found by `hub verify`)
            os.replace(trashed, final)
            return
        try:
            os.replace(trashed.path, final)
        finally:
            os.close(trashed.fd)

    def files(self) -> Iterator[tuple[str, Path]]:
        """Every file in the store as (location, path), temp and trash files included; not the list of
        catalogs (only its abandoned temp files, which are leftovers like any other)."""
        if not self.root.is_dir():
            return
        found = []
        for top, dirs, names in os.walk(self.root):
            # A temp or trash entry that is a folder is one entry (a `hub rm` of a blob a folder had replaced
            # used to leave one), as is a folder at a blob's address: what is inside goes with it, so it is
            # never taken for blobs of its own.
            held = [d for d in dirs if d.startswith((TEMP_PREFIX, TRASH_PREFIX))
                    or is_location(Path(top, d).relative_to(self.root).as_posix())]  # a folder in a blob's place
            dirs[:] = [d for d in dirs if d not in held]
            found += [Path(top) / name for name in held]
            found += [Path(top) / name for name in names]
            found += [Path(top) / d for d in dirs if os.path.islink(os.path.join(top, d))]  # not walked
        for path in sorted(found):
            location = path.relative_to(self.root).as_posix()
            if location.startswith(f"{CATALOGS_DIR}/") and not path.name.startswith(TEMP_PREFIX):
                continue
            yield location, path

    def fetch(self, location: str, sha256: str, origin: HubOrigin | None) -> Path:
        path = self.path(location)
        if path.is_file():
            return path
        raise NotFoundError(f"blob {path} is missing (and its row names no Hub repo to fetch it from); "
                            "run `hub verify`")  # fmt: skip

    def put_verified(self, src: Path, sha256: str, what: str) -> Path:
        """Place a file that must hash to `sha256` (a download); a HubError, nothing placed, if not."""
        with self.stage(src) as staged:
            if staged.sha256 != sha256:
                raise HubError(
                    f"{what}: the downloaded file has sha256 {staged.sha256[:16]}..., the catalog row says "
                    f"{sha256[:16]}...; refused (nothing was placed in {self.root})"
                )
            return self.path(self.place(staged))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class HubBlobStore(LocalBlobStore):
    """A local store that fetches a missing blob from the Hub repo its row was pushed to (first use).

    `download` is handed in by whoever opens the store with a Hub; without one, a blob that is not here is
    a NotFoundError naming the repo and the `hub pull` that fetches it. The download goes to a scratch
    folder in `scratch` ($HUB_HOME/tmp), is hashed while it is copied into the store and placed only when
    it matches the row's sha256. Everything else is the local directory's."""

    def __init__(self, root: Path, scratch: Path, *, catalog: str | None = None,
                 download: Download | None = None) -> None:  # fmt: skip
        super().__init__(root, catalog=catalog)
        self.scratch = Path(scratch)
        self.download = download

    def fetch(self, location: str, sha256: str, origin: HubOrigin | None) -> Path:
        """The blob's local file, downloaded from `origin` first when it is not here."""
        path = self.path(check_location(location, sha256))
        if path.is_file() or origin is None:
            return super().fetch(location, sha256, origin)
        if self.download is None:
            raise NotFoundError(
                f"blob {path} is not here; its row was pushed to {origin.repo}@{origin.commit[:12]}: "
                f"`hub pull NAME@VERSION` fetches it"
            )
        what = f"blob {sha256[:12]} from {origin.repo}@{origin.commit[:12]}"
        self._writable()  # a read-only store fails before the download, naming the store
        with scratch_dir(self.scratch, "fetch-") as tmp:
            crash_point("fetch-start")
            downloaded = self.download(origin, sha256, tmp)
            crash_point("fetch-downloaded")
            return self.put_verified(downloaded, sha256, what)


def open_store(root: Path, scratch: Path, *, catalog: str | None = None,
               download: Download | None = None) -> HubBlobStore:  # fmt: skip
    """The catalog's store: the local directory `root`, fetching a missing blob through `download` (when
    given) on first use. `catalog`: the URL of the catalog that writes through it (it joins the store's
    list of catalogs)."""
    return HubBlobStore(root, scratch, catalog=catalog, download=download)


def copy_verified(blob: Path, out: Path, sha256: str, ref: str) -> None:
    """Copy a blob to `out` atomically (temp file beside it, fsync, rename), hashing on the way, so a
    corrupted blob is refused instead of exported or pushed."""
    if not blob.is_file():
        raise HubError(f"{ref}: blob {blob} is missing; run `hub verify`")
    with atomic_write(out) as dst, open(blob, "rb") as src:
        digest = hashlib.sha256()
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            dst.write(chunk)
        if digest.hexdigest() != sha256:  # raising inside the block deletes the temp file
            raise HubError(f"{ref}: blob {blob} does not match its sha256; run `hub verify`")


# ---- the store's list of catalogs -------------------------------------------------------------------------


def catalog_key(url: str) -> str | None:
    """How the list names a catalog: its URL, a SQLite file made absolute (the same file is one catalog
    from any working directory). None for an in-memory SQLite database: no other process can ask it."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return url  # the catalog itself refuses such a URL before anything is placed
    if parsed.get_backend_name() != "sqlite":
        return parsed.render_as_string(hide_password=False)
    if not parsed.database or parsed.database == ":memory:" or "mode=memory" in parsed.database:
        return None
    if parsed.query.get("mode") == "memory":  # sqlite:///file:x?mode=memory&uri=true
        return None
    if parsed.query.get("uri"):
        return parsed.render_as_string(hide_password=False)
    path = Path(os.path.abspath(Path(parsed.database).expanduser()))
    return parsed.set(drivername="sqlite", database=str(path)).render_as_string(hide_password=False)


def _entry_name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32] + ".json"


def enroll(root: Path, url: str | None) -> None:
    """Put the catalog at `url` on the list of `root` (nothing when it is there already). Atomic: a temp file
    renamed into place, so a kill leaves the entry whole or absent (and a `.tmp-` leftover at worst)."""
    key = catalog_key(url) if url else None
    if key is None:
        return
    folder = Path(root) / CATALOGS_DIR
    entry = folder / _entry_name(key)
    if entry.is_file():
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        try:  # the list's start, made once and never changed (its mtime is what counts)
            os.close(os.open(folder / _SINCE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            pass
        fd, tmp = locked_mkstemp(folder, TEMP_PREFIX, ".json")  # 0600, mkstemp's mode
        try:
            _write_all(fd, json.dumps({"url": key}).encode() + b"\n")
            os.fsync(fd)
            os.replace(tmp, entry)
        finally:
            tmp.unlink(missing_ok=True)
            os.close(fd)
        fsync_path(folder)
    except OSError as err:
        if err.errno in _WRITE_ERRORS:
            raise not_writable(err, folder, "blob store") from None
        raise


@dataclass(frozen=True)
class Listed:
    """One entry of a store's list: the catalog's URL (None when the entry cannot be read) and its file."""

    url: str | None
    path: Path


def listed_catalogs(root: Path) -> list[Listed]:
    """The catalogs on the list of `root`, in file-name order."""
    folder = Path(root) / CATALOGS_DIR
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            url = json.loads(path.read_text(encoding="utf-8"))["url"]
            out.append(Listed(url if isinstance(url, str) else None, path))
        except (OSError, ValueError, KeyError, TypeError):
            out.append(Listed(None, path))
    return out


def list_started(root: Path) -> float | None:
    """When the list of `root` began (the mtime of catalogs/since); None if the store has no list yet."""
    try:
        return (Path(root) / CATALOGS_DIR / _SINCE).stat().st_mtime
    except OSError:
        return None


def forget(entry: Listed) -> None:
    """Take a catalog off its store's list (its SQLite file is gone: it references nothing)."""
    entry.path.unlink(missing_ok=True)
