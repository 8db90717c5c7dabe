"""`load_task` with a catalog's tasks table: what hubtool.data.load_task does, plus step 4 for a catalog URL
or the default catalog.

hubtool.data reads task files and knows no catalog: its load_task asks only a catalog handed to it (anything
with list_tasks()). This module, above both, hands it one: an open Catalog as it is, or a view of the catalog
at a URL (None: the default one) that is opened only when steps 1-3 find nothing. A default SQLite catalog
that does not exist yet has no tasks, and is not created.

    from hubtool.registry.task_loader import load_task
    load_task("qa")                                  # a file, folder, built-in, or the default catalog's task
    load_task("mine", catalog="sqlite:///other.db")  # ... or that catalog's
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hubtool.data.tasks import TaskData
    from hubtool.registry.records import TaskRecord


class CatalogTasks:
    """The tasks table of the catalog at `url` (None: the default catalog), read when asked."""

    def __init__(self, url: str | None) -> None:
        self.url = url

    def list_tasks(self) -> list[TaskRecord]:
        from hubtool.paths import default_catalog_url

        url = self.url or default_catalog_url()
        missing = url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).expanduser().is_file()
        if self.url is None and missing:
            return []  # no catalog yet: don't create one only to find nothing in it
        from hubtool.registry import Catalog

        with Catalog(url) as cat:
            return cat.list_tasks()


def tasks_of(catalog: Any) -> Any:
    """What hubtool.data's load_task asks: an open Catalog (anything with list_tasks()) or False as given,
    a URL or None as a CatalogTasks."""
    if catalog is False or hasattr(catalog, "list_tasks"):
        return catalog
    if catalog is None or isinstance(catalog, str):
        return CatalogTasks(catalog)
    raise TypeError(f"catalog {catalog!r}: expected an open Catalog, a URL, None or False")


def load_task(
    name_or_file: str | os.PathLike[str], *, seed: int = 42, name: str | None = None, catalog: Any = None
) -> TaskData:
    """hubtool.data.load_task, where `catalog` (step 4) may also be a URL, or None for the default catalog
    (when it exists; none is created); False for nowhere."""
    from hubtool.data.tasks import load_task as load

    return load(name_or_file, seed=seed, name=name, catalog=tasks_of(catalog))


def registered_tasks(catalog: Any = None) -> dict[str, TaskRecord]:
    """The catalog's tasks table as {name: TaskRecord}; `catalog` as for load_task."""
    from hubtool.data.tasks import registered_tasks as registered

    return registered(tasks_of(catalog))
