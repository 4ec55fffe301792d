"""Commands over a study: plan, run, status, unlock, verify, report, quickstart."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import builtin_studies
from ..errors import WorldrepError
from .app import app, friendly

# --- study commands ---------------------------------------------------------------------
BUILTINS = ", ".join(builtin_studies.names())
StudyArg = Annotated[str | None, typer.Argument(
    help=f"study YAML file, or a built-in: {BUILTINS} (default: the one recorded in --out)")]
OutOpt = Annotated[Path | None, typer.Option(help="study output directory")]
ScaleOpt = Annotated[float | None, typer.Option(
    help="divide every data size and step count by S (default: as recorded in --out, else 1)")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="override a setting: KIND.KEY=VALUE for every step of a kind (e.g. "
                  "train.model.preset=tiny) or KEY=VALUE of the study file; repeatable")]


def _check_jobs(jobs: int) -> None:
    if jobs < 1:
        raise WorldrepError(f"--jobs is a number of worker processes >= 1 (got {jobs})")


def _open(study, out, scale, overrides):
    from ..study.outdir import open_study

    return open_study(study, out, scale, overrides)


@app.command("plan")
@friendly
def study_plan(
    study: Annotated[str, typer.Argument(help=f"study YAML file, or a built-in: {BUILTINS}")],
    scale: Annotated[float, typer.Option(help="divide every data size and step count by S")] = 1.0,
    overrides: SetOpt = None,
    executor: Annotated[str, typer.Option(
        help="local or slurm (slurm: also print the jobs it would submit)")] = "local",
    json_: Annotated[bool, typer.Option("--json", help="every step as JSON: kind, name, "
                                        "hash, inputs, resolved spec")] = False,
):
    """Print the expanded steps of a study and what each one reads."""
    from ..study.load import load_study
    from ..study.plan import format_plan, plan_json

    if executor not in ("local", "slurm"):
        raise WorldrepError(f"unknown executor '{executor}'; allowed: local, slurm")
    st = load_study(study, scale, overrides=overrides or [])
    if json_:
        import json

        typer.echo(json.dumps(plan_json(st), indent=1, default=str))
    else:
        typer.echo(format_plan(st, executor))


@app.command("run")
@friendly
def study_run(
    study: StudyArg = None,
    out: OutOpt = None,
    jobs: Annotated[int, typer.Option(help="local worker processes")] = 1,
    executor: Annotated[str, typer.Option(help="local or slurm")] = "local",
    scale: ScaleOpt = None,
    overrides: SetOpt = None,
    step: Annotated[list[str] | None, typer.Option(
        help="run only this step (and what it needs); repeatable")] = None,
    resources: Annotated[list[str] | None, typer.Option(
        help="slurm settings KEY=VALUE or KIND.KEY=VALUE, e.g. train.gpus=1; repeatable")] = None,
    cluster: Annotated[str | None, typer.Option(
        help="submitit cluster for --executor slurm: slurm (default), local or debug")] = None,
    accept_code: Annotated[bool, typer.Option(
        help="treat code changes as cosmetic for this run: keep finished steps whose spec "
             "and inputs are unchanged instead of redoing them")] = False,
    report: Annotated[bool, typer.Option(help="write the report at the end")] = True,
):
    """Run every step of a study that is missing or changed, in dependency order."""
    import time

    from ..study.backends import make_backend, resource_overrides
    from ..study.executors import run_study
    from ..study.outdir import remember
    from ..study.report import headlines, write_report

    start = time.time()
    _check_jobs(jobs)
    st, target = _open(study, out, scale, overrides)
    res = resource_overrides(st.resources, resources or [])
    backend = make_backend(executor, st, target, jobs=jobs, resources=res,
                           cluster=cluster or ("slurm" if executor == "slurm" else None))
    remember(target, st)
    typer.echo(f"study {st.name}: {len(st.steps)} steps, output in {target}")
    if backend.note:
        typer.echo(backend.note)
    result = run_study(st, target, backend, log=typer.echo, only=step, accept_code=accept_code)
    typer.echo(result.summary())
    if report:
        try:
            path = write_report(st, target)
        except OSError as err:  # e.g. a finished study in a read-only directory
            typer.echo(f"report not written: {err.strerror}: {err.filename or target}", err=True)
        else:
            for line in headlines(st, target):
                typer.echo(line)
            typer.echo(f"report written to {path} ({time.time() - start:.0f}s in all)")
    if not result.ok:
        raise typer.Exit(1)


@app.command("status")
@friendly
def study_status(
    study: StudyArg = None,
    out: OutOpt = None,
    scale: ScaleOpt = None,
    overrides: SetOpt = None,
    watch: Annotated[float | None, typer.Option(
        help="redraw every S seconds (a live table) until interrupted")] = None,
):
    """Show which steps are done, running (and who holds them), failed (with the error), or
    due to run and why (new, spec/input/code changed, failed before)."""
    from ..study.cache import format_status, study_states

    if watch is not None and not (0 < watch < float("inf")):
        raise WorldrepError(f"--watch takes a number of seconds > 0 (got {watch})")
    st, target = _open(study, out, scale, overrides)
    if watch:
        from ..study.watch import watch_status

        watch_status(st, target, every=watch)
        return
    typer.echo(format_status(st, target, study_states(st, target)))


@app.command("unlock")
@friendly
def study_unlock(
    study: Annotated[str | None, typer.Argument(
        help="a study (file or built-in; default: the one recorded in --out), or any "
             "directory a worldrep command writes (a run, a dataset, an analysis)")] = None,
    out: OutOpt = None,
    scale: ScaleOpt = None,
    overrides: SetOpt = None,
    force: Annotated[bool, typer.Option(
        help="also clear locks of live runners on this host and of queued Slurm jobs")] = False,
):
    """Show the locks of a study's steps or of one directory, and clear those whose holders
    cannot be vouched for from here (gone, or on another host). A dead holder's lock on this
    host is broken automatically anyway."""
    from ..study import locks
    from ..study.cache import clear_locks, held_locks

    plain = study is not None and out is None and not (Path(study) / "study.json").is_file()
    if plain and (Path(study).is_dir() or locks.lock_file(Path(study)).exists()):
        path = Path(study)
        info = locks.read(path)
        if info is None:
            typer.echo(f"{path}: not locked")
            return
        alive = locks.alive(info, unknown=False)
        typer.echo(f"{path}: locked by {locks.describe(info)}"
                   + (" (alive)" if alive else " (gone)"))
        if force or not alive:
            locks.lock_file(path).unlink(missing_ok=True)
            typer.echo("cleared 1 lock")
        else:
            typer.echo("kept: its holder is alive here (--force clears it anyway)")
        return
    if study is not None and out is None and Path(study).is_dir():
        study, out = None, Path(study)
    st, target = _open(study, out, scale, overrides)
    for name, info in held_locks(st, target):
        typer.echo(f"  {name}: {locks.describe(info)}"
                   + ("" if locks.alive(info, unknown=False) else " (gone)"))
    cleared = clear_locks(st, target, force=force)
    typer.echo(f"cleared {len(cleared)} lock(s)" + (": " + ", ".join(cleared) if cleared else ""))


@app.command("verify")
@friendly
def verify_cmd(
    out: Annotated[Path, typer.Argument(help="a study output directory, or any artifact")],
):
    """Check every artifact under OUT against its manifest: each file it lists is there, of
    its size and digest. Exit 2 naming each file that is missing, truncated or changed."""
    from .. import artifacts

    if not out.is_dir():
        raise WorldrepError(f"{out} is not a directory")
    found = sorted(m.parent for m in out.rglob(artifacts.MANIFEST)
                   if ".tmp-" not in str(m) and ".old-" not in str(m))
    problems, unchecked = [], 0
    for directory in found:
        problem = artifacts.verify_problem(directory)
        if problem:
            problems.append(problem)
        elif "files" not in artifacts.read_manifest(directory):
            unchecked += 1
    for problem in problems:
        typer.echo(f"  BAD  {problem}")
    note = f" ({unchecked} written by an older worldrep list no files)" if unchecked else ""
    typer.echo(f"{len(found) - len(problems)} of {len(found)} artifacts verified{note}")
    if problems:
        raise WorldrepError(f"{len(problems)} artifact(s) under {out} do not match their "
                            "manifests; remake them (worldrep run redoes a study's steps once "
                            "their directories are removed)")


@app.command("report")
@friendly
def study_report(
    study: StudyArg = None,
    out: OutOpt = None,
    scale: ScaleOpt = None,
    overrides: SetOpt = None,
    html: Annotated[Path | None, typer.Option(help="where to write the page")] = None,
):
    """Write one self-contained HTML page (and findings.json) with the study's runs, metrics,
    figures and findings."""
    from ..study.report import write_report

    st, target = _open(study, out, scale, overrides)
    path = write_report(st, target, html)
    typer.echo(f"report written to {path}")


@app.command("quickstart")
@friendly
def quickstart(
    out: OutOpt = None,
    scale: Annotated[float, typer.Option(help="divide data sizes and steps by S (smoke test)")] = 1.0,
    jobs: Annotated[int, typer.Option(
        help="worker processes (2: the side runs train beside the main model)")] = 2,
):
    """Run the quickstart study end to end (minutes on a 2-core CPU) and write its report."""
    _check_jobs(jobs)
    study_run(study="quickstart", out=out, jobs=jobs, executor="local", scale=scale,
              overrides=None, step=None, resources=None, cluster=None, accept_code=False,
              report=True)
