"""`worldrep analyze`: representations and the analyses over them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import _check_container, _paths, _writing, analyze_app, friendly

# --- analyze commands -------------------------------------------------------------------
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
    from ..analysis import reps as R
    from ..config import load_config

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
    from ..analysis.inputs import labelled
    from ..analysis.probes import ProbeSpec, run_probe
    from ..config import load_config

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
    from ..analysis.cka import CKASpec, cka_matrix
    from ..analysis.inputs import labelled
    from ..config import load_config

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
    from ..analysis import pca as P
    from ..analysis.reps import is_series, reps_series
    from ..config import load_config

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
    from ..analysis.atlantis import AtlantisSpec, atlantis_error
    from ..analysis.inputs import labelled, pairs
    from ..config import load_config

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
    from ..analysis.improvement import NISpec, ni_matrix
    from ..analysis.inputs import labelled, pairs
    from ..config import load_config

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
