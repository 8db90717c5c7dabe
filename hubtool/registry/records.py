"""What the catalog hands back: plain dataclasses, detached from any database session."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class ExpertRecord:
    """One expert version as the catalog knows it."""

    id: int = field(repr=False)  # row id; internal, not part of to_dict()
    name: str
    version: int
    kind: str
    task: str  # primary task
    tasks: list[str]  # all tasks, primary first
    base_model: str
    base_revision: str | None
    targets: str | None
    keep_ratio: float | None
    nnz: int
    bytes: int
    sha256: str
    blob: str  # location in the blob store; Catalog.blob_path(record) gives the file
    created_at: datetime  # UTC
    config: dict[str, Any]
    description: str | None
    hub_repo: str | None
    hub_commit: str | None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> metric -> value
    tags: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)  # aliases pointing at this version
    value_dtype: str | None = None  # bfloat16 | float16 | float32; None: registered before 0003, blob unread

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the catalog fields plus ref, metrics, tags and aliases."""
        return {
            "ref": self.ref,
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "value_dtype": self.value_dtype,
            "task": self.task,
            "tasks": list(self.tasks),
            "base": self.base_model,  # the short key `hub list --json` users filter on
            "base_model": self.base_model,
            "base_revision": self.base_revision,
            "targets": self.targets,
            "keep_ratio": self.keep_ratio,
            "nnz": self.nnz,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "blob": self.blob,
            "created_at": _iso(self.created_at),
            "config": self.config,
            "description": self.description,
            "hub_repo": self.hub_repo,
            "hub_commit": self.hub_commit,
            "metrics": self.metrics,
            "tags": list(self.tags),
            "aliases": list(self.aliases),
        }


@dataclass
class TaskRecord:
    name: str
    description: str | None
    tags: list[str]
    data_source: str | None  # the file or folder the task's data is read from (absolute path)
    sizes: dict[str, int]  # split -> number of examples
    created_at: datetime
    category: str | None = None  # qa, summarize, classify, multiple-choice, math, ... or None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "category": self.category,
            "tags": list(self.tags),
            "data_source": self.data_source,
            "sizes": dict(self.sizes),
            "created_at": _iso(self.created_at),
        }


@dataclass
class VerifyReport:
    """What Catalog.verify() found. ok when every row's blob is here (or on its Hub repo) and hashes to its
    sha256, and nothing a crash can leave is left: no unreferenced file in the store, no abandoned temp,
    trash or scratch entry. After a repair the lists hold what is still there; `removed` what went."""

    checked: int = 0  # blob files re-hashed
    mismatched: list[str] = field(default_factory=list)  # refs whose blob content changed
    missing: list[str] = field(default_factory=list)  # refs whose blob file is gone (and not on a Hub)
    remote: list[str] = field(default_factory=list)  # refs whose blob is not here but on their Hub repo
    orphans: list[Path] = field(default_factory=list)  # store files no row of any catalog points to
    recent: list[Path] = field(default_factory=list)  # unreferenced blobs --repair kept: younger than --grace
    # Other catalogs sharing the blob store: those asked which blobs they use, how many store blobs only
    # they use, those that could not be asked ("catalog: why"), and those whose SQLite file is gone.
    others: list[str] = field(default_factory=list)
    shared: int = 0
    unchecked: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    # unreferenced blobs kept whatever the flags: a catalog that could not be asked, or one that wrote here
    # before the store listed its catalogs, may use them
    unclaimed: list[Path] = field(default_factory=list)
    temp: list[Path] = field(default_factory=list)  # the store's .tmp- files nobody is writing
    trash: list[Path] = field(default_factory=list)  # the store's .trash- files nobody is deleting
    scratch: list[Path] = field(default_factory=list)  # $HUB_HOME/tmp (and models/ temp) leftovers
    in_use: list[Path] = field(default_factory=list)  # held by a live process, or a blob just placed
    removed: list[dict[str, str]] = field(default_factory=list)  # {"path", "kind"} that --repair removed
    restored: list[str] = field(default_factory=list)  # trashed blobs a row still needed, put back
    errors: list[str] = field(default_factory=list)  # what --repair could not remove, and why
    # values inside the catalog file itself that are wrong ("experts.config of qa@2: not valid JSON")
    damaged: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.mismatched or self.missing or self.orphans or self.recent or self.temp
                    or self.trash or self.scratch or self.errors or self.unchecked or self.damaged)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "mismatched": list(self.mismatched),
            "missing": list(self.missing),
            "remote": list(self.remote),
            "orphans": [str(p) for p in self.orphans],
            "recent": [str(p) for p in self.recent],
            "others": list(self.others),
            "shared": self.shared,
            "unchecked": list(self.unchecked),
            "gone": list(self.gone),
            "unclaimed": [str(p) for p in self.unclaimed],
            "temp": [str(p) for p in self.temp],
            "trash": [str(p) for p in self.trash],
            "scratch": [str(p) for p in self.scratch],
            "in_use": [str(p) for p in self.in_use],
            "removed": list(self.removed),
            "restored": list(self.restored),
            "errors": list(self.errors),
            "damaged": list(self.damaged),
        }
