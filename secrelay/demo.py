"""``secrelay demo``: relay learning from the cloud to the devices, end to end.

Runs on the embedded synthetic data by default (or MovieLens-100K with a path):
the cloud trains on pre-regulation data, then devices continue learning on their
own post-regulation data. It shows the cloud model, devices fine-tuning alone,
and federated relay learning side by side, judged by gAUC.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from secrelay.config import load_config
from secrelay.experiment import run

__all__ = ["run_demo"]


def run_demo(
    *,
    data: str = "synthetic",
    path: str | None = None,
    out_dir: Path = Path("runs/demo"),
    rounds: int = 10,
    seed: int = 0,
    console: Console | None = None,
) -> dict[str, dict[str, object]]:
    """Run the demo pipelines into ``out_dir`` and print a comparison table."""
    con = console or Console()
    base: dict[str, dict[str, object]] = {
        "run": {"seed": seed, "executor": "sequential"},
        "data": {"name": data, "path": path or ""},
        "federated": {"rounds": rounds, "clients_per_round": 25},
        "model": {"name": "dnn"},
        "cloud": {"epochs": 5},
        "local": {"epochs": 5, "batch_size": 32, "lr": 1e-3},
    }
    rows: dict[str, dict[str, object]] = {}
    plans: list[tuple[str, dict[str, dict[str, object]]]] = [
        ("standalone fine-tuning", {"strategy": {"name": "standalone"}}),
        ("federated relay (FedAvg)", {"strategy": {"name": "fedavg"}}),
    ]
    for label, extra in plans:
        sections = {**base, **extra, "run": {**base["run"], "name": label.split()[0]}}
        cfg = load_config(None, **sections)
        con.print(f"[bold]{label}[/]")
        res = run(cfg, out_dir / cfg.run.name, overwrite=True, log=lambda s: con.print(f"  {s}"))
        rows.setdefault("cloud model only", res.records[0])
        rows[label] = res.records[-1]
    table = Table(title=f"secrelay demo on {data} (gAUC is the headline metric)")
    for col in ("pipeline", "gAUC", "AUC", "logloss"):
        table.add_column(col)
    for label, m in rows.items():
        table.add_row(
            label,
            *(
                f"{m[k]:.4f}" if isinstance(m.get(k), float) else "n/a"
                for k in ("gauc", "auc", "logloss")
            ),
        )
    con.print(table)
    con.print(f"run directories under {out_dir}")
    return rows
