"""Files that are never seen half-written, and content hashes. Stdlib only (the catalog imports it).

Every writer in hubtool goes through here: a temp file (or folder) beside the destination, fsync,
rename, fsync of the parent so the rename itself survives a crash.

Temp files and folders carry a liveness lock: their creator holds a shared flock on them for as long as
it uses them, and the kernel drops it when the process dies (kill -9 included). So a later run can tell
what a crash left (nobody holds the lock) from what a live writer is using, without guessing from ages:
`claim_abandoned` takes the exclusive lock, which only succeeds on a leftover, and holds it while the
caller deletes. A writer checks after locking that its entry is still linked (a repair may have claimed
it in the instant between mkstemp and flock) and makes a new one if not.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import shutil
import signal
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from hubtool.errors import HubError

try:
    import fcntl
except ImportError:  # Windows: no flock; every temp entry then counts as in use and is never claimed
    fcntl = None  # type: ignore[assignment]

CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a folder (a folder's fsync makes renames into it durable; POSIX only)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # folders can't be opened on Windows
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- permissions ------------------------------------------------------------------------------------------

_UMASK: int | None = None


def umask() -> int:
    """The process umask, read once. /proc when it has it: os.umask can only be read by setting it, which
    would give files another thread creates meanwhile mode 0666 (the Hub server writes from threads)."""
    global _UMASK
    if _UMASK is None:
        try:
            with open("/proc/self/status", encoding="ascii") as f:
                _UMASK = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
        except (OSError, StopIteration, ValueError):
            mask = os.umask(0o022)
            os.umask(mask)
            _UMASK = mask
    return _UMASK


def file_mode() -> int:
    """What open() would give a new file (0644 under the usual umask 022); mkstemp gives 0600."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    return 0o777 & ~umask()


def check_writable(folder: Path, what: str) -> None:
    """A HubError naming `folder` unless this process may create files in it. Explicit, because root
    passes every permission check except a read-only mount, and a raw PermissionError names no folder."""
    if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        raise HubError(f"{what} {folder} is not writable by this user (read-only); nothing was written")


def not_writable(err: OSError, folder: Path, what: str) -> HubError:
    """The one-line error for a write refused by the OS (permissions, read-only filesystem, disk full)."""
    reason = err.strerror or type(err).__name__
    return HubError(f"{what} {folder}: cannot write there ({reason}); nothing was written")


# ---- liveness locks ----------------------------------------------------------------------------------------


def _lock_shared(fd: int, path: str) -> bool:
    """Take the creator's shared lock on a fresh entry; False if a repair removed it before we locked."""
    if fcntl is None:
        return True
    fcntl.flock(fd, fcntl.LOCK_SH)  # waits while a repair holds LOCK_EX on it (then it is unlinked)
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def locked_mkstemp(folder: Path, prefix: str, suffix: str = "", mode: int | None = None) -> tuple[int, Path]:
    """mkstemp in `folder`, holding the liveness lock on the open fd (closing the fd releases it).
    `mode`: the file's permissions (default 0600, mkstemp's)."""
    while True:
        fd, name = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=suffix)
        if _lock_shared(fd, name):
            if mode is not None:
                os.fchmod(fd, mode)
            return fd, Path(name)
        os.close(fd)


def locked_mkdtemp(folder: Path, prefix: str) -> tuple[int, Path]:
    """mkdtemp in `folder`, with an fd on it that holds the liveness lock (close it when done)."""
    while True:
        name = tempfile.mkdtemp(dir=folder, prefix=prefix)
        try:
            fd = os.open(name, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except FileNotFoundError:
            continue
        if _lock_shared(fd, name):
            return fd, Path(name)
        os.close(fd)


@contextmanager
def claim_abandoned(path: Path) -> Iterator[bool]:
    """True (holding the exclusive lock until exit, so the caller can delete) when no live process holds
    `path`'s liveness lock: a crash left it. False while its writer is alive, or when it is gone."""
    if fcntl is None:
        yield False
        return
    if path.is_symlink():  # nobody we know makes these; nobody can hold a lock on a link itself
        yield True
        return
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except (FileNotFoundError, NotADirectoryError):
        yield False
        return
    except OSError:  # unreadable: report it, never delete it
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def remove_entry(path: Path) -> None:
    """Delete a file, a link or a whole folder."""
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        path.unlink()


@contextmanager
def scratch_dir(folder: Path, prefix: str) -> Iterator[Path]:
    """A private temp folder in `folder` ($HUB_HOME/tmp), locked while in use, removed on exit. After a
    kill it stays behind, unlocked: `hub verify` reports it and `hub verify --repair` removes it."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, path = locked_mkdtemp(folder, prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


# ---- atomic writes -----------------------------------------------------------------------------------------


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Yield a binary file to write; on success it replaces `path` whole, on error it is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_temp_files(path):  # what a killed write to the same path left
        stale.unlink(missing_ok=True)
    # an ordinary file in the end (0644 under umask 022), not mkstemp's private 0600
    fd, tmp = locked_mkstemp(path.parent, f".{path.name}.", ".tmp", mode=file_mode())
    try:
        with os.fdopen(fd, "wb") as f:  # closing releases the lock, after the rename
            crash_point(f"write:{path.name}")
            yield f
            f.flush()
            os.fsync(f.fileno())
            crash_point(f"write-rename:{path.name}")
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def _ordinary_mode(path: Path) -> None:
    """Give a file the mode the umask gives a new file (0644 under 022), keeping its execute bits.
    Writers that go through a temp file of their own (safetensors' save_file, so transformers'
    save_pretrained) leave mkstemp's private 0600 behind; a folder hubtool publishes holds ordinary files."""
    mode = path.stat().st_mode & 0o777
    wanted = file_mode() | (mode & 0o111 & ~umask())
    if mode != wanted:
        path.chmod(wanted)


def stale_temp_files(path: Path) -> list[Path]:
    """Temp files that an atomic_write(path) killed before its rename left beside `path` (".<name>.XXXXXXXX.tmp",
    mkstemp's eight characters: never another path's temps), that no live writer holds."""
    pattern = re.compile(re.escape(f".{path.name}.") + r"[a-z0-9_]{8}\.tmp")
    found = []
    try:
        names = sorted(os.listdir(path.parent))
    except OSError:
        return []
    for name in names:
        if pattern.fullmatch(name):
            with claim_abandoned(path.parent / name) as abandoned:
                if abandoned and not (path.parent / name).is_dir():
                    found.append(path.parent / name)
    return found


def stale_temp_folders(dest: Path) -> list[Path]:
    """Temp folders that an atomic_folder(dest) killed before its rename left beside `dest`."""
    found = []
    for path in sorted(dest.parent.glob(f".{glob_escape(dest.name)}.tmp-*")):
        with claim_abandoned(path) as abandoned:
            if abandoned:
                found.append(path)
    return found


@contextmanager
def atomic_folder(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temp folder next to ``dest``; on success fsync its files and rename it to ``dest``.

    Readers never see a half-written folder: either ``dest`` is absent or it is complete. ``dest`` must not
    exist yet (an empty folder is allowed and replaced). On error the temp folder is removed; after a kill
    it stays (hidden, unlocked) and the next atomic_folder to the same ``dest`` removes it.
    """
    dest = Path(dest).expanduser().absolute()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise HubError(f"{dest} already exists; expected a new (or empty) folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_temp_folders(dest):
        shutil.rmtree(stale, ignore_errors=True)
    fd, tmp = locked_mkdtemp(dest.parent, f".{dest.name}.tmp-")
    try:
        tmp.chmod(dir_mode())  # mkdtemp makes it private (0700); the result is an ordinary folder
        crash_point(f"folder:{dest.name}")
        yield tmp
        for path in tmp.rglob("*"):
            if path.is_file() and not path.is_symlink():
                _ordinary_mode(path)
                fsync_path(path)
        if dest.is_dir():
            dest.rmdir()  # an empty placeholder; fails (as it should) if someone filled it meanwhile
        crash_point(f"folder-rename:{dest.name}")
        os.rename(tmp, dest)
        fsync_path(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(fd)


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


# ---- crash points (a test hook; see tests/crashing.py) -------------------------------------------------------

_NOTIFY_BROKEN = False


def crash_point(label: str) -> None:
    """Named points in every write path where the crash tests kill this process.

    HUB_CRASH_AT=<glob> kills the process with SIGKILL at the first label matching the glob (as kill -9
    would: no cleanup, no atexit, no flush). HUB_CRASH_NOTIFY_FD=<fd> writes each label reached to that
    fd (a pipe), so a harness can SIGKILL at a random moment after a given point. Unset (always, outside
    the tests): two dict lookups.
    """
    env = os.environ
    if "HUB_CRASH_AT" not in env and "HUB_CRASH_NOTIFY_FD" not in env:
        return
    _notify(label)
    spec = env.get("HUB_CRASH_AT")
    if spec and fnmatch.fnmatchcase(label, spec):
        os.kill(os.getpid(), signal.SIGKILL)


def _notify(label: str) -> None:
    global _NOTIFY_BROKEN
    fd = os.environ.get("HUB_CRASH_NOTIFY_FD")
    if not fd or _NOTIFY_BROKEN:
        return
    try:
        os.write(int(fd), f"{label}\n".encode())
    except (OSError, ValueError):
        _NOTIFY_BROKEN = True  # the harness is gone; carry on


def human_bytes(n: int | None) -> str:
    """A size as `hub list` and the pages show it: "2.2 MB"; "-" for None."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
