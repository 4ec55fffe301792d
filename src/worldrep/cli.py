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
def _study_out(study, out: Path | None) -> Path:
    return Path(out) if out else study.default_out()


@app.command("plan")
@friendly
def study_plan(
    study: Annotated[str, typer.Argument(help="study YAML file, or a built-in: quickstart, paper")],
    scale: Annotated[float, typer.Option(help="divide every data size and step count by S")] = 1.0,
):
    """Print the expanded steps of a study and what each one reads."""
    from .study import format_plan, load_study

    typer.echo(format_plan(load_study(study, scale)))


@app.command("run")
@friendly
def study_run(
    study: Annotated[str, typer.Argument(help="study YAML file, or a built-in: quickstart, paper")],
    out: Annotated[Path | None, typer.Option(help="study output directory")] = None,
    jobs: Annotated[int, typer.Option(help="local worker processes")] = 1,
    executor: Annotated[str, typer.Option(help="local or slurm")] = "local",
    scale: Annotated[float, typer.Option(help="divide every data size and step count by S")] = 1.0,
    step: Annotated[list[str] | None, typer.Option(
        help="run only this step (and what it needs); repeatable")] = None,
    resources: Annotated[list[str] | None, typer.Option(
        help="slurm settings KEY=VALUE or KIND.KEY=VALUE, e.g. train.gpus=1; repeatable")] = None,
    cluster: Annotated[str | None, typer.Option(
        help="submitit cluster for --executor slurm: slurm (default), local or debug")] = None,
):
    """Run every step of a study that is missing or changed, in dependency order."""
    from .executors import make_backend, resource_overrides, run_study
    from .study import load_study

    st = load_study(study, scale)
    target = _study_out(st, out)
    res = resource_overrides(st.resources, resources or [])
    backend = make_backend(executor, st, target, jobs=jobs, resources=res,
                           cluster=cluster or ("slurm" if executor == "slurm" else None))
    typer.echo(f"study {st.name}: {len(st.steps)} steps, output in {target}")
    report = run_study(st, target, backend, log=typer.echo, only=step)
    typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(1)


@app.command("status")
@friendly
def study_status(
    study: Annotated[str, typer.Argument(help="study YAML file, or a built-in: quickstart, paper")],
    out: Annotated[Path | None, typer.Option(help="study output directory")] = None,
    scale: Annotated[float, typer.Option(help="the scale the study was run with")] = 1.0,
):
    """Show which steps are done, running, failed (with the error) or pending."""
    from .cache import format_status, study_states
    from .study import load_study

    st = load_study(study, scale)
    target = _study_out(st, out)
    typer.echo(format_status(st, target, study_states(st, target)))


@app.command("report")
@friendly
def study_report(
    study: Annotated[str, typer.Argument(help="study YAML file, or a built-in: quickstart, paper")],
    out: Annotated[Path | None, typer.Option(help="study output directory")] = None,
    scale: Annotated[float, typer.Option(help="the scale the study was run with")] = 1.0,
    html: Annotated[Path | None, typer.Option(help="where to write the page")] = None,
):
    """Write one self-contained HTML page with the study's runs, metrics and figures."""
    from .report import write_report
    from .study import load_study

    st = load_study(study, scale)
    path = write_report(st, _study_out(st, out), html)
    typer.echo(f"report written to {path}")


@app.command("quickstart")
@friendly
def quickstart(
    out: Annotated[Path | None, typer.Option(help="output directory")] = None,
    scale: Annotated[float, typer.Option(help="divide data sizes and steps by S (smoke test)")] = 1.0,
    jobs: Annotated[int, typer.Option(help="local worker processes")] = 1,
):
    """Run the quickstart study end to end (a few minutes on a laptop CPU) and write its report."""
    from .executors import make_backend, run_study
    from .report import write_report
    from .study import load_study

    st = load_study("quickstart", scale)
    target = _study_out(st, out)
    typer.echo(f"quickstart: {len(st.steps)} steps, output in {target}")
    report = run_study(st, target, make_backend("local", st, target, jobs=jobs), log=typer.echo)
    typer.echo(report.summary())
    path = write_report(st, target)
    typer.echo(f"report written to {path}")
    if not report.ok:
        raise typer.Exit(1)



def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
