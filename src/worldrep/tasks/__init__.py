"""The task library: one module per task, registered by name.

Adding a task is adding one module here that defines a `Task` subclass decorated with
`@register`; `_load_all` imports every module of this package.
"""

from .registry import get_task, paper_tasks, task_names

__all__ = ["get_task", "paper_tasks", "task_names"]
