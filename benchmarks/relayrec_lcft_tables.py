"""Run the RelayRec and LCFT tables of docs/results.md ("RelayRec and LCFT").

Every row is one `secrelay.experiment.run` of an `examples/` config with the
overrides printed next to it (the same overrides the CLI accepts through the
TOML file). Results are appended, one JSON object per run, to ``--out``; run
``--table`` to print the markdown tables from that file.

Usage::

    nice python benchmarks/relayrec_lcft_tables.py --suite relayrec-ml100k --out runs/tables.jsonl
    python benchmarks/relayrec_lcft_tables.py --table --out runs/tables.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from secrelay.config import load_config
from secrelay.experiment import run

ML100K = os.environ.get("SECRELAY_ML100K", "../shared/data/ml-100k")

BASELINES: list[tuple[str, dict[str, Any]]] = [
    ("Normal-init Standalone", {"initial": "single_normal", "collaboration": "standalone"}),
    ("Normal-init FedAvg", {"initial": "single_normal", "collaboration": "fedavg"}),
    ("Normal-init FedProx", {"initial": "single_normal", "collaboration": "fedprox"}),
    ("Normal-init Clustering", {"initial": "single_normal", "collaboration": "clustered_fedavg"}),
    ("Meta-init Standalone", {"initial": "single_meta", "collaboration": "standalone"}),
    ("Meta-init FedAvg", {"initial": "single_meta", "collaboration": "fedavg"}),
    ("Meta-init FedProx", {"initial": "single_meta", "collaboration": "fedprox"}),
    ("Meta-init Clustering", {"initial": "single_meta", "collaboration": "clustered_fedavg"}),
    ("RelayRec", {}),
]


def _relayrec_jobs(
    config: str, data_path: str | None, rounds: int, models: list[str]
) -> list[dict[str, Any]]:
    jobs = []
    for model in models:
        for row, opts in BASELINES:
            jobs.append(
                {
                    "table": f"relayrec:{Path(config).stem}",
                    "row": row,
                    "model": model,
                    "config": config,
                    "data_path": data_path,
                    "overrides": {
                        "model": {"name": model},
                        "federated": {"rounds": rounds, "eval_every": rounds},
                        "method": {"options": opts},
                    },
                }
            )
    return jobs


ABLATIONS: list[tuple[str, dict[str, Any]]] = [
    ("initial=single_normal", {"initial": "single_normal"}),
    ("initial=single_meta", {"initial": "single_meta"}),
    ("initial=multiple_normal", {"initial": "multiple_normal"}),
    ("selection=random", {"selection": "random"}),
    ("selection=optimal", {"selection": "optimal"}),
    ("collaboration=fedavg", {"collaboration": "fedavg"}),
    ("collaboration=fedprox", {"collaboration": "fedprox"}),
    ("collaboration=clustered_fedavg", {"collaboration": "clustered_fedavg"}),
    ("finetune_epochs=10", {"finetune_epochs": 10}),
    (
        "Meta-init FedProx, finetune_epochs=10",
        {"initial": "single_meta", "collaboration": "fedprox", "finetune_epochs": 10},
    ),
]


def _ablation_jobs(config: str, data_path: str | None, rounds: int) -> list[dict[str, Any]]:
    """One component of RelayRec swapped at a time (the rest as RelayRec), DNN."""
    return [
        {
            "table": "ablation",
            "row": row,
            "model": "dnn",
            "config": config,
            "data_path": data_path,
            "overrides": {
                "federated": {"rounds": rounds, "eval_every": rounds},
                "method": {"options": opts},
            },
        }
        for row, opts in ABLATIONS
    ]


def _sweep_jobs(config: str, data_path: str | None, rounds: int) -> list[dict[str, Any]]:
    jobs = []
    for alpha in (0.01, 0.05, 0.10, 0.20):
        jobs.append(
            {
                "table": "sweep-alpha",
                "row": f"alpha={alpha:g}",
                "model": "dnn",
                "config": config,
                "data_path": data_path,
                "overrides": {
                    "split": {"alpha": alpha},
                    "federated": {"rounds": rounds, "eval_every": rounds},
                },
            }
        )
    for k in range(1, 7):
        jobs.append(
            {
                "table": "sweep-K",
                "row": f"K={k}",
                "model": "dnn",
                "config": config,
                "data_path": data_path,
                "overrides": {
                    "federated": {"rounds": rounds, "eval_every": rounds},
                    "method": {"options": {"num_clusters": k}},
                },
            }
        )
    return jobs


def _lcft_jobs(config: str, data_path: str | None, models: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "table": f"lcft:{Path(config).stem}",
            "row": model,
            "model": model,
            "config": config,
            "data_path": data_path,
            "overrides": {"model": {"name": model}},
        }
        for model in models
    ]


SUITES = {
    "relayrec-ml100k": lambda a: _relayrec_jobs(
        "examples/relayrec_ml100k.toml", ML100K, a.rounds, a.models
    ),
    "relayrec-synthetic": lambda a: _relayrec_jobs(
        "examples/relayrec_synthetic.toml", None, a.rounds, a.models
    ),
    "default-ml100k": lambda a: [
        {
            "table": "default",
            "row": "RelayRec, examples/relayrec_ml100k.toml as is",
            "model": "dnn",
            "config": "examples/relayrec_ml100k.toml",
            "data_path": ML100K,
            "overrides": {},
        }
    ],
    "ablations-ml100k": lambda a: _ablation_jobs("examples/relayrec_ml100k.toml", ML100K, a.rounds),
    "sweeps-ml100k": lambda a: _sweep_jobs("examples/relayrec_ml100k.toml", ML100K, a.rounds),
    "lcft-ml100k": lambda a: _lcft_jobs("examples/lcft_ml100k.toml", ML100K, a.models),
    "lcft-ml100k-strong": lambda a: [
        {
            **j,
            "table": "lcft:lcft_ml100k, local epochs 5, lr 0.005",
            "overrides": {**j["overrides"], "local": {"epochs": 5, "lr": 0.005}},
        }
        for j in _lcft_jobs("examples/lcft_ml100k.toml", ML100K, a.models)
    ],
    "lcft-synthetic": lambda a: _lcft_jobs("examples/lcft_synthetic.toml", None, a.models),
}


def run_job(job: dict[str, Any], out: Path, runs_dir: Path) -> dict[str, Any]:
    base = load_config(job["config"])
    ov = job["overrides"]
    sections: dict[str, Any] = {k: v for k, v in ov.items() if k != "method"}
    if "model" in sections and sections["model"].get("name") == "lr":
        sections["model"] = {**sections["model"], "options": {}}
    if "method" in ov:
        sections["method"] = {"options": {**base.method.options, **ov["method"]["options"]}}
    if job["data_path"]:
        sections["data"] = {"path": job["data_path"]}
    sections["run"] = {"progress": False}
    cfg = load_config(job["config"], **sections)
    name = (
        f"{job['table']}-{job['row']}-{job['model']}".replace(" ", "_")
        .replace(":", "_")
        .replace("=", "")
    )
    t0 = time.perf_counter()
    result = run(cfg, runs_dir / name, overwrite=True, progress=False, log=lambda s: None)
    rec = {
        **{k: job[k] for k in ("table", "row", "model", "config")},
        "overrides": ov,
        "seconds": time.perf_counter() - t0,
        "cloud": result.records[0],
        "final": result.records[-1],
        "run_dir": str(runs_dir / name),
    }
    with out.open("a") as f:
        f.write(json.dumps(rec, default=float) + "\n")
    return rec


def print_tables(path: Path) -> None:
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    tables: dict[str, list[dict[str, Any]]] = {}
    for r in recs:
        tables.setdefault(r["table"], []).append(r)
    for name, rows in tables.items():
        print(f"\n### {name}\n")
        if name.startswith("lcft"):
            print(
                "| model | Cloud gAUC | Local gAUC | soft1 gAUC | soft2 gAUC | hard gAUC | soft1 vs Cloud | soft1 vs Local |"
            )
            print("|---|---|---|---|---|---|---|---|")
            for r in rows:
                f = r["final"]
                c, loc = f["cloud/gauc"], f.get("none/gauc")
                vals = [f.get(f"{k}/gauc") for k in ("none", "soft1", "soft2", "hard")]
                cells = " | ".join("n/a" if v is None else f"{v:.4f}" for v in vals)
                s1 = f.get("soft1/gauc")
                rel_c = f"{100 * (s1 - c) / c:+.2f} %" if s1 is not None else "n/a"
                rel_l = (
                    f"{100 * (s1 - loc) / loc:+.2f} %"
                    if s1 is not None and loc is not None
                    else "n/a"
                )
                print(f"| {r['model']} | {c:.4f} | {cells} | {rel_c} | {rel_l} |")
            continue
        print("| row | model | gAUC | AUC | logloss | cloud-phase gAUC | seconds |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            f, c = r["final"], r["cloud"]
            print(
                f"| {r['row']} | {r['model']} | {f['gauc']:.4f} | {f['auc']:.4f} | {f['logloss']:.4f} "
                f"| {c['gauc']:.4f} | {r['seconds']:.0f} |"
            )


def draw_figure(path: Path, table: str, target: Path) -> None:
    """The paper's Figure 2: AUC gain over the cloud model per |w_i − w_g| bucket."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    recs = [r for r in recs if r["table"] == table]
    if not recs:
        raise SystemExit(f"no runs of table {table!r} in {path}")
    fig, axes = plt.subplots(1, len(recs), figsize=(4 * len(recs), 3.2), sharey=True, squeeze=False)
    for ax, r in zip(axes[0], recs):
        report = json.loads((Path(r["run_dir"]) / "lcft_report.json").read_text())
        buckets = report["drift_buckets"]
        labels = [f"[{b['lo']:g},{b['hi']:g})\nn={b['devices']}" for b in buckets]
        x = range(len(buckets))
        for c in report["corrections"]:
            ax.plot(x, [b.get(f"{c}/auc_gain", float("nan")) for b in buckets], marker="o", label=c)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xticks(list(x), labels, fontsize=7)
        ax.set_title(r["model"])
        ax.set_xlabel("|w_i − w_g|")
    axes[0][0].set_ylabel("user AUC gain over Cloud")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=120)
    print(f"wrote {target}")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--suite", choices=sorted(SUITES), action="append", default=[])
    p.add_argument("--models", default="dnn,lr")
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--rows", default="", help="comma-separated row names to run (default all)")
    p.add_argument("--out", type=Path, default=Path("runs/relayrec_lcft_tables.jsonl"))
    p.add_argument("--runs-dir", type=Path, default=Path("runs/relayrec_lcft"))
    p.add_argument("--table", action="store_true", help="print the tables from --out and exit")
    p.add_argument("--figure", default="", help="draw the drift figure of this LCFT table name")
    p.add_argument("--figure-out", type=Path, default=Path("docs/figures/lcft_drift_ml100k.png"))
    a = p.parse_args()
    a.models = a.models.split(",")
    if a.table:
        print_tables(a.out)
        return
    if a.figure:
        draw_figure(a.out, a.figure, a.figure_out)
        return
    a.out.parent.mkdir(parents=True, exist_ok=True)
    wanted = {r for r in a.rows.split(",") if r}
    for suite in a.suite:
        for job in SUITES[suite](a):
            if wanted and job["row"] not in wanted:
                continue
            rec = run_job(job, a.out, a.runs_dir)
            f = rec["final"]
            print(
                f"{job['table']:28s} {job['row']:24s} {job['model']:8s} gauc {f.get('gauc', float('nan')):.4f} "
                f"auc {f.get('auc', float('nan')):.4f} ll {f.get('logloss', float('nan')):.4f} "
                f"({rec['seconds']:.0f}s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
