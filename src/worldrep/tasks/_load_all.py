"""Imports every task module so that each registers itself."""

import importlib
import pkgutil
from pathlib import Path

# The package's own directory, not the package object: importing the package from here
# would make it and its registry import each other.
for _info in pkgutil.iter_modules([str(Path(__file__).parent)]):
    if not _info.name.startswith("_") and _info.name not in ("base", "common", "registry"):
        importlib.import_module(f"{__package__}.{_info.name}")
