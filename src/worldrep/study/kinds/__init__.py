"""Step kinds: adapters from a study's step declarations to the stage functions.

- `base`: what a kind is (`StepKind`), the registry (`register_kind`, `get_kind`);
- `datasets`: the world, task datasets, mixtures;
- `runs`: training runs and evaluations;
- `analyses`: representations and the analyses over them.

Importing this package registers the built-in kinds; a plugin module registers its own.
"""

from . import analyses, datasets, runs  # noqa: F401 - registers the built-in kinds
from .base import (
    KINDS,
    Derived,
    Lazy,
    Ref,
    StepKind,
    get_kind,
    leading_kind,
    register_kind,
    scale_down,
    scale_up,
)
from .datasets import data_tasks, split_rows
from .runs import eval_name, eval_summary, model_depth, trained_on

__all__ = [
    "KINDS", "Derived", "Lazy", "Ref", "StepKind", "data_tasks", "eval_name", "eval_summary",
    "get_kind", "leading_kind", "model_depth", "register_kind", "scale_down", "scale_up",
    "split_rows", "trained_on",
]
