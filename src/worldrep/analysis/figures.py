"""Figures for the analyses: matplotlib (Agg) PNGs and self-contained plotly HTML.

Every function takes plain arrays and a path and writes one file; no analysis happens here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Fixed colours per region so the same region looks the same in every figure of a study.
REGION_COLOURS = {
    "Africa": "#e6194b", "India": "#3cb44b", "China": "#ffe119", "North America": "#4363d8",
    "Southeast Asia": "#f58231", "South America": "#911eb4", "Western Europe": "#42d4f4",
    "Eastern Europe": "#f032e6", "Middle East": "#bfef45", "Japan": "#469990",
    "Korea": "#dcbeff", "Central Asia": "#9a6324", "Oceania": "#800000", "Unknown": "#a9a9a9",
}
SYNTHETIC_COLOUR = "#ff1493"
_EXTRA = ["#000075", "#808000", "#ffd8b1", "#aaffc3", "#fabed4", "#000000"]


def region_colours(regions, synthetic_regions=()) -> dict[str, str]:
    """A colour for every region name; synthetic regions are pink, unknown ones get extras."""
    colours, extra = {}, iter(_EXTRA * 10)
    for r in dict.fromkeys(regions):
        if r in synthetic_regions:
            colours[r] = SYNTHETIC_COLOUR if SYNTHETIC_COLOUR not in colours.values() else next(extra)
        else:
            colours[r] = REGION_COLOURS.get(r) or next(extra)
    return colours


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _plt().close(fig)
    return path


def land_outline(ax) -> None:
    """The world's coastlines (and land shaded) behind a map in degrees.

    `data_files/land.npz` holds the land fraction of every 0.5-degree cell (uint8, 255 = all
    land; rows 90°N to 90°S, columns 180°W to 180°E), averaged from the 1-km GLOBE land mask
    (NOAA, public domain) as packaged in global-land-mask 1.0.0: 26 KB shipped with worldrep,
    so nothing is downloaded when a figure is drawn.
    """
    from importlib import resources

    with resources.files("worldrep").joinpath("data_files/land.npz").open("rb") as f:
        land = np.load(f)["land"]
    lat = 89.75 - 0.5 * np.arange(land.shape[0])
    lon = -179.75 + 0.5 * np.arange(land.shape[1])
    ax.contourf(lon, lat, land, levels=[127.5, 256], colors=["#f1f1ee"], zorder=0)
    ax.contour(lon, lat, land, levels=[127.5], colors=["#b5b5b0"], linewidths=0.6, zorder=0)


def world_map(path, xy, pred, regions, synthetic, title: str = "") -> Path:
    """True positions (faint) and probe predictions (coloured by region) in degrees, on the
    world's coastlines."""
    plt = _plt()
    regions = np.asarray(regions)
    synthetic = np.asarray(synthetic, bool)
    colours = region_colours(regions, set(regions[synthetic]))
    fig, ax = plt.subplots(figsize=(12, 6.5))
    land_outline(ax)
    ax.scatter(xy[:, 0] / 10, xy[:, 1] / 10, s=3, c="#cccccc", label="true position", zorder=1)
    for region, colour in colours.items():
        m = regions == region
        marker = "*" if synthetic[m].any() else "o"
        ax.scatter(pred[m, 0] / 10, pred[m, 1] / 10, s=30 if marker == "*" else 6, c=colour,
                   marker=marker, label=region, zorder=2)
    ax.set(xlabel="longitude (predicted, degrees)", ylabel="latitude (predicted, degrees)",
           title=title, xlim=(-200, 200), ylim=(-100, 100), aspect="equal")
    ax.legend(fontsize=7, markerscale=2, loc="lower left", ncol=2)
    return _save(fig, path)


def heatmap(path, values: np.ndarray, rows, cols, title: str = "", cmap: str = "viridis",
            vmin: float | None = None, vmax: float | None = None, fmt: str = "{:.2f}",
            sem: np.ndarray | None = None, centre: float | None = None) -> Path:
    """A matrix with each value printed in its cell ('–' for NaN)."""
    plt = _plt()
    values = np.asarray(values, float)
    if centre is not None:  # diverging maps: symmetric limits around the centre
        span = np.nanmax(np.abs(values - centre)) if np.isfinite(values).any() else 1.0
        vmin, vmax = centre - (span or 1.0), centre + (span or 1.0)
    n_r, n_c = values.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * n_c, 1.0 + 0.6 * n_r))
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax)
    for i in range(n_r):
        for j in range(n_c):
            v = values[i, j]
            text = "–" if not np.isfinite(v) else fmt.format(v)
            if sem is not None and np.isfinite(sem[i, j]):
                text += "\n±" + fmt.format(sem[i, j])
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if np.isfinite(v) and _dark(im, v) else "black")
    ax.set_xticks(range(n_c), [str(c) for c in cols], rotation=45, ha="right")
    ax.set_yticks(range(n_r), [str(r) for r in rows])
    ax.set_title(title)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return _save(fig, path)


def _dark(im, value: float) -> bool:
    r, g, b, _ = im.cmap(im.norm(value))
    return 0.299 * r + 0.587 * g + 0.114 * b < 0.5


def error_histogram(path, samples: dict[str, np.ndarray], title: str = "",
                    xlabel: str = "reconstruction error (0.1-degree units)") -> Path:
    """Overlaid histograms on log-spaced bins, each labelled with its mean and median."""
    plt = _plt()
    finite = [v[np.isfinite(v)] for v in samples.values() if len(v)]
    pos = np.concatenate(finite) if finite else np.array([1.0])
    pos = pos[pos > 0]
    lo = max(pos.min() if len(pos) else 1.0, 1e-2)
    hi = max(pos.max() if len(pos) else 10.0, lo * 10)
    bins = np.geomspace(lo, hi, 40)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, v in samples.items():
        v = v[np.isfinite(v)]
        if not len(v):
            continue
        label = f"{name} (n={len(v)}, mean {v.mean():.1f}, median {np.median(v):.1f})"
        # Shares, not densities: log-spaced bins have unequal widths.
        ax.hist(np.clip(v, lo, hi), bins=bins, alpha=0.55, weights=np.full(len(v), 1 / len(v)),
                label=label)
    ax.set(xscale="log", xlabel=xlabel, ylabel="share of cities", title=title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def pca_panels(path, coords: np.ndarray, regions, synthetic, explained=None,
               title: str = "") -> Path:
    """PC1-PC2, PC1-PC3 and PC2-PC3 scatter panels coloured by region."""
    plt = _plt()
    regions = np.asarray(regions)
    synthetic = np.asarray(synthetic, bool)
    colours = region_colours(regions, set(regions[synthetic]))
    k = coords.shape[1]
    pairs = [(0, 1), (0, 2), (1, 2)] if k >= 3 else [(0, 1)]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 5), squeeze=False)
    for ax, (a, b) in zip(axes[0], pairs, strict=True):
        for region, colour in colours.items():
            m = regions == region
            star = synthetic[m].any()
            ax.scatter(coords[m, a], coords[m, b], s=25 if star else 4, c=colour,
                       marker="*" if star else "o", label=region,
                       edgecolors="black" if star else "none", linewidths=0.3)
        ax.set(xlabel=_pc_label(a, explained), ylabel=_pc_label(b, explained))
    axes[0][-1].legend(fontsize=7, markerscale=2, loc="best")
    fig.suptitle(title)
    return _save(fig, path)


def timeline_panels(path, frames: dict[str, np.ndarray], regions, synthetic,
                    title: str = "") -> Path:
    """One PC1-PC2 panel per checkpoint (at most 8, evenly spaced), shared colours."""
    plt = _plt()
    labels = list(frames)
    if len(labels) > 8:
        labels = [labels[i] for i in np.unique(np.linspace(0, len(labels) - 1, 8).round().astype(int))]
    regions = np.asarray(regions)
    synthetic = np.asarray(synthetic, bool)
    colours = region_colours(regions, set(regions[synthetic]))
    cols = min(4, len(labels))
    rows = int(np.ceil(len(labels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.6 * rows), squeeze=False)
    for ax, label in zip(axes.flat, labels, strict=False):
        c = frames[label]
        for region, colour in colours.items():
            m = regions == region
            star = synthetic[m].any()
            ax.scatter(c[m, 0], c[m, 1], s=14 if star else 2, c=colour, marker="*" if star else "o")
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(labels):]:
        ax.axis("off")
    fig.suptitle(title)
    return _save(fig, path)


def _pc_label(i: int, explained) -> str:
    if explained is None:
        return f"PC{i + 1}"
    return f"PC{i + 1} ({100 * explained[i]:.1f}%)"


# -- plotly ----------------------------------------------------------------------------------
def _scatter3d_traces(coords, regions, synthetic, hover):
    import plotly.graph_objects as go

    coords = np.asarray(coords, np.float32)  # half the bytes in the HTML, ample precision
    regions = np.asarray(regions)
    synthetic = np.asarray(synthetic, bool)
    colours = region_colours(regions, set(regions[synthetic]))
    traces = []
    for region, colour in colours.items():
        m = regions == region
        star = bool(synthetic[m].any())
        traces.append(go.Scatter3d(
            x=coords[m, 0], y=coords[m, 1], z=coords[m, 2], mode="markers", name=region,
            text=np.asarray(hover)[m],
            marker={"size": 5 if star else 2.5, "color": colour,
                    "symbol": "diamond" if star else "circle",
                    "line": {"width": 1 if star else 0, "color": "black"}}))
    return traces


def pca_html(path, coords, regions, synthetic, hover, explained=None, title: str = "") -> Path:
    """An interactive 3-D scatter that works offline (plotly.js embedded)."""
    import plotly.graph_objects as go

    fig = go.Figure(_scatter3d_traces(coords, regions, synthetic, hover))
    fig.update_layout(title=title, scene=_scene(coords, explained), legend={"itemsizing": "constant"})
    # A fixed div id: the same figure gives the same bytes (plotly draws a random one).
    fig.write_html(str(path), include_plotlyjs=True, full_html=True, div_id="pca")
    return Path(path)


def timeline_html(path, frames: dict[str, np.ndarray], regions, synthetic, hover,
                  title: str = "") -> Path:
    """3-D scatter with one animation frame per checkpoint and a slider."""
    import plotly.graph_objects as go

    labels = list(frames)
    everything = np.concatenate([frames[k] for k in labels])
    first = _scatter3d_traces(frames[labels[0]], regions, synthetic, hover)
    plotly_frames = [go.Frame(data=_scatter3d_traces(frames[k], regions, synthetic, hover), name=k)
                     for k in labels]
    steps = [{"args": [[k], {"frame": {"duration": 0, "redraw": True}, "mode": "immediate"}],
              "label": k, "method": "animate"} for k in labels]
    fig = go.Figure(data=first, frames=plotly_frames)
    play = {"label": "play", "method": "animate",
            "args": [None, {"frame": {"duration": 500, "redraw": True}, "fromcurrent": True}]}
    fig.update_layout(title=title, scene=_scene(everything, None),
                      sliders=[{"steps": steps, "currentvalue": {"prefix": "checkpoint: "}}],
                      updatemenus=[{"type": "buttons", "buttons": [play], "x": 0, "y": 0}],
                      legend={"itemsizing": "constant"})
    fig.write_html(str(path), include_plotlyjs=True, full_html=True, auto_play=False,
                   div_id="timeline")
    return Path(path)


def _scene(coords, explained) -> dict:
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    pad = 0.05 * (hi - lo + 1e-9)
    axes = {}
    for i, name in enumerate(("xaxis", "yaxis", "zaxis")):
        axes[name] = {"title": {"text": _pc_label(i, explained)},
                      "range": [float(lo[i] - pad[i]), float(hi[i] + pad[i])]}
    return {**axes, "aspectmode": "cube"}


def convergence_curves(path, summary, title: str = "") -> Path:
    """Mean CKA (± SEM) against the number of training tasks, one line per layer: solid for
    pairs that share no task, dashed for one configuration across seeds."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    colours = plt.cm.viridis(np.linspace(0, 0.85, max(1, summary["layer"].nunique())))
    for colour, (layer, part) in zip(colours, summary.groupby("layer"), strict=True):
        for relation, style in (("no shared task", "-"), ("same config", "--")):
            rows = part[part["relation"] == relation].sort_values("n_tasks")
            if len(rows):
                ax.errorbar(rows["n_tasks"], rows["mean"], yerr=rows["sem"].fillna(0),
                            fmt=style + "o", color=colour, capsize=3,
                            label=f"layer {layer}, {relation}")
    ax.set(xlabel="tasks per model", ylabel="linear CKA", ylim=(0, 1), title=title)
    ax.set_xticks(sorted(summary["n_tasks"].unique()))
    ax.legend(fontsize=7)
    return _save(fig, path)


def learning_curves(path, long, r2: float = 0.9) -> Path:
    """Left: each run's task progress (0 = the untrained level, 1 = perfect) against the
    training step; right: its held-out probe R² in x (solid) and y (dashed), the map line at
    `r2`. `long` has columns run, task, step and progress (tasks) or x, y (task 'probe')."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (run, part) in enumerate(long.groupby("run", sort=False)):
        colour = colours[i % len(colours)]
        for j, (task, curve) in enumerate(part[part["task"] != "probe"].groupby("task")):
            left.plot(curve["step"], curve["progress"], color=colour,
                      linestyle=["-", "--", ":", "-."][j % 4], label=f"{run}: {task}")
        probe = part[part["task"] == "probe"]
        right.plot(probe["step"], probe["x"], color=colour, label=f"{run}: x")
        right.plot(probe["step"], probe["y"], color=colour, linestyle="--", label=f"{run}: y")
    left.axhline(0, color="#999999", linewidth=0.8)
    left.set(xlabel="step", ylabel="progress from untrained (0) to perfect (1)",
             title="tasks leaving their plateau", ylim=(-0.2, 1.05))
    right.axhline(r2, color="#999999", linewidth=0.8, linestyle=":")
    right.set(xlabel="step", ylabel="held-out probe R²", title="the map forming",
              ylim=(-0.2, 1.02))
    for ax in (left, right):
        ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)
