"""The studies shipped inside the package: their folder and their names. A module of its own
so that the CLI's help can list them without importing the study engine (half a second)."""

from __future__ import annotations

from pathlib import Path

DIR = Path(__file__).resolve().parent / "studies"


def names() -> list[str]:
    """The built-in studies, as `worldrep run NAME` accepts them."""
    return sorted(p.stem for p in DIR.glob("*.yaml"))
