"""Artifact directories: written under a temporary name, completed by a manifest, then renamed.

A directory without `manifest.json` is unfinished and is never read as a result. Writers use
`artifact_dir(out, kind)`: everything goes into `.out.tmp-<pid>` beside it and only a
successful block moves it to `out`, so an error or a kill leaves no half-written `out` behind
and an artifact being replaced stays whole until its successor is complete.

Never lose data: `out` is resolved first (so `a/..` is `.`, never silently a parent), and an
existing `out` is replaced only if it is empty or an artifact of the same kind (its manifest
says so); anything else is an error naming it, and nothing in it is touched.

A manifest lists every file of its artifact with its size and BLAKE2b digest, computed once
when it is written; `verify` checks them before a stage reads an input.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
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


def write_atomic(path: str | Path, write: Callable[[Path], Any]) -> None:
    """One file written whole or not at all: `write(tmp)` fills a temporary beside `path`,
    which then replaces it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written temporary behind
        raise


def write_json_atomic(path: str | Path, obj: Any) -> None:
    text = json.dumps(obj, indent=1, sort_keys=True, default=str)
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_spec(directory: str | Path, spec: dict) -> None:
    (Path(directory) / SPEC).write_text(yaml.safe_dump(spec, sort_keys=False))


def write_manifest(directory: str | Path, kind: str, spec: dict, **extra: Any) -> None:
    """The manifest, written last: kind, the spec's hash (the artifact's identity) and every
    file with its size and digest (what `verify` checks before the artifact is read)."""
    manifest = {"kind": kind, "hash": spec_hash(spec), "created": time.time(), **extra,
                "files": file_digests(directory)}
    write_json_atomic(Path(directory) / MANIFEST, manifest)


# -- file digests ------------------------------------------------------------------------------
def file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# Written into an artifact after its manifest, by others: an offline Weights & Biases run's
# logs, and a run's evaluations (`worldrep eval` writes RUN/evals/ by default). Not listed.
UNLISTED = ("wandb", "evals")


def file_digests(directory: str | Path) -> dict[str, dict]:
    """relative path -> {size, blake2b} of every file under `directory` but its manifest, the
    temporary files of writers and what UNLISTED names."""
    directory = Path(directory)
    found = {}
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        if (not path.is_file() or rel == MANIFEST or ".tmp-" in path.name
                or rel.split("/", 1)[0] in UNLISTED):
            continue
        found[rel] = {"size": path.stat().st_size, "blake2b": file_digest(path)}
    return found


_VERIFIED: dict[tuple, None] = {}  # (directory, manifest mtime, size) already checked here


def verify_problem(path: str | Path) -> str | None:
    """Why the finished artifact at `path` must not be read (a file its manifest lists is
    missing, truncated or changed), or None. An artifact of an older worldrep, whose manifest
    lists no files, cannot be checked and passes."""
    path = Path(path)
    try:
        stat = (path / MANIFEST).stat()
        manifest = read_manifest(path)
    except (OSError, ValueError) as err:
        return f"{path / MANIFEST} cannot be read ({type(err).__name__})"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    seen = []
    for rel, want in (files or {}).items():
        file = path / rel
        try:
            st = file.stat()
        except OSError:
            return f"{file} is missing (its manifest lists it)"
        if st.st_size != want.get("size"):
            return (f"{file} has {st.st_size} bytes, its manifest says "
                    f"{want.get('size')} (truncated or replaced)")
        seen.append((rel, st.st_size, st.st_mtime_ns, st.st_ino))
    # Digests are read once per process for files that did not change since (by their stat).
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, tuple(seen))
    if key in _VERIFIED:
        return None
    for rel, want in (files or {}).items():
        file = path / rel
        if file_digest(file) != want.get("blake2b"):
            return f"{file} differs from what its manifest records (changed after it was written)"
    _VERIFIED[key] = None
    return None


def verify(path: str | Path) -> None:
    """Refuse to read a tampered or truncated artifact: a WorldrepError naming the file."""
    from .errors import WorldrepError

    problem = verify_problem(path)
    if problem:
        raise WorldrepError(f"{problem}; remake {Path(path)} (or its study step) before "
                            "reading it")


# -- where an artifact is written ------------------------------------------------------------------
def resolve_out(out: str | Path) -> Path:
    """An output path made absolute with `..` and links resolved, so that what is checked is
    what is written (`s/a/..` is `s`)."""
    return Path(os.path.abspath(Path(out).expanduser())).resolve()


def check_out(out: str | Path, kind: str | None = None, marker: str | None = None) -> Path:
    """The resolved `out`, if worldrep may write an artifact of `kind` there: it does not
    exist, is empty, or is an artifact of that kind (its manifest's kind, or it holds
    `marker`); `kind` None accepts any worldrep artifact. Else a WorldrepError naming it."""
    from .errors import WorldrepError

    path = resolve_out(out)
    if not path.exists() and not path.is_symlink():
        return path
    if not path.is_dir():
        raise WorldrepError(f"--out {out}: {path} exists and is a file, not a directory; "
                            "choose a new directory (worldrep never replaces a file it did "
                            "not write)")
    if path.parent == path or not any(path.iterdir()):
        if path.parent == path:
            raise WorldrepError(f"--out {out}: {path} is the root directory")
        return path
    if marker and (path / marker).is_file():
        return path
    found = None
    if is_complete(path):
        try:
            found = read_manifest(path).get("kind")
        except (OSError, ValueError, AttributeError):
            found = None
    if found is not None and (kind is None or found == kind):
        return path
    what = (f"a {found} artifact, not a {kind}" if found else
            "not a worldrep artifact (no manifest.json)")
    raise WorldrepError(f"--out {out}: {path} exists and is {what}; worldrep replaces only "
                        "an artifact of the same kind: choose a new or empty directory "
                        "(nothing was written or removed)")


def check_not_input(out: str | Path, inputs: dict[str, str | Path | None] | list[tuple]
                    ) -> None:
    """No command writes into one of its own inputs: `out` may be neither an input, nor
    inside one, nor hold one. `inputs`: what -> path, or (what, path) pairs."""
    from .errors import WorldrepError

    target = resolve_out(out)
    for what, path in (inputs.items() if isinstance(inputs, dict) else inputs):
        if path is None:
            continue
        source = resolve_out(path)
        if target == source or source in target.parents or target in source.parents:
            relation = ("is" if target == source else "is inside" if source in target.parents
                        else "holds")
            raise WorldrepError(f"--out {out} {relation} the {what} {path}, an input of this "
                                "command; write the output elsewhere")


@contextlib.contextmanager
def artifact_dir(out: str | Path, kind: str | None = None, marker: str | None = None
                 ) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `out` that becomes `out` only if the block
    succeeds. An existing `out` must be an artifact of `kind` (see `check_out`); it is
    moved aside, the new one moved in, and only then the old one removed."""
    from .errors import WorldrepError

    out = check_out(out, kind, marker)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WorldrepError(f"cannot create {out.parent}: {err.strerror}") from None
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
    except OSError as err:
        raise WorldrepError(f"cannot write in {out.parent}: {err.strerror}") from None
    try:
        yield tmp
        check_out(out, kind, marker)  # written meanwhile by something else?
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old, out)  # the old artifact back, whole
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise WorldrepError(f"writing {out} failed: {err.strerror or err}; the "
                                "previous contents (if any) are untouched") from None
        raise
