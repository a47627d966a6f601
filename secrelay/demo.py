"""``secrelay demo``: relay learning from the cloud to the devices, end to end.

Runs on the embedded synthetic data by default (or MovieLens-100K with a path):
the cloud trains on pre-regulation data, then devices continue learning on their
own post-regulation data. It shows the cloud model, devices fine-tuning alone,
federated relay learning (FedAvg), and RelayRec (clustered meta-learned initial
models, an on-device model choice, cluster-keyed aggregation) with every update
summed under SecAgg+ so the server never sees an individual update nor which
cluster a device chose — side by side, judged by gAUC. The transcript's traffic
summary shows what crossed the boundary in each pipeline.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from protocols.errors import ConfigError
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
    overwrite: bool = False,
) -> dict[str, dict[str, object]]:
    """Run the demo pipelines into ``out_dir`` and print a comparison table.

    Refuses an ``out_dir`` that already holds demo runs unless ``overwrite``.
    """
    con = console or Console()
    if not overwrite and any(Path(out_dir).glob("*/checkpoint.pt")):
        raise ConfigError(
            f"{str(out_dir)!r} already holds demo runs; pass --overwrite to replace them "
            "or choose another --out"
        )
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
        (
            "RelayRec + secure aggregation",
            {
                "method": {"name": "relayrec"},
                "privacy": {"secure_aggregation": True},
            },
        ),
    ]
    for label, extra in plans:
        sections = {**base, **extra, "run": {**base["run"], "name": label.split()[0].lower()}}
        cfg = load_config(None, **sections)
        con.print(f"[bold]{label}[/]")
        res = run(cfg, out_dir / cfg.run.name, overwrite=True, log=lambda s: con.print(f"  {s}"))
        rows.setdefault(
            "cloud model only", {**res.records[0], "seen": "nothing (trained in the cloud)"}
        )
        counts = res.final["traffic"]["count"]
        seen = []
        if counts.get("up:contribution_upload"):
            seen.append(f"{counts['up:contribution_upload']} individual updates in the clear")
        if counts.get("up:masked_upload"):
            seen.append(f"{counts['up:masked_upload']} SecAgg+ messages (sums only)")
        if counts.get("up:query"):
            seen.append(f"{counts['up:query']} selector queries")
        rows[label] = {**res.records[-1], "seen": "; ".join(seen) or "nothing"}
    table = Table(title=f"secrelay demo on {data} (gAUC is the headline metric)")
    for col in ("pipeline", "gAUC", "AUC", "logloss", "what the server received"):
        table.add_column(col)
    for label, m in rows.items():
        table.add_row(
            label,
            *(
                f"{m[k]:.4f}" if isinstance(m.get(k), float) else "n/a"
                for k in ("gauc", "auc", "logloss")
            ),
            str(m.get("seen", "")),
        )
    con.print(table)
    con.print(f"run directories under {out_dir}")
    return rows
