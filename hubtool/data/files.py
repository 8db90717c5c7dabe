"""Task files: the rows (Example), a task's splits (TaskData), and the readers of .jsonl, .csv and `datasets`
folders. The lowest part of hubtool.data: it knows no built-ins, no search path and no catalog (tasks.py
resolves a task name to these; builtin.py builds its tasks with them).

Splits are deterministic (see hubtool.data.tasks). Nothing here imports torch or SQLAlchemy.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubtool.errors import HubError, shown

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
