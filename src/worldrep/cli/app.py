"""The `worldrep` app and what its commands share: one `error:` line for bad input, and
where a command may write."""

from __future__ import annotations

import contextlib
import errno
import functools
from collections.abc import Iterator
from pathlib import Path

import typer

from ..errors import WorldrepError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Study how small transformers come to represent a world.")
world_app = typer.Typer(no_args_is_help=True, help="Build the world of cities.")
data_app = typer.Typer(no_args_is_help=True, help="Task datasets and mixtures.")
analyze_app = typer.Typer(no_args_is_help=True,
                          help="Representations, probes, similarity, PCA, Atlantis error, NI.")
app.add_typer(world_app, name="world")
app.add_typer(data_app, name="data")
app.add_typer(analyze_app, name="analyze")


# The environment refused (a full disk, a read-only or foreign directory, a too long name):
# one line, not a traceback.
ENVIRONMENT = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
               errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.EMFILE}


def friendly(fn):
    """Turn WorldrepError (and the environment's refusals) into one clear line on stderr and
    exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except WorldrepError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        except OSError as err:
            if err.errno not in ENVIRONMENT:
                raise
            where = f": {err.filename}" if err.filename else ""
            typer.echo(f"error: {err.strerror}{where}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _paths(items) -> list[tuple[str, str]]:
    """Input paths of LABEL=PATH style arguments, for `check_not_input`."""
    return [("input", str(item).rpartition("=")[2]) for item in items or []]


@contextlib.contextmanager
def _writing(out: Path, kind: str | None = None, inputs: dict | list | None = None,
             check: bool = True) -> Iterator[Path]:
    """Where a command writes: `out` resolved, checked to be new, empty or an artifact of
    `kind` (if `check`), not one of the command's `inputs`, and locked for the command."""
    from .. import artifacts
    from ..study import locks

    target = artifacts.resolve_out(out)
    if target.exists() and not target.is_dir():
        artifacts.check_out(out, kind)  # the error for a file
    artifacts.check_not_input(out, inputs or {})
    if check:
        artifacts.check_out(out, kind)
    with locks.holding(target):
        yield target


def _check_container(out: Path, kind: str) -> None:
    """A directory of artifacts (one per checkpoint) holds only artifacts of `kind`."""
    from .. import artifacts

    for entry in (out.iterdir() if out.is_dir() else []):
        if not entry.name.startswith("."):
            artifacts.check_out(entry, kind)


def _options(model, **options):
    """A stage's spec from command-line options (None: not given); a bad value is named by
    its option, e.g. `--batch-size`."""
    import pydantic

    try:
        return model.model_validate({k: v for k, v in options.items() if v is not None})
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        option = "--" + str(first["loc"][0]).replace("_", "-")
        raise WorldrepError(f"{option}: {first['msg']} (got {first.get('input')!r})") from None
