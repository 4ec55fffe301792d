"""Commands that make one artifact each: a world, datasets, mixtures, runs, evaluations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import WorldrepError
from .app import _options, _writing, app, data_app, friendly, world_app


# --- world and data commands ------------------------------------------------------------
@world_app.command("build")
@friendly
def world_build(
    out: Annotated[Path, typer.Option(help="output directory")],
    config: Annotated[Path | None, typer.Option(help="world config YAML")] = None,
):
    """Write cities.parquet, cities.csv and the resolved spec."""
    from ..config import load_config
    from ..world import WorldConfig, make_world

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
    from ..config import load_config
    from ..data import DatasetSpec, make_dataset
    from ..tasks import get_task
    from ..world import load_world

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
    from ..config import load_config
    from ..mixing import MixSpec, make_mixture, parse_source

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

    from ..evaluate import EvalSpec, evaluate_run, format_summary

    spec = _options(EvalSpec, split=split, checkpoints=checkpoints, limit=limit,
                    batch_size=batch_size, device=device, threads=threads, parse=parse)
    target = out if out is not None else run_dir / "evals" / f"{data.name}-{split}"
    with _writing(target, check=False, inputs={"dataset": data}) as eval_out:
        _check_eval_out(eval_out, run_dir)
        eval_dir = evaluate_run(run_dir, data, spec, out=eval_out, force=force)
    for name, summary in json.loads((eval_dir / "summary.json").read_text()).items():
        typer.echo(f"{name}:\n{format_summary(summary)}")
    typer.echo(f"evaluation written to {eval_dir}")


def _check_eval_out(out: Path, run_dir: Path) -> None:
    """An evaluation directory holds evaluations only (checkpoint directories of kind eval and
    their summary.json); it may lie in its run's evals/ but nowhere else in an input."""
    from .. import artifacts

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
    from ..train import load_spec, train

    cfg = load_spec(spec, data=str(data) if data else None,
                    init_from=str(init_from) if init_from else None, steps=steps)
    inputs = {"dataset": cfg.data, "init_from checkpoint": cfg.init_from}
    with _writing(out or Path("runs") / spec.stem, check=False, inputs=inputs) as target:
        final = train(cfg, target)
    typer.echo(f"final checkpoint: {final}")
