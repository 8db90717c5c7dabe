"""Task data: loading (files, folders, built-ins), prompt formatting and metrics. No torch at import."""

from hubtool.data.tasks import (
    Example,
    TaskData,
    TaskInfo,
    list_tasks,
    load_task,
    registered_tasks,
    task_search_path,
)

__all__ = [
    "Example",
    "TaskData",
    "TaskInfo",
    "list_tasks",
    "load_task",
    "registered_tasks",
    "task_search_path",
]
