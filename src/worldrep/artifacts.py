"""Artifact directories: written under a temporary name, completed by a manifest, then renamed.

A directory without `manifest.json` is unfinished and is never read as a result. Writers use
`artifact_dir(out)`: everything goes into `out.tmp-<pid>` and only a successful block renames it
to `out`, so an error or a kill leaves no half-written `out` behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

MANIFEST = "manifest.json"
SPEC = "spec.yaml"


def spec_hash(spec: Any, length: int = 10) -> str:
    """A short stable hash of a JSON-able spec (key order does not matter)."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def is_complete(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | Path) -> dict:
    return json.loads((Path(path) / MANIFEST).read_text())


def content_id(path: str | Path) -> str:
    """The identity of a finished artifact (its manifest's hash): what another artifact
    records of an input instead of its path, which may differ on every machine."""
    from .errors import WorldrepError

    path = Path(path)
    if path.is_file():  # a file of an artifact (e.g. a reps.npz): its directory's identity
        path = path.parent
    if not is_complete(path):
        raise WorldrepError(f"{path} is not a finished artifact (no {MANIFEST})")
    return read_manifest(path)["hash"]


def save_npz(path: str | Path, **arrays) -> None:
    """np.savez with fixed zip timestamps, so that equal arrays give equal bytes (np.savez
    stamps every member with the current time)."""
    import zipfile

    import numpy as np

    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def write_spec(directory: str | Path, spec: dict) -> None:
    (Path(directory) / SPEC).write_text(yaml.safe_dump(spec, sort_keys=False))


def write_manifest(directory: str | Path, kind: str, spec: dict, **extra: Any) -> None:
    manifest = {"kind": kind, "hash": spec_hash(spec), "created": time.time(), **extra}
    write_json_atomic(Path(directory) / MANIFEST, manifest)


@contextlib.contextmanager
def artifact_dir(out: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a fresh temporary directory that becomes `out` only if the block succeeds."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(out)
        shutil.rmtree(out)
    os.replace(tmp, out)
