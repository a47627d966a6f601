"""Plots of the trade-off report (matplotlib, Agg backend, PNG).

* :func:`plot_roc` — ROC curves on log–log axes, the LiRA / ML Privacy Meter
  convention: what matters is the TPR at very low FPR.
* :func:`plot_tradeoff` — accuracy (gAUC) against one leakage metric, one point per
  protection setting with its confidence interval, the Pareto frontier (less
  leakage *and* more accuracy than any other point) highlighted.
* :func:`pareto_frontier` — which points are on that frontier.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["pareto_frontier", "plot_roc", "plot_tradeoff"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_frontier(leakage: Sequence[float], accuracy: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower leakage and
    higher accuracy, one of them strictly), sorted by leakage.

    Examples
    --------
    >>> pareto_frontier([0.1, 0.5, 0.9, 0.4], [0.60, 0.62, 0.70, 0.58])
    [0, 1, 2]
    """
    pts = [(float(x), float(y), i) for i, (x, y) in enumerate(zip(leakage, accuracy))]
    pts = [p for p in pts if np.isfinite(p[0]) and np.isfinite(p[1])]
    out = []
    for x, y, i in pts:
        dominated = any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for x2, y2, j in pts if j != i)
        if not dominated:
            out.append(i)
    return sorted(out, key=lambda i: (float(leakage[i]), -float(accuracy[i])))


def plot_roc(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | Path,
    *,
    title: str = "membership inference ROC",
) -> Path:
    """ROC curves (``label -> (fpr, tpr)``) on log–log axes, with the chance line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    lo = 1e-4
    for label, (fpr, tpr) in curves.items():
        f = np.clip(np.asarray(fpr, dtype=float), lo, 1)
        t = np.clip(np.asarray(tpr, dtype=float), lo, 1)
        ax.plot(f, t, label=label, linewidth=1.4)
    grid = np.logspace(np.log10(lo), 0, 50)
    ax.plot(grid, grid, "k--", linewidth=0.8, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, 1)
    ax.set_ylim(lo, 1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", framealpha=0.9)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_tradeoff(
    points: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    metric: str,
    accuracy: str = "gAUC",
    title: str = "",
) -> Path:
    """One point per setting: ``{"setting", "value", "low", "high", "accuracy"}``.

    The x error bar is the leakage metric's interval; points on the Pareto frontier
    are filled and joined, the others hollow.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    xs = [float(p["value"]) if p.get("value") is not None else np.nan for p in points]
    ys = [float(p["accuracy"]) if p.get("accuracy") is not None else np.nan for p in points]
    front = set(pareto_frontier(xs, ys))
    for i, p in enumerate(points):
        if not (np.isfinite(xs[i]) and np.isfinite(ys[i])):
            continue
        low = p.get("low")
        high = p.get("high")
        xerr = None
        if (
            low is not None
            and high is not None
            and np.isfinite(float(low))
            and np.isfinite(float(high))
        ):
            xerr = [[max(xs[i] - float(low), 0.0)], [max(float(high) - xs[i], 0.0)]]
        on = i in front
        ax.errorbar(
            xs[i],
            ys[i],
            xerr=xerr,
            fmt="o",
            color="C3" if on else "C0",
            mfc="C3" if on else "white",
            capsize=3,
            markersize=7,
        )
        ax.annotate(
            str(p["setting"]), (xs[i], ys[i]), textcoords="offset points", xytext=(5, 5), fontsize=8
        )
    order = sorted(front, key=lambda i: xs[i])
    if len(order) > 1:
        ax.plot(
            [xs[i] for i in order],
            [ys[i] for i in order],
            "-",
            color="C3",
            linewidth=1.2,
            label="frontier",
        )
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel(f"{metric} (leakage; lower is more private)")
    ax.set_ylabel(accuracy)
    ax.set_title(title or f"{accuracy} vs {metric}", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
