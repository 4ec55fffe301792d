"""The `worldrep` command: the only place that parses argv.

Every command calls the same stage function the study runner and the tests call. Bad input
raises WorldrepError, printed here as one `error:` line with exit code 2.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated

import typer

from .errors import WorldrepError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Study how small transformers come to represent a world.")
world_app = typer.Typer(no_args_is_help=True, help="Build the world of cities.")
data_app = typer.Typer(no_args_is_help=True, help="Task datasets and mixtures.")
app.add_typer(world_app, name="world")
app.add_typer(data_app, name="data")


def friendly(fn):
    """Turn WorldrepError into one clear line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except WorldrepError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None

    return wrapper


# --- world and data commands ------------------------------------------------------------
@world_app.command("build")
@friendly
def world_build(
    out: Annotated[Path, typer.Option(help="output directory")],
    config: Annotated[Path | None, typer.Option(help="world config YAML")] = None,
):
    """Write cities.parquet, cities.csv and the resolved spec."""
    from .config import load_config
    from .world import WorldConfig, make_world

    cfg = load_config(WorldConfig, config)
    make_world(out, cfg)
    typer.echo(f"world written to {out}")


@data_app.command("make")
@friendly
def data_make(
    task: Annotated[str, typer.Argument(help="task name, e.g. distance")],
    world: Annotated[Path, typer.Option(help="world directory")],
    out: Annotated[Path, typer.Option(help="output directory")],
    n_train: Annotated[int | None, typer.Option(help="training rows")] = None,
    n_val: Annotated[int | None, typer.Option(help="validation rows")] = None,
    n_test: Annotated[int | None, typer.Option(help="test rows")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed")] = None,
    pool: Annotated[str | None, typer.Option(help="cities that may appear (default world)")] = None,
    require: Annotated[str | None, typer.Option(help="every item includes one of these")] = None,
    config: Annotated[Path | None, typer.Option(help="dataset spec YAML")] = None,
):
    """Generate train/validation/test parquet files for one task."""
    from .config import load_config
    from .data import DatasetSpec, make_dataset
    from .tasks import get_task
    from .world import load_world

    get_task(task)
    spec = load_config(DatasetSpec, config, task=task, n_train=n_train, n_val=n_val,
                       n_test=n_test, seed=seed, pool=pool, require=require)
    make_dataset(load_world(world), spec, out)
    typer.echo(f"dataset written to {out}")


@data_app.command("mix")
@friendly
def data_mix(
    out: Annotated[Path, typer.Option(help="output directory")],
    source: Annotated[list[str], typer.Option(
        help="DIR or DIR:N (N train rows sampled from DIR); repeat for each source")] = None,
    mode: Annotated[str, typer.Option(help="sample or concat")] = "sample",
    seed: Annotated[int, typer.Option(help="random seed")] = 42,
    config: Annotated[Path | None, typer.Option(help="mixture spec YAML")] = None,
):
    """Combine task datasets: sample N rows of each source, or concatenate them all."""
    from .config import load_config
    from .mixing import MixSpec, make_mixture, parse_source

    sources = [parse_source(s) for s in (source or [])]
    spec = load_config(MixSpec, config, sources=sources or None, mode=mode, seed=seed)
    make_mixture(spec, out)
    typer.echo(f"mixture written to {out}")


# --- train and eval commands ------------------------------------------------------------


# --- analyze commands -------------------------------------------------------------------


# --- study commands ---------------------------------------------------------------------


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
