"""The expert record of a Hub repo (its hubtool.json, or one entry of hubtool_library.json) as `hub pull`
reads it: a pydantic model, so a field of the wrong type or size is one error naming the field.

    entry = read_record(item, files, where="org/qa@1a2b3c4d5e6f")   # a dict; HubError naming the field

What is checked is what pull uses: the name, task, file and sha256 that find and verify the packed file,
and what goes into the catalog next to it (tasks, tags, metrics, config, lineage parents, description,
the task's row). Every such field has a cap (below): a repo is someone else's file, and a 200 MB
description or metric name must not reach the catalog. Fields the packed file's own header states
(kind, value_dtype, nnz, bytes, keep_ratio, targets, created_at) are not read from the record, nor are
the PEFT export's sidecar fields that `hub push` writes beside them (interop/peft.py's format): those are
ignored at the top level (extra="ignore"), so a newer hubtool's added field does not stop this one from
pulling. The nested objects (lineage, its parents, task_info) are small and fixed: extra="forbid".
Types are strict: "3" is not a number, 1 is not a string, true is not a version.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from hubtool.errors import HubError, shown
from hubtool.hub.layout import EXPERT_FORMAT

# --- the caps ----------------------------------------------------------------------------------------------
MAX_NAME = 128  # an expert, task or tag name (registry.lookup.NAME's rule)
MAX_SHORT = 1024  # base_model, base_revision, category, a parent's ref and role, file, ref
MAX_TEXT = 16 * 1024  # description, the task's description, peft_note: characters
MAX_ITEMS = 256  # tasks, tags, the task's tags
MAX_PARENTS = 1024  # lineage parents (a merge of many experts)
MAX_METRIC_TASKS = 256  # tasks under metrics
MAX_METRICS = 64  # metrics per task
MAX_METRIC_NAME = MAX_NAME  # a task or metric name under metrics
MAX_CONFIG_BYTES = 1 << 20  # config, as JSON
MAX_LIBRARY = 10_000  # experts in one hubtool_library.json

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # registry.lookup.NAME
SHA256_PATTERN = r"^[0-9a-f]{64}$"
_SAFE_PATH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")
_PATTERNS = {NAME_PATTERN: "a name of letters, digits, '.', '_' or '-' (at most 128)",
             SHA256_PATTERN: "64 lowercase hex digits"}

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Short = Annotated[str, StringConstraints(max_length=MAX_SHORT)]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class _Nested(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Parent(_Nested):
    ref: Annotated[str, StringConstraints(min_length=1, max_length=MAX_SHORT)]
    role: Short | None = None
    weight: Finite | None = None


class Lineage(_Nested):
    parents: Annotated[list[Parent], Field(max_length=MAX_PARENTS)] = []


class TaskInfo(_Nested):
    description: Text | None = None
    category: Short | None = None
    tags: Annotated[list[Short], Field(max_length=MAX_ITEMS)] = []
    sizes: Annotated[dict[Name, Annotated[int, Field(ge=0, lt=2**63)]], Field(max_length=8)] = {}


class PulledRecord(BaseModel):
    """One expert of a repo, as pull reads it (see the module's docstring for what is checked and why)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    name: Name
    task: Name
    sha256: Annotated[str, StringConstraints(pattern=SHA256_PATTERN)]
    file: str
    hub_format: str = EXPERT_FORMAT
    version: Annotated[int, Field(gt=0, lt=2**63)] | None = None
    ref: Short | None = None
    tasks: Annotated[list[Name], Field(max_length=MAX_ITEMS)] = []
    tags: Annotated[list[Name], Field(max_length=MAX_ITEMS)] = []
    metrics: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    lineage: Lineage | None = None
    task_info: TaskInfo | None = None
    description: Text | None = None
    base_model: Short | None = None
    base_revision: Short | None = None
    category: Short | None = None

    @field_validator("file")
    @classmethod
    def _plain_path(cls, file: str) -> str:
        if len(file) > MAX_SHORT or not _SAFE_PATH.fullmatch(file) or ".." in file.split("/"):
            raise ValueError(f"file {shown(file, 100)} is not a plain path inside the repo")
        return file

    @field_validator("hub_format")
    @classmethod
    def _format(cls, value: str) -> str:
        if value != EXPERT_FORMAT:
            raise ValueError(f"hub_format {shown(value, 60)}; this hubtool reads {EXPERT_FORMAT!r}")
        return value

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, metrics: dict[str, Any] | None) -> dict[str, Any] | None:
        """{task: {metric: finite number}} (or a flat {metric: number}): what the catalog stores."""
        from hubtool.format.safejson import finite

        if metrics is None:
            return None
        if len(metrics) > MAX_METRIC_TASKS:
            raise ValueError(f"metrics: {len(metrics)} entries; at most {MAX_METRIC_TASKS}")
        for task, value in metrics.items():
            if len(task) > MAX_METRIC_NAME:
                raise ValueError(f"metrics: a name of {len(task):,} characters; at most {MAX_METRIC_NAME}")
            if isinstance(value, dict) and len(value) > MAX_METRICS:
                raise ValueError(f"metrics[{task!r}]: {len(value)} metrics; at most {MAX_METRICS}")
            values = value.items() if isinstance(value, dict) else [(None, value)]
            for metric, v in values:
                field = f"metrics[{task!r}]" + (f"[{shown(metric, 40)}]" if metric is not None else "")
                if metric is not None and len(metric) > MAX_METRIC_NAME:
                    raise ValueError(f"metrics[{task!r}]: a metric name of {len(metric):,} characters; "
                                     f"at most {MAX_METRIC_NAME}")
                if not finite(v):
                    raise ValueError(f"{field}: expected a finite number, got {shown(v, 40)}")
        return metrics

    @field_validator("config")
    @classmethod
    def _config(cls, config: dict[str, Any] | None) -> dict[str, Any] | None:
        if config is not None:
            size = len(json.dumps(config, ensure_ascii=False).encode("utf-8", "surrogatepass"))
            if size > MAX_CONFIG_BYTES:
                raise ValueError(f"config: {size:,} bytes as JSON; at most {MAX_CONFIG_BYTES:,}")
        return config


def read_record(item: Any, where: str) -> dict[str, Any]:
    """The record, validated, as a plain dict (fields absent from it: their defaults; the ones pull does
    not read: dropped); `ref` defaults to NAME@VERSION. Raises one HubError naming the expert and field."""
    label = f"{where}: expert {shown(item.get('name'), 100)}" if isinstance(item, dict) else where
    if not isinstance(item, dict):
        raise HubError(f"{where}: an expert record is not a JSON object")
    try:
        record = PulledRecord.model_validate(item)
    except ValidationError as err:
        raise HubError(f"{label}: {describe(err)}") from None
    entry = record.model_dump()
    if entry["ref"] is None:
        entry["ref"] = f"{record.name}@{record.version if record.version is not None else '?'}"
    return entry


def describe(err: ValidationError) -> str:
    """The first error of a validation, as 'field.path: expected ..., got ...' (one line, bounded)."""
    e = err.errors(include_url=False)[0]
    if e["type"] == "value_error":  # our validators' messages name the field themselves
        return str(e["ctx"]["error"])
    path = _path(e["loc"])
    kind = e["type"]
    if kind == "missing":
        return f"{path}: missing"
    if kind == "extra_forbidden":
        return f"{path}: unknown field"
    expected = {
        "string_type": "a string", "int_type": "a whole number", "float_type": "a number",
        "list_type": "a JSON array", "dict_type": "a JSON object", "model_type": "a JSON object",
        "bool_type": "true or false", "finite_number": "a finite number",
    }.get(kind)
    if expected is None and kind == "string_pattern_mismatch":
        expected = _PATTERNS.get(e.get("ctx", {}).get("pattern"), "another form")
    if expected is None:
        message = e["msg"]
        expected = message[:1].lower() + message[1:]
        return f"{path}: {expected}, got {shown(e.get('input'), 60)}"
    return f"{path}: expected {expected}, got {shown(e.get('input'), 60)}"


def _path(loc: tuple[Any, ...]) -> str:
    """('lineage', 'parents', 0, 'ref') -> 'lineage.parents[0].ref'; keys of a dict field in brackets."""
    out = ""
    model: Any = PulledRecord
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif model is not None:  # a field of a model (or an unknown one: extra="forbid")
            out += ("." if out else "") + part
            known = model.model_fields.get(part)
            model = _model_of(known.annotation) if known is not None else None
        else:  # a key of a dict field (metrics, config, sizes)
            out += f"[{shown(part, 40)}]"
            model = None
    return out or "record"


def _model_of(annotation: Any) -> Any:
    """The pydantic model a field holds (through Optional and list), or None."""
    from typing import get_args

    stack = [annotation]
    while stack:
        a = stack.pop()
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
        stack.extend(get_args(a))
    return None
