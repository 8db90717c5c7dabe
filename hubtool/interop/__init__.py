"""Other tools' formats in and out (PEFT adapter folders, GGUF base models), and the one helper they share:
writing a whole folder atomically. No torch at import time."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hubtool.errors import HubError


@contextmanager
def atomic_folder(dest: str | Path) -> Iterator[Path]:
    """Yield an empty temp folder next to ``dest``; on success fsync its files and rename it to ``dest``.

    Readers never see a half-written folder: either ``dest`` is absent or it is complete. ``dest`` must not
    exist yet (an empty folder is allowed and replaced). On error the temp folder is removed.
    """
    dest = Path(dest).expanduser().absolute()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise HubError(f"{dest} already exists; expected a new (or empty) folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private (0700); the result is an ordinary shared folder
    try:
        yield tmp
        for path in tmp.rglob("*"):
            if path.is_file():
                _fsync(path)
        if dest.is_dir():
            dest.rmdir()  # an empty placeholder; fails (as it should) if someone filled it meanwhile
        os.rename(tmp, dest)
        _fsync(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
