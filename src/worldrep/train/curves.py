"""A run's curves.png: the training loss beside the validation loss of the same kind, and
each generation metric, against step."""

from __future__ import annotations

import json
from pathlib import Path

from .. import artifacts

CURVE_METRICS = ("mean_error", "accuracy", "mean_score", "valid_rate")  # panels besides loss


def loss_lines(records: list[dict], loss: str = "full") -> list[tuple[str, list, str]]:
    """(label, points, style) of the loss panel: the training loss, then the validation loss
    of the same kind per task (solid) and of the other kind (dotted), each kind named: with
    `loss: answer` the training loss is answer-only, so its validation twin is too."""
    same, other = ("answer_loss", "loss") if loss == "answer" else ("loss", "answer_loss")
    words = {"answer_loss": "answer-only", "loss": "whole-row"}
    evals = [r for r in records if r.get("kind") == "eval"]
    lines = [(f"train ({words[same]} loss)",
              [(r["step"], r["loss"]) for r in records if "loss" in r], "-")]
    for kind, style in ((same, "-"), (other, ":")):
        for name in sorted({k for r in evals for k in r if k.split("/")[0] == kind}):
            lines.append((f"val {name.split('/', 1)[1]} ({words[kind]})",
                          [(r["step"], r[name]) for r in evals if name in r], style))
    return lines


def plot_curves(metrics_path: Path, out_png: Path, loss: str = "full") -> None:
    """Training loss and the validation loss of the same kind (answer-only or whole-row:
    `loss`) per task, the other kind dashed, then each generation metric against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
    evals = [r for r in records if r.get("kind") == "eval"]
    names = sorted({k for r in evals for k in r if "/" in k})
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name.split("/")[0], []).append(name)
    panels = ["loss"] + [g for g in CURVE_METRICS if g in groups]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    ax = axes[0, 0]
    for i, (label, pts, style) in enumerate(loss_lines(records, loss)):
        if not pts:
            continue
        extra = {"color": "0.6", "lw": 0.8} if i == 0 else {"marker": "." if style == "-"
                                                              else None}
        ax.plot(*zip(*pts, strict=True), style, label=label, **extra)
    ax.set(xlabel="step", ylabel="token loss", yscale="log",
           title="loss (answer-only)" if loss == "answer" else "loss (whole row)")
    ax.legend(fontsize=7)
    for ax, group in zip(axes[0, 1:], panels[1:], strict=True):
        for name in groups[group]:
            pts = [(r["step"], r[name]) for r in evals if name in r]
            ax.plot(*zip(*pts, strict=True), marker=".", label=name.split("/", 1)[1])
        ax.set(xlabel="step", title=group, yscale="log" if group == "mean_error" else "linear")
        ax.legend(fontsize=7)
    fig.tight_layout()
    try:  # the temporary's name has no .png: say the format
        artifacts.write_atomic(out_png, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
