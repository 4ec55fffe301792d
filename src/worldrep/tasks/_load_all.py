"""Imports every task module so that each registers itself."""

import importlib
import pkgutil

from .. import tasks as _pkg

for _info in pkgutil.iter_modules(_pkg.__path__):
    if not _info.name.startswith("_") and _info.name not in ("base", "common", "registry"):
        importlib.import_module(f"{_pkg.__name__}.{_info.name}")
