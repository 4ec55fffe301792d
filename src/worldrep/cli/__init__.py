"""The `worldrep` command: the only place that parses argv.

Every command calls the same stage function the study runner and the tests call. Bad input
raises WorldrepError, printed as one `error:` line with exit code 2 (`app.friendly`).

- `app`: the typer app, and what commands share (errors, where a command may write);
- `stages`: world, data, train, eval: one artifact each;
- `analyze`: `worldrep analyze ...`;
- `study`: plan, run, status, unlock, verify, report, quickstart.
"""

from . import analyze, stages, study  # noqa: F401 - registers the commands
from .app import app


def main() -> None:  # pragma: no cover - entry point
    app()


__all__ = ["app", "main"]
