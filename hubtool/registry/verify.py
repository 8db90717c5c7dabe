"""What `hub verify` finds besides rows with bad blobs: the leftovers of a crash, and their removal.

A kill -9 can leave, and only leave (every writer writes a temp entry, fsyncs, renames):
  - a store temp file   blobs/.tmp-*            a registration or a fetch killed while staging its copy
  - a store trash file  blobs/ab/.trash-*       `hub rm` killed between moving the blob aside and deleting it
                                                (before its commit the row still needs it: it is put back)
  - an unreferenced blob blobs/ab/<sha256>...    a registration killed after placing its blob, before commit
  - a scratch entry     $HUB_HOME/tmp/*         push staging, pull downloads, packed files being registered
  - a model temp entry  $HUB_HOME/models/.*.tmp* a base-model conversion killed before its rename
  - a run's temp file   $HUB_HOME/runs/*/**/.*.tmp `hub train` killed while saving its expert or a checkpoint
                                                (runs/*/checkpoint/.state.pt.*.tmp)
Temp, trash and scratch entries carry a liveness lock (fileio): only those nobody holds are leftovers.

An unreferenced blob is one no catalog sharing the store references: the store lists the catalogs that have
written to it (blobs.enroll), and each is asked (others()). One that cannot be asked keeps every blob it
might use: --repair deletes only what it can prove nobody uses.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubtool import paths
from hubtool.fileio import claim_abandoned, remove_entry
from hubtool.registry.blobs import (
    TEMP_PREFIX,
    TRASH_PREFIX,
    Listed,
    catalog_key,
    is_location,
    list_started,
    listed_catalogs,
)

# Unreferenced blobs younger than this are left alone where the database has no global write lock to
# rule out a registration in flight (PostgreSQL): placing a blob and committing its row take milliseconds.
GRACE_SECONDS = 600.0


# A blob placed just before the list began could carry an mtime a little older than the list's own (clock
# granularity of the file system); only blobs older by more than this count as from before the list.
_SINCE_SLACK = 2.0


@dataclass
class Others:
    """What the other catalogs sharing a store say: the blob locations their rows point to, which of them
    were asked, which could not be ("catalog: why"), and which are gone (a SQLite file deleted: it
    references nothing, and `hub verify --repair` takes it off the list)."""

    referenced: set[str] = field(default_factory=set)
    checked: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    gone: list[Listed] = field(default_factory=list)
    started: float | None = None  # when the store's list began (None: no list yet)

    @property
    def shared(self) -> bool:
        return bool(self.checked or self.unchecked)

    def unclaimed_before(self) -> float:
        """Unreferenced blobs whose mtime is below this are kept, whoever asks: with a catalog that could
        not be asked, all of them; else those older than the list (a catalog from before it may use them)."""
        if self.unchecked:
            return float("inf")
        if self.started is None:
            return 0.0
        return self.started - _SINCE_SLACK


def neighbours(root: Path) -> list[str]:
    """The catalogs that share a store $X/blobs by default, whether or not they are on its list (a store
    written before there was a list): $X/registry.db and the experiment's $X/experiments/catalog.db."""
    if root.name != "blobs":
        return []
    found = [root.parent / "registry.db", root.parent / "experiments" / "catalog.db"]
    return [f"sqlite:///{path.absolute()}" for path in found if path.is_file()]


def others(root: Path, own_url: str) -> Others:
    """Ask every other catalog that shares the store at `root` which blobs its rows use."""
    from hubtool.registry.db import describe

    own = catalog_key(own_url)
    result = Others(started=list_started(root))
    entries = listed_catalogs(root)
    candidates: dict[str, Listed | None] = {}
    for entry in entries:
        if entry.url is None:
            result.unchecked.append(f"{entry.path}: an unreadable entry of the store's list of catalogs")
        elif (key := catalog_key(entry.url)) and key != own:
            candidates.setdefault(key, entry)
    for url in neighbours(Path(root)):
        if (key := catalog_key(url)) and key != own:
            candidates.setdefault(key, None)
    for key, entry in candidates.items():
        try:
            name = describe(key)
        except Exception:  # noqa: BLE001 (an entry someone edited: named as the list has it, masked)
            from hubtool.registry.db import mask

            name = mask(key)
        try:
            blobs = _blobs_of(key)
        except Exception as err:  # noqa: BLE001 (any failure to ask means: keep what it may use)
            result.unchecked.append(f"{name}: {_reason(err, key)[:200]}")
            continue
        if blobs is None:
            if entry is not None:
                result.gone.append(entry)
            continue
        result.checked.append(name)
        result.referenced.update(blobs)
    return result


def _blobs_of(url: str) -> set[str] | None:
    """The blob column of every row of the catalog at `url`, read only (no migration, nothing created);
    None for a SQLite catalog whose file is gone."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not parsed.query.get("uri"):
        import sqlite3

        path = Path(str(parsed.database))
        if not path.exists():
            return None
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "experts" not in tables:  # a catalog made but never migrated into: no rows
                return set()
            return {row[0] for row in conn.execute("SELECT blob FROM experts")}
        finally:
            conn.close()
    from sqlalchemy import inspect

    from hubtool.registry.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("experts"):
                return set()
            return set(conn.execute(text("SELECT blob FROM experts")).scalars())
    finally:
        engine.dispose()


def _reason(err: BaseException, url: str) -> str:
    """One line, without the URL's password."""
    from hubtool.registry.db import mask

    text = " ".join(str(getattr(err, "orig", None) or err).split()) or type(err).__name__
    try:
        from sqlalchemy.engine import make_url

        password = make_url(url).password
    except Exception:  # noqa: BLE001
        password = None
    if password:
        text = text.replace(str(password), "***")
    return text.replace(url, mask(url))


def sweep(
    store: Any,
    referenced: set[str],
    report: Any,
    *,
    repair: bool,
    grace: float,
    unclaimed_before: float = 0.0,
) -> None:
    """Fill report's leftover fields (orphans, temp, trash, scratch, in_use; removed, restored and recent
    when `repair`: recent are unreferenced blobs younger than `grace`, kept). `referenced`: every blob
    location a row of any catalog sharing the store points to. An unreferenced blob older than
    `unclaimed_before` (a timestamp) may belong to a catalog that could not be asked: it is `unclaimed`,
    never removed. Safe to call again (it starts afresh)."""
    for name in ("orphans", "recent", "unclaimed", "temp", "trash", "scratch", "in_use", "removed", "restored",
                 "errors"):  # fmt: skip
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
                mtime = path.lstat().st_mtime
            except FileNotFoundError:
                continue
            age = now - mtime
            if is_location(location) and mtime < unclaimed_before:
                report.unclaimed.append(path)
            elif repair and is_location(location) and not (path.is_dir() and not path.is_symlink()):
                if age < grace:
                    report.recent.append(path)  # maybe a registration between placing and committing
                else:
                    _remove(path, "orphan", report)
            else:
                report.orphans.append(path)  # (a file that is no blob address, or a folder, is never ours to delete)
    runs = paths.runs_dir()
    for folder, temp_only in [(paths.hub_home() / "tmp", False), (paths.models_dir(), True)]:
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if temp_only and not _is_temp_name(path.name):
                continue
            _leftover(path, "scratch", report, repair)
    for path in _run_temps(runs):
        _leftover(path, "scratch", report, repair)


def _run_temps(runs: Path) -> list[Path]:
    """The temp entries in the runs' folders, at any depth: a run's packed expert beside it, its checkpoint
    files in runs/NAME/checkpoint/ (each written through a temp file). A temp folder is one entry: what is
    inside it goes with it."""
    if not runs.is_dir():
        return []
    found = []
    for top, dirs, files in os.walk(runs):
        if Path(top) == runs:
            files = []  # runs/ holds the runs' folders; a file there is not ours
        temps = sorted(d for d in dirs if _is_temp_name(d))
        dirs[:] = sorted(d for d in dirs if not _is_temp_name(d))
        found += [Path(top) / name for name in (*temps, *sorted(files)) if _is_temp_name(name)]
    return found


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
        needed = (is_location(target) and target in referenced and not (root / target).is_file()
                  and path.is_file() and not path.is_symlink())  # never a folder in a blob's place
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


# --- the catalog file itself -----------------------------------------------------------------------------

# The JSON columns, and how a report names the row holding a bad value.
_JSON_COLUMNS = (
    ("experts", "config", "'experts.config of ' || name || '@' || version"),
    ("tasks", "tags", "'tasks.tags of task ' || name"),
    ("tasks", "sizes", "'tasks.sizes of task ' || name"),
    ("evaluations", "settings", "'evaluations.settings of evaluation ' || id || ' (' || task || ')'"),
    ("eval_examples", "metrics", "'eval_examples.metrics of evaluation ' || evaluation_id || ', example ' || idx"),
)
_MAX_PROBLEMS = 20


def check_file(engine: Any) -> list[str]:
    """What is wrong inside a SQLite catalog file: scrambled pages (PRAGMA quick_check) raise one HubError
    naming the file and how to get the rows back; values that are not JSON in its JSON columns (edited by
    hand, or damaged) come back as "experts.config of qa@2: not valid JSON" lines. Other databases check
    their own pages and JSON columns (PostgreSQL refuses invalid JSON on write): []."""
    from sqlalchemy import text

    from hubtool.errors import HubError
    from hubtool.registry import db

    if engine.dialect.name != "sqlite":
        return []
    where = db.describe(engine.url)
    with engine.connect() as conn:
        try:
            found = [str(line) for line in conn.execute(text(f"PRAGMA quick_check({_MAX_PROBLEMS})")).scalars()]
        except HubError:  # so damaged that the check stops at once (db.damaged)
            found = ["it stopped at once: database disk image is malformed"]
        if found != ["ok"]:
            raise HubError(
                f"catalog {where}: the file is damaged: PRAGMA quick_check found {len(found)}"
                f"{'+' if len(found) >= _MAX_PROBLEMS else ''} problem(s), the first: {found[0]!r}; expected an "
                f"intact SQLite file: restore it from a backup, or save what can be read with "
                f"`sqlite3 {where} .recover | sqlite3 recovered.db`"
            )
        problems: list[str] = []
        for table, column, label in _JSON_COLUMNS:
            rows = conn.execute(text(
                f"SELECT {label} FROM {table} WHERE {column} IS NOT NULL AND NOT json_valid({column}) "
                f"LIMIT {_MAX_PROBLEMS}"
            )).scalars()  # fmt: skip
            problems += [f"{name}: not valid JSON" for name in rows]
    return problems
