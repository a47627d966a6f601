"""gAUC against user-level ε for several methods (issue 17): reads
``benchmarks/sweep.py`` outputs (a DP sweep over ``privacy.target_epsilon`` and a
non-private run per method, each over one or more seeds), prints the table (mean ± std
over the seeds found, and how many) and writes the plot (error bars: ± std).

    python benchmarks/dp_epsilon_plot.py --method FedAvg runs/eps/fedavg runs/eps/fedavg-inf \\
        --method RelayRec runs/eps/relayrec runs/eps/relayrec-inf \\
        --out docs/figures/dp_epsilon_methods.png
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from pathlib import Path


def _gauc(run_dir: Path) -> float | None:
    summary = run_dir / "summary.json"
    if not summary.exists():
        return None
    data = json.loads(summary.read_text())
    return float(data["final"]["gauc"]) if data.get("complete", True) else None


def _points(dp: Path, plain: Path) -> dict[float, list[float]]:
    """ε (``inf`` for the non-private runs) → the final gAUC of every finished seed."""
    out: dict[float, list[float]] = {}
    for rd in sorted(dp.iterdir()):
        m = re.search(r"target_epsilon=([\d.]+)", rd.name)
        if m and (g := _gauc(rd)) is not None:
            out.setdefault(float(m.group(1)), []).append(g)
    for rd in sorted(plain.iterdir()):
        if rd.is_dir() and (g := _gauc(rd)) is not None:
            out.setdefault(math.inf, []).append(g)
    return out


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f} (1 seed)"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", nargs=3, action="append", metavar=("NAME", "DP", "PLAIN"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    series = {name: _points(Path(dp), Path(plain)) for name, dp, plain in args.method}
    eps = sorted({e for s in series.values() for e in s}, reverse=True)
    print("| method | " + " | ".join("∞" if math.isinf(e) else f"ε = {e:g}" for e in eps) + " |")
    print("|---|" + "---|" * len(eps))
    for name, pts in series.items():
        cells = [_cell(pts[e]) if e in pts else "—" for e in eps]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        finite = sorted(e for e in eps if not math.isinf(e))
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        for name, pts in series.items():
            xs = [e for e in finite if e in pts]
            means = [statistics.fmean(pts[e]) for e in xs]
            stds = [statistics.stdev(pts[e]) if len(pts[e]) > 1 else 0.0 for e in xs]
            line = ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=name)[0]
            if math.inf in pts:
                ax.axhline(statistics.fmean(pts[math.inf]), ls=":", c=line.get_color(), lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(finite, [f"{e:g}" for e in finite])
        ax.set_xlabel("user-level ε (δ = 1e-5); dotted: no DP; bars: ± std over seeds")
        ax.set_ylabel("test gAUC (ML-100K)")
        ax.legend(frameon=False)
        fig.tight_layout()
        fig.savefig(args.out, dpi=120)
        print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
