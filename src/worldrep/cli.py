"""The `worldrep` command: the only place that parses argv.

Every command calls the same stage function the study runner and the tests call. Bad input
raises WorldrepError, printed here as one `error:` line with exit code 2.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import sys
from collections.abc import Iterator
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
    from . import artifacts
    from .study import locks

    target = artifacts.resolve_out(out)
    if target.exists() and not target.is_dir():
        artifacts.check_out(out, kind)  # the error for a file
    artifacts.check_not_input(out, inputs or {})
    if check:
        artifacts.check_out(out, kind)
    with locks.holding(target):
        yield target


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
    with _writing(out, "world") as target:
        make_world(target, cfg)
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
    with _writing(out, "dataset", {"world": world}) as target:
        make_dataset(load_world(world), spec, target)
    typer.echo(f"dataset written to {out}")


@data_app.command("mix")
@friendly
def data_mix(
    out: Annotated[Path, typer.Option(help="output directory")],
    source: Annotated[list[str], typer.Option(
        help="[LABEL=]DIR[:N] (N train rows sampled from DIR, labelled LABEL in the source "
             "column, default the directory name); repeat for each source")] = None,
    mode: Annotated[str, typer.Option(help="sample or concat")] = "sample",
    seed: Annotated[int, typer.Option(help="random seed")] = 42,
    config: Annotated[Path | None, typer.Option(help="mixture spec YAML")] = None,
):
    """Combine task datasets: sample N rows of each source, or concatenate them all."""
    from .config import load_config
    from .mixing import MixSpec, make_mixture, parse_source

    sources = [parse_source(s) for s in (source or [])]
    spec = load_config(MixSpec, config, sources=sources or None, mode=mode, seed=seed)
    with _writing(out, "mixture", [("source", s.path) for s in spec.sources]) as target:
        make_mixture(spec, target)
    typer.echo(f"mixture written to {out}")


# --- train and eval commands ------------------------------------------------------------
@app.command("eval")
@friendly
def eval_cmd(
    run_dir: Annotated[Path, typer.Argument(help="training run directory")],
    data: Annotated[Path, typer.Option(help="dataset or mixture directory")],
    split: Annotated[str, typer.Option(help="train, validation or test")] = "test",
    checkpoints: Annotated[str, typer.Option(
        help="final, last, all, or a comma list of names/steps")] = "final",
    limit: Annotated[int | None, typer.Option(help="evaluate the first N rows only")] = None,
    batch_size: Annotated[int | None, typer.Option(help="prompts decoded at once")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    out: Annotated[Path | None, typer.Option(
        help="output directory (default RUN_DIR/evals/<dataset>-<split>)")] = None,
    threads: Annotated[int | None, typer.Option(
        help="CPU threads (default torch's; 1 is fastest on a busy CPU)")] = None,
    force: Annotated[bool, typer.Option(help="redo checkpoints already evaluated")] = False,
    parse: Annotated[str, typer.Option(
        help="strict (the whole output is the number) or reference (its leading digits, as "
             "the reference parsed)")] = "strict",
):
    """Greedy-decode and score a dataset split with a run's checkpoints."""
    import json

    from .evaluate import EvalSpec, evaluate_run, format_summary

    spec = _options(EvalSpec, split=split, checkpoints=checkpoints, limit=limit,
                    batch_size=batch_size, device=device, threads=threads, parse=parse)
    target = out if out is not None else run_dir / "evals" / f"{data.name}-{split}"
    with _writing(target, check=False, inputs={"dataset": data}) as eval_out:
        _check_eval_out(eval_out, run_dir)
        eval_dir = evaluate_run(run_dir, data, spec, out=eval_out, force=force)
    for name, summary in json.loads((eval_dir / "summary.json").read_text()).items():
        typer.echo(f"{name}:\n{format_summary(summary)}")
    typer.echo(f"evaluation written to {eval_dir}")


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


def _check_eval_out(out: Path, run_dir: Path) -> None:
    """An evaluation directory holds evaluations only (checkpoint directories of kind eval and
    their summary.json); it may lie in its run's evals/ but nowhere else in an input."""
    from . import artifacts

    run = artifacts.resolve_out(run_dir)
    if run == out or out in run.parents or (run in out.parents
                                             and (run / "evals") not in out.parents):
        raise WorldrepError(f"--out {out}: an evaluation is written beside a run or in its "
                            f"evals/ directory, never into the run {run_dir} itself")
    if not out.is_dir():
        return
    for entry in out.iterdir():
        if entry.name.startswith(".") or entry.name == "summary.json":
            continue
        if entry.is_dir() and artifacts.is_complete(entry) and \
                artifacts.read_manifest(entry).get("kind") == "eval":
            continue
        if entry.name == artifacts.MANIFEST and artifacts.read_manifest(out).get("kind") == "eval":
            continue
        raise WorldrepError(f"--out {out} exists and holds {entry.name}, which is not an "
                            "evaluation; choose a new or empty directory (nothing was written "
                            "or removed)")


def _check_container(out: Path, kind: str) -> None:
    """A directory of artifacts (one per checkpoint) holds only artifacts of `kind`."""
    from . import artifacts

    for entry in (out.iterdir() if out.is_dir() else []):
        if not entry.name.startswith("."):
            artifacts.check_out(entry, kind)


@app.command("train")
@friendly
def train_cmd(
    spec: Annotated[Path, typer.Argument(help="training spec YAML, e.g. configs/train/tiny.yaml")],
    data: Annotated[Path | None, typer.Option(help="dataset or mixture directory")] = None,
    init_from: Annotated[Path | None, typer.Option(help="HF checkpoint to fine-tune")] = None,
    out: Annotated[Path | None, typer.Option(help="run directory (default runs/<spec name>)")
                   ] = None,
    steps: Annotated[int | None, typer.Option(help="train this many steps (replaces epochs)")
                     ] = None,
):
    """Train (or resume) a model; the final checkpoint is OUT/checkpoints/final."""
    from .train import load_spec, train

    cfg = load_spec(spec, data=str(data) if data else None,
                    init_from=str(init_from) if init_from else None, steps=steps)
    inputs = {"dataset": cfg.data, "init_from checkpoint": cfg.init_from}
    with _writing(out or Path("runs") / spec.stem, check=False, inputs=inputs) as target:
        final = train(cfg, target)
    typer.echo(f"final checkpoint: {final}")



# --- analyze commands -------------------------------------------------------------------
analyze_app = typer.Typer(no_args_is_help=True,
                          help="Representations, probes, similarity, PCA, Atlantis error, NI.")
app.add_typer(analyze_app, name="analyze")
_REPS_HELP = "reps directories, each LABEL=PATH or PATH"


@analyze_app.command("reps")
@friendly
def analyze_reps(
    source: Annotated[Path, typer.Argument(help="a checkpoint directory or a run directory")],
    world: Annotated[Path, typer.Option(help="world directory")],
    out: Annotated[Path, typer.Option(help="output directory")],
    checkpoint: Annotated[str, typer.Option(
        help="for a run: last, final, checkpoint-N, a comma list, or all (-> OUT/<name>/)")] = "last",
    task: Annotated[str | None, typer.Option(help="whose prompt prefix (default distance)")] = None,
    layer: Annotated[list[int] | None, typer.Option(help="layer to read; repeat (default 5)")] = None,
    position: Annotated[list[str] | None, typer.Option(
        help="token position; repeat (default last_digit, delimiter)")] = None,
    cities: Annotated[str | None, typer.Option(help="city selector (default all)")] = None,
    min_id: Annotated[int | None, typer.Option(help="drop ids below this (default 1000)")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda")] = None,
    config: Annotated[Path | None, typer.Option(help="representation spec YAML")] = None,
):
    """Residual-stream vectors of every city at its id, one forward pass per batch."""
    from .analysis import reps as R
    from .config import load_config

    spec = load_config(R.RepSpec, config, task=task, layers=layer or None,
                       positions=position or None, cities=cities, min_id=min_id, device=device)
    several = R.writes_series(source, checkpoint)
    inputs = {"run or checkpoint": source, "world": world}
    with _writing(out, "representations", inputs, check=not several) as target:
        if several:
            _check_container(target, "representations")
        done = R.extract(source, world, spec, target, checkpoint)
        if several:
            typer.echo(f"{len(done)} checkpoints")
    typer.echo(f"representations written to {out}")


@analyze_app.command("probe")
@friendly
def analyze_probe(
    reps: Annotated[list[str], typer.Argument(help=_REPS_HELP)],
    out: Annotated[Path, typer.Option(help="output directory")],
    world: Annotated[Path | None, typer.Option(help="world for true coordinates")] = None,
    method: Annotated[str | None, typer.Option(help="ols (default) or ridge (CV alpha)")] = None,
    layer: Annotated[list[int] | None, typer.Option(help="layers to use; repeat")] = None,
    each_layer: Annotated[bool, typer.Option(help="one probe per layer")] = False,
    n_train: Annotated[int | None, typer.Option(help="train cities (default 3250)")] = None,
    n_test: Annotated[int | None, typer.Option(help="test cities (default 1250)")] = None,
    cities: Annotated[str | None, typer.Option(help="city selector (default all)")] = None,
    seed: Annotated[int | None, typer.Option(help="split seed (default 42)")] = None,
    config: Annotated[Path | None, typer.Option(help="probe spec YAML")] = None,
):
    """Linear probes of x and y: metrics.csv, predictions.parquet, world maps."""
    from .analysis.inputs import labelled
    from .analysis.probes import ProbeSpec, run_probe
    from .config import load_config

    spec = load_config(ProbeSpec, config, method=method, layers=layer or None,
                       each_layer=each_layer or None, n_train=n_train, n_test=n_test,
                       cities=cities, seed=seed)
    with _writing(out, "probe", [*_paths(reps), ("world", world)]) as target:
        run_probe(labelled(reps, "reps"), world, spec, target)
    typer.echo(f"probes written to {out}")


@analyze_app.command("cka")
@friendly
def analyze_cka(
    reps: Annotated[list[str], typer.Argument(help=_REPS_HELP + "; LABEL may be CONFIG@SEED")],
    out: Annotated[Path, typer.Option(help="output directory")],
    metric: Annotated[list[str] | None, typer.Option(
        help="linear_cka (default), debiased_cka, mutual_knn; repeat")] = None,
    layer: Annotated[list[int] | None, typer.Option(help="layers; repeat (default all shared)")] = None,
    cities: Annotated[str | None, typer.Option(help="city selector (default world)")] = None,
    k: Annotated[int | None, typer.Option(help="neighbours for mutual_knn (default 10)")] = None,
    config: Annotated[Path | None, typer.Option(help="similarity spec YAML")] = None,
):
    """Similarity matrices between runs, seed-aware diagonals, heat maps."""
    from .analysis.cka import CKASpec, cka_matrix
    from .analysis.inputs import labelled
    from .config import load_config

    spec = load_config(CKASpec, config, metrics=metric or None, layers=layer or None,
                       cities=cities, k=k)
    with _writing(out, "similarity", _paths(reps)) as target:
        cka_matrix(labelled(reps, "reps"), spec, target)
    typer.echo(f"similarity written to {out}")


@analyze_app.command("pca")
@friendly
def analyze_pca(
    reps: Annotated[Path, typer.Argument(
        help="a reps directory, or a run's directory of checkpoint reps (-> timeline)")],
    out: Annotated[Path, typer.Option(help="output directory")],
    layer: Annotated[list[int] | None, typer.Option(help="layers; repeat")] = None,
    fit_cities: Annotated[str | None, typer.Option(help="fit selector (default world)")] = None,
    max_points: Annotated[int | None, typer.Option(help="subsample drawn cities")] = None,
    config: Annotated[Path | None, typer.Option(help="PCA spec YAML")] = None,
):
    """Top principal components: 3-D HTML (offline) and PNG, or a checkpoint timeline."""
    from .analysis import pca as P
    from .analysis.reps import is_series, reps_series
    from .config import load_config

    spec = load_config(P.PCASpec, config, layers=layer or None, fit_cities=fit_cities,
                       max_points=max_points)
    series = is_series(reps)
    with _writing(out, "pca_timeline" if series else "pca", {"reps": reps}) as target:
        if series:
            P.pca_timeline(reps_series(reps), spec, target)
        else:
            P.pca_views(reps, spec, target)
    typer.echo(f"PCA written to {out}")


@analyze_app.command("atlantis")
@friendly
def analyze_atlantis(
    reps: Annotated[list[str], typer.Argument(help=_REPS_HELP)],
    out: Annotated[Path, typer.Option(help="output directory")],
    group: Annotated[list[str] | None, typer.Option(
        help="LABEL=GROUP to pool models, e.g. ftD=with-distance; repeat")] = None,
    n_train: Annotated[int | None, typer.Option(help="world cities the probe sees (4000)")] = None,
    layer: Annotated[list[int] | None, typer.Option(help="layers; repeat")] = None,
    config: Annotated[Path | None, typer.Option(help="Atlantis spec YAML")] = None,
):
    """Reconstruction error of synthetic cities under a world-trained probe."""
    from .analysis.atlantis import AtlantisSpec, atlantis_error
    from .analysis.inputs import labelled, pairs
    from .config import load_config

    spec = load_config(AtlantisSpec, config, groups=pairs(group, "group") or None,
                       n_train=n_train, layers=layer or None)
    with _writing(out, "atlantis_error", _paths(reps)) as target:
        atlantis_error(labelled(reps, "reps"), spec, target)
    typer.echo(f"Atlantis error written to {out}")


@analyze_app.command("ni")
@friendly
def analyze_ni(
    ft: Annotated[list[str], typer.Option(
        help="LABEL=SUMMARY fine-tuned model (summary.json, its dir, or a run dir); "
             "LABEL like angle, distance+angle, angle@SEED; repeat")],
    base_world: Annotated[list[str], typer.Option(
        help="base model on world queries: SUMMARY, or SEED=SUMMARY per seed; repeat")],
    base_atlantis: Annotated[list[str], typer.Option(
        help="base model on Atlantis queries: SUMMARY, or SEED=SUMMARY; repeat")],
    out: Annotated[Path, typer.Option(help="output directory")],
    task: Annotated[list[str] | None, typer.Option(help="evaluated tasks; repeat")] = None,
    no_clip: Annotated[bool, typer.Option(help="keep raw NI (no [0, 1.5] clip)")] = False,
    config: Annotated[Path | None, typer.Option(help="NI spec YAML")] = None,
):
    """Normalised improvement matrix and best-teacher deviation, tables and heat maps."""
    from .analysis.improvement import NISpec, ni_matrix
    from .analysis.inputs import labelled, pairs
    from .config import load_config

    spec = load_config(NISpec, config, tasks=task or None)
    if no_clip:
        spec.clip = None

    def base(items: list[str]):
        return items[0] if len(items) == 1 and "=" not in items[0] else pairs(items, "base")

    inputs = _paths([*ft, *base_world, *base_atlantis])
    with _writing(out, "normalized_improvement", inputs) as target:
        ni_matrix(labelled(ft, "fine-tuned summary"), base(base_world), base(base_atlantis),
                  spec, target)
    typer.echo(f"normalised improvement written to {out}")



# --- study commands ---------------------------------------------------------------------
StudyArg = Annotated[str | None, typer.Argument(
    help="study YAML file, or a built-in: quickstart, findings, paper (default: the one "
         "recorded in --out)")]
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
    from .study.outdir import open_study

    return open_study(study, out, scale, overrides)


@app.command("plan")
@friendly
def study_plan(
    study: Annotated[str, typer.Argument(help="study YAML file, or a built-in: quickstart, "
                                              "findings, paper")],
    scale: Annotated[float, typer.Option(help="divide every data size and step count by S")] = 1.0,
    overrides: SetOpt = None,
    executor: Annotated[str, typer.Option(
        help="local or slurm (slurm: also print the jobs it would submit)")] = "local",
    json_: Annotated[bool, typer.Option("--json", help="every step as JSON: kind, name, "
                                        "hash, inputs, resolved spec")] = False,
):
    """Print the expanded steps of a study and what each one reads."""
    from .study.load import load_study
    from .study.plan import format_plan, plan_json

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

    from .study.backends import make_backend, resource_overrides
    from .study.executors import run_study
    from .study.outdir import remember
    from .study.report import headlines, write_report

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
    from .study.cache import format_status, study_states

    if watch is not None and not (0 < watch < float("inf")):
        raise WorldrepError(f"--watch takes a number of seconds > 0 (got {watch})")
    st, target = _open(study, out, scale, overrides)
    if watch:
        from .study.watch import watch_status

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
    from .study import locks
    from .study.cache import clear_locks, held_locks

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
    from . import artifacts

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
    from .study.report import write_report

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


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
