"""The report's figures as PNG bytes (matplotlib, Agg backend): metrics over rounds,
and ε over rounds with the budget lines and integer round ticks."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from secrelay.report.collect import RunReport

__all__ = ["Figure", "render_figures"]

METRICS_PNG = "report_metrics.png"
EPSILON_PNG = "report_epsilon.png"


@dataclass(frozen=True)
class Figure:
    """One rendered figure: its file name (Markdown), caption and PNG bytes."""

    filename: str
    caption: str
    png: bytes


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    _pyplot().close(fig)
    return buf.getvalue()


def _metrics_figure(report: RunReport) -> Figure | None:
    keys = [
        k for k in ("gauc", "auc", "logloss") if any(r.get(k) is not None for r in report.records)
    ]
    if not keys:
        return None
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 3.0), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r["round"], r[key]) for r in report.records if r.get(key) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", ms=3)
        ax.set_title({"gauc": "gAUC", "auc": "AUC", "logloss": "logloss"}[key])
        ax.set_xlabel("round (0 = cloud model)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    return Figure(METRICS_PNG, "Test metrics over rounds", _png(fig))


def _epsilon_figure(report: RunReport) -> Figure | None:
    rows = report.epsilon_rows
    if not rows:
        return None
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    p = report.config.privacy
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    series = (
        ("user", "user level (global)", "-o", p.user_epsilon, "user budget"),
        ("example_max", "example level, worst device", "-s", p.example_epsilon, "example budget"),
        ("example_median", "example level, median device", "--", None, ""),
    )
    for key, label, style, budget, blabel in series:
        pts = [(r["round"], r[key]) for r in rows if r.get(key) is not None]
        if not pts:
            continue
        (line,) = ax.plot([t for t, _ in pts], [e for _, e in pts], style, ms=3, label=label)
        if budget is not None:
            ax.axhline(
                budget, color=line.get_color(), ls=":", lw=1.2, label=f"{blabel} ε = {budget:g}"
            )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel(f"ε at δ = {p.delta:g} ({report.audit.get('accountant', p.accountant)})")
    ax.set_title(f"privacy spent: {report.name}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return Figure(EPSILON_PNG, "ε over rounds, with the budgets", _png(fig))


def render_figures(report: RunReport) -> list[Figure]:
    """The report's figures (none for a run without metrics or DP releases)."""
    return [f for f in (_metrics_figure(report), _epsilon_figure(report)) if f is not None]
