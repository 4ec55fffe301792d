"""Naming analysis inputs on the command line: `LABEL=PATH` or just `PATH`."""

from __future__ import annotations

from pathlib import Path

from ..errors import WorldrepError


def labelled(items: list[str] | None, what: str = "input") -> dict[str, Path]:
    """{label: path}; a bare PATH is labelled by its directory name (parent's name for a
    `final`/`checkpoint-N` directory, so runs stay distinguishable)."""
    out: dict[str, Path] = {}
    for item in items or []:
        label, sep, path = item.partition("=")
        if not sep:
            path = item
            p = Path(item)
            label = p.parent.name if p.name == "final" or p.name.startswith("checkpoint-") else p.name
        if not label or not path:
            raise WorldrepError(f"bad {what} '{item}'; expected LABEL=PATH or PATH")
        if label in out:
            raise WorldrepError(f"{what} label '{label}' given twice; name them LABEL=PATH")
        out[label] = Path(path)
    return out


def pairs(items: list[str] | None, what: str) -> dict[str, str]:
    """{key: value} from KEY=VALUE strings."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise WorldrepError(f"bad {what} '{item}'; expected KEY=VALUE")
        out[key] = value
    return out
