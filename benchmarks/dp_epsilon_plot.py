"""gAUC against user-level ε for several methods (issue 17): reads
``benchmarks/sweep.py`` outputs (a DP sweep over ``privacy.target_epsilon`` and a
non-private run per method), prints the table and writes the plot.

    python benchmarks/dp_epsilon_plot.py --method FedAvg runs/eps/fedavg runs/eps/fedavg-inf \\
        --method RelayRec runs/eps/relayrec runs/eps/relayrec-inf \\
        --out docs/figures/dp_epsilon_methods.png
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path


def _points(dp: Path, plain: Path) -> dict[float, float]:
    out: dict[float, float] = {}
    for rd in dp.iterdir():
        m = re.search(r"target_epsilon=([\d.]+)", rd.name)
        if m and (rd / "summary.json").exists():
            out[float(m.group(1))] = json.loads((rd / "summary.json").read_text())["final"]["gauc"]
    for rd in plain.iterdir():
        if (rd / "summary.json").exists():
            out[math.inf] = json.loads((rd / "summary.json").read_text())["final"]["gauc"]
    return out


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
        cells = [f"{pts[e]:.4f}" if e in pts else "—" for e in eps]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        finite = sorted(e for e in eps if not math.isinf(e))
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        for name, pts in series.items():
            xs = [e for e in finite if e in pts]
            line = ax.plot(xs, [pts[e] for e in xs], marker="o", label=name)[0]
            if math.inf in pts:
                ax.axhline(pts[math.inf], ls=":", c=line.get_color(), lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(finite, [f"{e:g}" for e in finite])
        ax.set_xlabel("user-level ε (δ = 1e-5); dotted: no DP")
        ax.set_ylabel("test gAUC (ML-100K)")
        ax.legend(frameon=False)
        fig.tight_layout()
        fig.savefig(args.out, dpi=120)
        print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
