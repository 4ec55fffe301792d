"""Task registry: a task module registers its class; `get_task('distance')` finds it."""

from __future__ import annotations

from ..errors import WorldrepError

TASKS: dict = {}


def register(cls):
    TASKS[cls.name] = cls()
    return cls


def get_task(name: str):
    from . import _load_all  # noqa: F401  (imports every task module once)

    if name not in TASKS:
        raise WorldrepError(f"unknown task '{name}'; allowed: {', '.join(task_names())}")
    return TASKS[name]


def task_names() -> list[str]:
    from . import _load_all  # noqa: F401

    paper = sorted((t for t in TASKS.values() if t.number), key=lambda t: t.number)
    extra = sorted(t.name for t in TASKS.values() if not t.number)
    return [t.name for t in paper] + extra


def paper_tasks() -> list[str]:
    """The seven tasks of the paper, in their numbering order (1 = distance ... 7 = crossing)."""
    return [n for n in task_names() if TASKS[n].number]
