"""A study's output directory remembers how it was made: `OUT/study.json`.

`worldrep run` writes the study file, the scale and the `--set` overrides there, so that
`status`, `report` and a later `run` on the same directory need none of them repeated; asking
for another study or another scale of a directory is an error that names both.
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import artifacts, builtin_studies
from ..errors import WorldrepError
from .load import BUILTIN_DIR, Study, load_study

RECORD = "study.json"


def _file_of(study: Study) -> str:
    """The study as a user names it: a built-in's name, else its file's absolute path."""
    path = Path(study.path).resolve()
    if path.parent == BUILTIN_DIR.resolve():
        return path.stem
    return str(path)


def remember(out: Path, study: Study) -> None:
    """Record the study in OUT (only when the record changes: a finished study in a
    read-only directory can still be run, which does nothing)."""
    record = {"study": study.name, "file": _file_of(study), "scale": study.scale,
              "overrides": study.overrides}
    if recall(out) == record:
        return
    if out.is_file() or (out.is_dir() and not (out / RECORD).is_file() and any(
            p for p in out.iterdir() if not p.name.startswith("."))):
        raise WorldrepError(f"--out {out} exists and is not a study's output directory (no "
                            f"{RECORD}); choose a new or empty directory (nothing was written)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        artifacts.write_json_atomic(out / RECORD, record)
    except OSError as err:
        raise WorldrepError(f"cannot write {out / RECORD}: {err.strerror}; the study's output "
                            "directory must be writable") from None


def recall(out: Path) -> dict | None:
    try:
        return json.loads((Path(out) / RECORD).read_text())
    except (OSError, ValueError):
        return None


def open_study(study: str | None, out: Path | None, scale: float | None,
               overrides: list[str] | None) -> tuple[Study, Path]:
    """The study and output directory a command works on. What is not given is taken from
    OUT/study.json; what is given must agree with it."""
    remembered = recall(out) if out is not None else None
    if study is None:
        if remembered is None:
            where = f"{out} holds no {RECORD}" if out is not None else "no --out given"
            raise WorldrepError(f"which study? Name it (a file or a built-in: "
                                f"{', '.join(builtin_studies.names())})"
                                f"; {where}")
        study = remembered["file"]
    if remembered is not None:
        scale = remembered["scale"] if scale is None else scale
        overrides = remembered.get("overrides", []) if overrides is None else overrides
    st = load_study(study, scale or 1.0, overrides=overrides or [])
    target = Path(out) if out is not None else st.default_out()
    remembered = recall(target) if remembered is None else remembered
    if remembered is not None:
        mine = {"file": _file_of(st), "scale": st.scale, "overrides": st.overrides}
        theirs = {k: remembered.get(k, [] if k == "overrides" else None) for k in mine}
        if mine != theirs:
            def show(d):
                extra = f", --set {' '.join(d['overrides'])}" if d["overrides"] else ""
                return f"{d['file']} at scale {d['scale']:g}{extra}"

            raise WorldrepError(f"{target} holds the study {show(theirs)}, not {show(mine)}; "
                                "choose another --out, or drop the arguments that differ")
    return st, target
