"""DP cost against population size (issue 17): paired gAUC difference, non-private
minus DP, per seed, from two ``benchmarks/sweep.py`` outputs of
``examples/dp_population_fedavg_u8.toml`` (with and without DP); prints the table and
writes the plot.

    python benchmarks/dp_population_plot.py runs/dp-population/u8 runs/dp-population/uinf \\
        --out docs/figures/dp_cost_population.png
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path


def _final(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "summary.json").read_text())["final"]


def _by_cell(root: Path) -> dict[tuple[int, int], Path]:
    cells = {}
    for rd in root.iterdir():
        if not (rd / "summary.json").exists():
            continue
        n = re.search(r"n_devices=(\d+)", rd.name)
        seed = re.search(r"seed=(\d+)", rd.name)
        if n and seed:
            cells[(int(n.group(1)), int(seed.group(1)))] = rd
    return cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dp")
    ap.add_argument("plain")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dp, plain = _by_cell(Path(args.dp)), _by_cell(Path(args.plain))
    rows = []
    for n in sorted({k[0] for k in dp}):
        seeds = sorted(s for (m, s) in dp if m == n and (m, s) in plain)
        cost = [_final(plain[(n, s)])["gauc"] - _final(dp[(n, s)])["gauc"] for s in seeds]
        rows.append((n, statistics.mean(cost), statistics.stdev(cost) if len(cost) > 1 else 0.0))
    print("| devices | DP cost in gAUC (non-private − DP), mean ± std |")
    print("|---|---|")
    for n, m, s in rows:
        print(f"| {n:,} | {m:.4f} ± {s:.4f} |")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.errorbar(
            [r[0] for r in rows],
            [r[1] for r in rows],
            yerr=[r[2] for r in rows],
            marker="o",
            capsize=3,
        )
        ax.axhline(0.01, ls="--", c="grey", lw=1, label="0.01")
        ax.axhline(0.0, c="black", lw=0.5)
        ax.set_xscale("log")
        ax.set_xlabel("devices in the population (q = 0.01, 20 rounds)")
        ax.set_ylabel("gAUC cost of user-level ε = 8")
        ax.legend(frameon=False)
        fig.tight_layout()
        fig.savefig(args.out, dpi=120)
        print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
