"""The study report: one self-contained HTML page that opens offline.

It reads the study's artifact directories (never recomputes anything) and shows the steps and
their status, training curves, task metrics (world vs Atlantis test sets), probe world maps,
similarity (CKA) heat maps, Atlantis reconstruction errors, normalised-improvement matrices and
PCA views. Figures are PNGs embedded as base64; interactive PCA pages (plotly, with plotly.js
inlined) are embedded in iframes, so the page needs no network and no other file.
"""

from __future__ import annotations

import base64
import html
import json
import time
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from .. import artifacts
from .cache import StepState, study_states
from .findings import FINDINGS_FILE, describe_band, evaluate, write_findings
from .kinds import eval_summary
from .load import Step, Study

METRIC_KEYS = ("mean_error", "accuracy", "mean_score")
MAX_INLINE_HTML = 4  # interactive PCA pages are a few MB each
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
.done{color:#1a7f37}.failed{color:#cf222e;font-weight:bold}.running{color:#9a6700}
.pending,.blocked{color:#777}
.figs{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0;max-width:100%} figure img{max-width:560px;width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555} pre{background:#f6f8fa;padding:.6em;overflow:auto;font-size:.8em}
iframe{width:100%;height:620px;border:1px solid #ddd}
.muted{color:#777}
"""


def write_report(study: Study, out: Path, path: Path | None = None) -> Path:
    """OUT/report.html, and findings.json beside it."""
    out = Path(out)
    path = Path(path) if path else out / "report.html"
    states = study_states(study, out)
    dirs = {name: study.step_dir(out, name) for name in study.steps}
    records = evaluate(study, out)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_findings(records, path.with_name(FINDINGS_FILE))
    sections = [
        _overview(study, out, states),
        _findings(records),
        _world_inside(study, dirs, states),
        _speed(study, dirs, states),
        _paper(records),
        _training(study, dirs, states),
        _task_metrics(study, dirs, states),
        _probes(study, dirs, states),
        _figures_of(study, dirs, states, "cka", "Representational similarity (CKA)"),
        _figures_of(study, dirs, states, "convergence", "Convergence: CKA by number of tasks"),
        _atlantis(study, dirs, states),
        _figures_of(study, dirs, states, "ni", "Normalised improvement"),
        _pca(study, dirs, states),
        _other_kinds(study, dirs, states),
        _failures(study, dirs, states),
    ]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(study.name)} — worldrep"
            f"</title><style>{CSS}</style></head><body>{''.join(s for s in sections if s)}"
            "</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    artifacts.write_atomic(path, lambda tmp: tmp.write_text(page))
    return path


# -- helpers ----------------------------------------------------------------------------------
def _e(text) -> str:
    return html.escape(str(text))


def _img(path: Path, caption: str = "") -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f"<figure><img src='data:image/png;base64,{data}' alt='{_e(caption)}'>{cap}</figure>"


def _figs(items: Iterable[tuple[Path, str]]) -> str:
    inner = "".join(_img(p, c) for p, c in items)
    return f"<div class='figs'>{inner}</div>" if inner else ""


def _done(study: Study, states: dict[str, StepState], kind: str) -> list[Step]:
    return [s for s in study.steps.values() if s.kind == kind and states[s.name].state == "done"]


def _table(frame: pd.DataFrame, digits: int = 3) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in frame.columns)
    rows = []
    for row in frame.itertuples(index=False):
        cells = []
        for v in row:
            if isinstance(v, float):
                cells.append(f"<td class='num'>{'' if pd.isna(v) else f'{v:.{digits}g}'}</td>")
            else:
                cells.append(f"<td>{_e(v)}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _section(title: str, body: str, note: str = "") -> str:
    if not body:
        return ""
    note = f"<p class='muted'>{_e(note)}</p>" if note else ""
    return f"<h2>{_e(title)}</h2>{note}{body}"


def probe_results(study: Study, out: Path) -> pd.DataFrame:
    """Every finished probe's test R² of x and y (one row per probe and label)."""
    frames = []
    for step in study.steps.values():
        path = study.step_dir(out, step) / "metrics.csv"
        if step.kind == "probe" and path.is_file():
            frames.append(pd.read_csv(path).assign(probe=step.name))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def headlines(study: Study, out: Path) -> list[str]:
    """A few lines worth printing at the end of a run: the best world map found."""
    probes = probe_results(study, out)
    if probes.empty or "x_test_r2" not in probes:
        return []
    probes = probes.assign(worst=probes[["x_test_r2", "y_test_r2"]].min(axis=1))
    best = probes.loc[probes["worst"].idxmax()]
    return [f"best world map: {best['label']} (layers {best['layers']}): held-out probe R² "
            f"x {best['x_test_r2']:.2f}, y {best['y_test_r2']:.2f}, mean error "
            f"{best['test_mean_error']:.0f} (0.1° units)"]


# -- findings ---------------------------------------------------------------------------------
def _fmt(value) -> str:
    if value is None:
        return "not measured"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | float):
        return "NaN" if value != value else f"{value:.3g}"
    if isinstance(value, dict):
        if value and all(isinstance(v, dict) for v in value.values()):
            return f"{len(value)} × {len(next(iter(value.values())))} table (below)"
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return str(value)


def _verdict(status) -> str:
    css = {"shown": "done", "not shown": "failed", "inconclusive": "muted"}.get(status, "muted")
    return f"<td class='{css}'>{_e(status or '—')}</td>"


def _findings(records: list[dict]) -> str:
    """The first section: each finding, our value, the paper's, the band, and its status:
    shown, not shown (on models that learned), or inconclusive (naming why)."""
    if not records:
        return ""
    rows = []
    for r in records:
        band = describe_band(r["band"])
        if r["paper_band"] is not None and r["paper_band"] != r["band"]:
            band += f" (paper's band: {describe_band(r['paper_band'])})"
        note = r["details"].get("not measured") or r["details"].get("inconclusive") or ""
        rows.append(f"<tr><td><b>{_e(r['id'])}</b><br><span class='muted'>{_e(r['claim'])}"
                    f"</span></td><td class='num'>{_e(_fmt(r['value']))}"
                    f"{'<br><span class=muted>' + _e(note) + '</span>' if note else ''}</td>"
                    f"<td>{_e(_fmt(r['paper']))}</td><td>{_e(band)}</td>"
                    f"{_verdict(r.get('status'))}</tr>")
    table = ("<table><tr><th>finding</th><th>this study</th><th>paper</th><th>band</th>"
             "<th>status</th></tr>" + "".join(rows) + "</table>")
    return _section("Findings", table, "computed from this study's artifacts "
                                       f"({FINDINGS_FILE}): shown, not shown (measured on "
                                       "models that learned what the finding needs), or "
                                       "inconclusive (a model it reads stayed on its plateau "
                                       "or has no map; named under the value)")


def _paper(records: list[dict]) -> str:
    """Tables the paper reports, ours beside theirs, cell by cell."""
    body = ""
    for r in records:
        ours, theirs = r["value"], r["paper"]
        if not (isinstance(ours, dict) and ours and all(isinstance(v, dict) for v in
                                                        ours.values())):
            continue
        # The paper's side may be a table, a table with some rows given as prose or one
        # number ("0.48-0.63"), or prose: only its table cells sit beside ours.
        theirs = theirs if isinstance(theirs, dict) else {}
        rows = list(ours) + [k for k in theirs if k not in ours]
        cols = list(dict.fromkeys(c for row in ours.values() for c in row))
        head = "".join(f"<th>{_e(c)}</th>" for c in cols)
        lines = []
        for row in rows:
            cells = []
            for c in cols:
                a = (ours.get(row) or {}).get(c)
                row_of_theirs = theirs.get(row)
                b = row_of_theirs.get(c) if isinstance(row_of_theirs, dict) else None
                text = _fmt(a) if a is not None else "–"
                if b is not None:
                    text += f" <span class='muted'>({_fmt(b)})</span>"
                cells.append(f"<td class='num'>{text}</td>")
            lines.append(f"<tr><th>{_e(row)}</th>{''.join(cells)}</tr>")
        body += (f"<h3>{_e(r['id'])}</h3><p class='muted'>{_e(r['claim'])}</p>"
                 f"<table><tr><th></th>{head}</tr>{''.join(lines)}</table>")
    return _section("The paper beside us", body, "each cell: this study (the paper's value)")


# -- sections ---------------------------------------------------------------------------------
def _overview(study: Study, out: Path, states: dict[str, StepState]) -> str:
    counts: dict[str, int] = {}
    for st in states.values():
        counts[st.state] = counts.get(st.state, 0) + 1
    summary = ", ".join(f"<span class='{s}'>{n} {s}</span>" for s, n in counts.items())
    scale = f" (scale 1/{study.scale:g})" if study.scale != 1 else ""
    rows = []
    for step in study.steps.values():
        st = states[step.name]
        note = st.why or ""
        rows.append(f"<tr><td>{_e(step.kind)}</td><td>{_e(step.name)}</td>"
                    f"<td class='{st.state}'>{st.state}</td><td>{_e(', '.join(step.deps))}</td>"
                    f"<td>{_e(note)}</td></tr>")
    table = ("<details><summary>all steps</summary><table><tr><th>kind</th><th>step</th>"
             "<th>status</th><th>reads</th><th>note</th></tr>" + "".join(rows)
             + "</table></details>")
    desc = f"<p>{_e(study.description)}</p>" if study.description else ""
    return (f"<h1>{_e(study.name)}{scale}</h1>{desc}<p class='muted'>{_e(study.path)} → "
            f"{_e(out)}; written {time.strftime('%Y-%m-%d %H:%M')}</p>"
            f"<p>{len(study.steps)} steps: {summary}</p>"
            + "".join(f"<p><b>{_e(line)}</b></p>" for line in headlines(study, out)) + table)


def _last_metrics(run_dir: Path) -> dict:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    last: dict = {}
    for line in path.read_text().splitlines():
        try:
            last.update(json.loads(line))
        except ValueError:
            continue
    return last


def _training(study: Study, dirs: dict[str, Path], states) -> str:
    runs = _done(study, states, "train")
    rows, figs = [], []
    for step in runs:
        d = dirs[step.name]
        m = _last_metrics(d)
        rows.append({"run": step.name, "init from": step.spec.get("init_from") or "scratch",
                     "data": step.spec.get("data", ""),
                     **{k: m[k] for k in ("step", "loss", "val_loss") if k in m}})
        figs += [(p, f"{step.name}: {p.stem}") for p in sorted(d.glob("*.png"))]
    body = (_table(pd.DataFrame(rows)) if rows else "") + _figs(figs)
    return _section("Training", body)


def _main_metric(entry) -> tuple[str, float] | None:
    if isinstance(entry, int | float):
        return "value", float(entry)
    if isinstance(entry, dict):
        for key in METRIC_KEYS:
            if key in entry:
                return key, float(entry[key])
    return None


def _dataset_group(study: Study, data: str) -> str:
    """'Atlantis' for test sets whose queries must include a synthetic city, else 'world'."""
    spec = study.steps[data].spec if data in study.steps else {}
    require = spec.get("require") or ""
    return require if require else ("world" if spec.get("pool", "world") == "world" else "all")


def _task_metrics(study: Study, dirs: dict[str, Path], states) -> str:
    rows = []
    for step in _done(study, states, "eval"):
        if not (dirs[step.name] / "summary.json").is_file():
            continue
        summary = eval_summary(dirs[step.name])
        group = _dataset_group(study, step.spec["data"])
        for task, entry in summary.items():
            metric = _main_metric(entry)
            if metric is None:
                continue
            rows.append({"run": step.spec["run"], "task": task, "cities": group,
                         "metric": metric[0], "value": metric[1],
                         "valid": entry.get("valid_rate") if isinstance(entry, dict) else None})
    if not rows:
        return ""
    long = pd.DataFrame(rows)
    long["column"] = long["task"] + " (" + long["cities"] + ")"
    wide = long.pivot_table(index="run", columns="column", values="value", aggfunc="first",
                            sort=False).reset_index()
    runs = list(dict.fromkeys(long["run"]))
    wide = wide.set_index("run").loc[runs].reset_index()
    legend = ("error tasks: mean absolute error (lower is better); accuracy tasks: share "
              "correct. Columns name the task and the cities its test queries draw on.")
    return _section("Task metrics", _table(wide), legend)


def _probes(study: Study, dirs: dict[str, Path], states) -> str:
    tables, figs = [], []
    for step in _done(study, states, "probe"):
        d = dirs[step.name]
        labels: list[str] = []
        if (d / "metrics.csv").is_file():
            frame = pd.read_csv(d / "metrics.csv")
            keep = [c for c in ("label", "layers", "x_test_r2", "y_test_r2", "test_mean_error",
                                "test_median_error", "n_train", "n_test") if c in frame]
            tables.append(frame[keep].assign(probe=step.name))
            labels = [str(v) for v in frame.get("label", [])]
        figs += [(p, f"{step.name}: {p.stem}") for p in _in_label_order(d.glob("*.png"), labels)
                 if _is_last_checkpoint(p, labels)]
    body = ""
    if tables:
        frame = pd.concat(tables, ignore_index=True)
        body += _table(frame[["probe", *[c for c in frame.columns if c != "probe"]]])
    body += _figs(figs)
    return _section("World maps from linear probes", body,
                    "held-out cities: true position (grey) and probe prediction; R² per "
                    "coordinate on test cities")


def _is_last_checkpoint(path: Path, labels: list[str]) -> bool:
    """A probe over a series of checkpoints draws a map for each: the section shows the
    last one of each model (the table lists them all)."""
    series = [label for label in labels if "/checkpoint-" in label]
    if not series:
        return True
    last: dict[str, str] = {}
    for label in series:  # labels run in step order within each model
        last[label.split("/")[0]] = label
    keep = {_safe_name(label) for label in last.values()}
    plain = {_safe_name(label) for label in labels if "/checkpoint-" not in label}
    stem = path.stem.removeprefix("map_")
    return any(stem.startswith(f"{k}_l") for k in keep | plain)


def _safe_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def _best_map(study: Study, probe: str, d: Path, label: str) -> tuple[Path, str] | None:
    """The map of `label`'s last checkpoint at its best layer (the higher of its two R²'s
    lower), with a caption of its held-out R²."""
    frame = pd.read_csv(d / "metrics.csv")
    model = frame["label"].astype(str).str.split("/").str[0]
    rows = frame[model == label]
    if rows.empty:
        return None
    last = rows[rows["label"] == rows["label"].iloc[-1]]
    row = last.loc[last[["x_test_r2", "y_test_r2"]].min(axis=1).idxmax()]
    name = f"map_{_safe_name(str(row['label']))}_l{str(row['layers']).replace(',', '-')}.png"
    path = d / (name if (d / name).is_file() else "map.png")
    if not path.is_file():
        return None
    return path, (f"{row['label']}, layer {row['layers']}: probe predictions of held-out "
                  f"cities (coloured by region) against their true positions (grey); "
                  f"R² x {row['x_test_r2']:.2f}, y {row['y_test_r2']:.2f} ({probe})")


def _world_inside(study: Study, dirs, states) -> str:
    """The study's main map first: the world-map findings' models, as a probe reads them."""
    figs = []
    for f in study.findings:
        args = f.get("args") or {}
        if f.get("measure") != "probe_r2_min" or not isinstance(args.get("probes"), str):
            continue
        probe = args["probes"]
        if probe not in states or states[probe].state != "done":
            continue
        labels = args.get("labels") or []
        for label in labels if isinstance(labels, list) else [labels]:
            found = _best_map(study, probe, dirs[probe], label)
            if found:
                figs.append(found)
    return _section("The world inside the model", _figs(figs),
                    "a linear probe of the residual stream, fitted on some cities and shown "
                    "on others it never saw")


def _speed(study: Study, dirs, states) -> str:
    body = ""
    for step in _done(study, states, "speed"):
        d = dirs[step.name]
        frame = pd.read_csv(d / "speed.csv")
        seconds = d / "seconds.jsonl"
        if seconds.is_file():  # measured seconds beside the steps (a log, not a result)
            timing = {(t["run"], task): (t["map_s"], s) for t in map(json.loads,
                      seconds.read_text().splitlines()) for task, s in t["plateau_s"].items()}
            frame["plateau_s"] = [timing.get((r, t), (None, None))[1]
                                  for r, t in zip(frame["run"], frame["task"], strict=True)]
            frame["map_s"] = [timing.get((r, t), (None, None))[0]
                              for r, t in zip(frame["run"], frame["task"], strict=True)]
        keep = [c for c in ("run", "task", "metric", "untrained", "best", "plateau_step",
                            "plateau_s", "map_x_step", "map_y_step", "map_step", "map_s",
                            "final_x_r2", "final_y_r2") if c in frame]
        body += _table(frame[keep]) + _figs([(p, f"{step.name}: {p.stem}")
                                             for p in sorted(d.glob("*.png"))])
    return _section("How fast it learned", body,
                    "the step (and training seconds) at which each task left its plateau "
                    "(halfway from the best constant answer to its best) and at which the "
                    "held-out probe R² reached the map threshold in x, in y and in both")


def _in_label_order(paths: Iterable[Path], labels: list[str]) -> list[Path]:
    """Figures in the order of the table's rows (the study's order), not alphabetically."""
    def rank(p: Path) -> tuple[int, str]:
        hits = [i for i, label in enumerate(labels)
                if p.stem.startswith(f"map_{''.join(c if c.isalnum() or c in '-_.' else '_' for c in label)}_")]
        return (hits[0] if hits else len(labels), p.name)

    return sorted(paths, key=rank)


def _figures_of(study: Study, dirs, states, kind: str, title: str) -> str:
    figs = []
    for step in _done(study, states, kind):
        figs += [(p, f"{step.name}: {p.stem}") for p in sorted(dirs[step.name].glob("*.png"))]
    return _section(title, _figs(figs))


def _atlantis(study: Study, dirs, states) -> str:
    body = ""
    for step in _done(study, states, "atlantis"):
        d = dirs[step.name]
        if (d / "per_model.csv").is_file():
            body += f"<h3>{_e(step.name)}</h3>" + _table(pd.read_csv(d / "per_model.csv"))
        body += _figs((p, f"{step.name}: {p.stem}") for p in sorted(d.glob("*.png")))
    return _section("Atlantis reconstruction error", body,
                    "a probe fitted on world cities, applied to the synthetic cities "
                    "(0.1-degree units)")


def _pca(study: Study, dirs, states) -> str:
    body, inlined = "", 0
    for step in _done(study, states, "pca"):
        d = dirs[step.name]
        body += _figs((p, f"{step.name}: {p.stem}") for p in sorted(d.glob("*.png")))
        for page in sorted(d.glob("*.html")):
            if inlined >= MAX_INLINE_HTML:
                break
            inlined += 1
            body += (f"<p>{_e(step.name)}: interactive view</p>"
                     f"<iframe srcdoc=\"{html.escape(page.read_text(), quote=True)}\"></iframe>")
    return _section("PCA views", body)


def _other_kinds(study: Study, dirs, states) -> str:
    known = {"world", "dataset", "mixture", "train", "eval", "reps", "probe", "cka", "atlantis",
             "ni", "pca", "convergence", "speed"}
    figs = []
    for step in study.steps.values():
        if step.kind not in known and states[step.name].state == "done":
            figs += [(p, f"{step.name}: {p.stem}") for p in sorted(dirs[step.name].glob("*.png"))]
    return _section("Other figures", _figs(figs))


def _failures(study: Study, dirs, states) -> str:
    body = ""
    for step in study.steps.values():
        st = states[step.name]
        if st.state != "failed":
            continue
        tb = (st.info or {}).get("traceback", "")
        body += (f"<h3 class='failed'>{_e(step.name)}</h3><p>{_e(st.why)}</p>"
                 f"<details><summary>traceback</summary><pre>{_e(tb)}</pre></details>")
    return _section("Failures", body)

