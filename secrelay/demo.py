"""``secrelay demo``: the compliance demo — relay learning with every protection on.

On the embedded synthetic data (or MovieLens-100K with a path) the cloud trains on
pre-regulation data, then the devices keep learning on their own post-regulation
data. The demo runs three pipelines into ``OUT/``:

* ``baselines`` — the cloud model alone (round 0) and standalone fine-tuning (each
  device alone, nothing leaves it);
* ``relayrec`` — RelayRec without any protection (updates and selector queries in
  the clear): the non-private reference;
* ``protected`` — RelayRec with SecAgg+ on every update sum, user-level DP (noise
  calibrated to a stated ε, zero-out adjacency, a budget that refuses any round
  that would overspend), the CKKS-encrypted selector query, and DP-SGD when asked
  (``dp_sgd``; off by default because it costs accuracy that user-level DP does not
  need to pay here: ``docs/quickstart.md``).

It ends with one screen: accuracy of the four against each other, ε spent per unit
with its adjacency (from :func:`secrelay.audit.audit`), what the server saw per
flow (protected, and how, or plaintext), and the path of the protected run's
report (``report.html``, self-contained). The data's settings (:data:`DEMO_DATA`)
are chosen so that relay learning has something to do that neither the cloud nor
a device alone can do (``docs/concepts.md``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from protocols.errors import ConfigError
from secrelay.config import RunConfig, load_config

__all__ = ["DEMO_DATA", "DEMO_RELAYREC", "DemoResult", "demo_configs", "run_demo"]

DEMO_DATA: dict[str, Any] = {
    "n_users": 400,
    "samples_per_user": 40,
    "n_items": 200,
    "n_groups": 4,
    "n_categories": 8,
    "drift": 0.8,
    "drift_at": 0.3,
    "preference_scale": 1.5,
    "user_noise": 0.3,
    "exposure": 1.0,
}
"""The synthetic generator's settings for the demo (:func:`secrelay.data.make_synthetic`):
400 users in 4 preference groups whose tastes drift strongly at the regulation
boundary (``drift`` 0.8: old and new tastes correlate at cos(0.4π) ≈ 0.31; the
boundary at 30 % of the time span is the temporal split's α), 40 interactions per
user (about 28 on the device: 22 to train on, 6 to test), and items seen according
to the group's taste (``exposure``), so that what a device interacted with tells
which group it belongs to."""

DEMO_RELAYREC: dict[str, Any] = {
    "num_clusters": 4,
    "num_categories": 8,
    "server_model": "deepfm",
}
"""RelayRec's options in the demo: one cluster per preference group, one item
category per latent category, DeepFM as the (faster) server model."""

_SPLIT = {"mode": "temporal", "alpha": 0.3}
_PIPELINES = ("baselines", "relayrec", "protected")


@dataclass(frozen=True)
class DemoResult:
    """What the demo measured.

    ``rows``: one per pipeline (``pipeline``, ``gauc``, ``auc``, ``logloss``,
    ``protection``); ``audit``: the protected run's audit as a dict; ``flows``: what
    the server saw in the protected run; ``report``: the path of its HTML report.
    """

    out_dir: Path
    rows: list[dict[str, Any]]
    audit: dict[str, Any]
    flows: list[Any]
    report: Path


def demo_configs(
    *,
    data: str = "synthetic",
    path: str | None = None,
    rounds: int = 6,
    seed: int = 0,
    epsilon: float = 8.0,
    dp_sgd: bool = False,
    data_options: Mapping[str, Any] | None = None,
) -> dict[str, RunConfig]:
    """The three pipelines' configurations, keyed ``baselines``, ``relayrec``, ``protected``.

    ``data_options`` override :data:`DEMO_DATA` (synthetic data only).

    Raises
    ------
    ConfigError
        For a bad value (``epsilon`` must be a finite number > 0, ``rounds`` >= 1).
    """
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
        raise ConfigError(f"--epsilon must be a finite number > 0; got {epsilon!r}")
    if rounds < 1:
        raise ConfigError(f"--rounds must be >= 1; got {rounds}")
    synthetic = data == "synthetic"
    options = {**DEMO_DATA, **dict(data_options or {})} if synthetic else {}
    population = int(options["n_users"]) if synthetic else 943
    base: dict[str, dict[str, Any]] = {
        "run": {"seed": seed, "executor": "sequential"},
        "data": {"name": data, "path": path or "", "options": options},
        "split": dict(_SPLIT) if synthetic else {"mode": "random", "alpha": 0.05},
        # LR on the devices: one weight per feature value, so a cluster's model is its
        # group's taste (per-cluster item and category weights) in few coordinates,
        # which keeps user-level DP's noise small; the server model clusters the users.
        "model": {"name": "lr", "embedding_dim": 8},
        "cloud": {"epochs": 5},
        "local": {"epochs": 5, "batch_size": 32, "lr": 1e-2},
        # a quarter of the population a round: user-level DP divides its noise by it
        "federated": {
            "rounds": rounds,
            "clients_per_round": max(1, population // 4),
            "eval_every": 1,
        },
    }
    relayrec = {"name": "relayrec", "options": dict(DEMO_RELAYREC) if synthetic else {}}
    privacy: dict[str, Any] = {
        "secure_aggregation": True,
        "user_level_dp": True,
        "clipping_norm": 0.5,
        "target_epsilon": float(epsilon),
        "user_epsilon": float(epsilon),
        "he_selector": True,
    }
    if dp_sgd:
        privacy.update(
            dp_sgd=True, local_target_epsilon=float(epsilon), example_epsilon=float(epsilon)
        )
    extra: dict[str, dict[str, dict[str, Any]]] = {
        "baselines": {"strategy": {"name": "standalone"}},
        "relayrec": {"method": relayrec},
        "protected": {"method": relayrec, "privacy": privacy},
    }
    return {
        name: load_config(None, **{**base, **extra[name], "run": {**base["run"], "name": name}})
        for name in _PIPELINES
    }


def _protection_text(cfg: RunConfig) -> str:
    p = cfg.privacy
    parts = []
    if p.secure_aggregation:
        parts.append("SecAgg+")
    if p.user_level_dp:
        parts.append(f"user-level DP (ε = {p.target_epsilon:g})")
    if p.he_selector:
        parts.append("CKKS selector")
    if p.dp_sgd:
        parts.append(f"DP-SGD (ε = {p.local_target_epsilon:g})")
    return ", ".join(parts)


def _metrics(rec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: rec.get(k) for k in ("gauc", "auc", "logloss")}


def run_demo(
    *,
    data: str = "synthetic",
    path: str | None = None,
    out_dir: Path = Path("runs/demo"),
    rounds: int = 6,
    seed: int = 0,
    epsilon: float = 8.0,
    dp_sgd: bool = False,
    data_options: Mapping[str, Any] | None = None,
    console: Console | None = None,
    overwrite: bool = False,
) -> DemoResult:
    """Run the demo's pipelines into ``out_dir``, write the reports, print the summary.

    Refuses an ``out_dir`` that already holds demo runs unless ``overwrite``.
    """
    from secrelay.experiment import run
    from secrelay.report import collect_report, write_report
    from secrelay.report.collect import COMPARISON_FILE

    con = console or Console()
    out_dir = Path(out_dir)
    if not overwrite and any(out_dir.glob("*/checkpoint.pt")):
        raise ConfigError(
            f"{str(out_dir)!r} already holds demo runs; pass --overwrite to replace them "
            "or choose another --out"
        )
    configs = demo_configs(
        data=data,
        path=path,
        rounds=rounds,
        seed=seed,
        epsilon=epsilon,
        dp_sgd=dp_sgd,
        data_options=data_options,
    )
    titles = {
        "baselines": "1/3 cloud model and standalone fine-tuning (nothing leaves a device)",
        "relayrec": "2/3 RelayRec, no protection (the non-private reference)",
        "protected": f"3/3 RelayRec with {_protection_text(configs['protected'])}",
    }
    results = {}
    for name, cfg in configs.items():
        con.rule(f"[bold]{titles[name]}")
        results[name] = run(
            cfg, out_dir / name, overwrite=True, log=lambda s: con.print(f"  {s}", markup=False)
        )
    base = results["baselines"]
    rows = [
        {
            "pipeline": "cloud model only",
            **_metrics(base.records[0]),
            "protection": "— (pre-regulation cloud data only)",
        },
        {
            "pipeline": "standalone fine-tuning",
            **_metrics(base.records[-1]),
            "protection": "nothing leaves the device",
        },
        {
            "pipeline": "RelayRec, non-private",
            **_metrics(results["relayrec"].records[-1]),
            "protection": "none: updates and selector queries in the clear",
        },
        {
            "pipeline": "RelayRec, protected",
            **_metrics(results["protected"].records[-1]),
            "protection": _protection_text(configs["protected"]),
        },
    ]
    protected_dir = out_dir / "protected"
    (protected_dir / COMPARISON_FILE).write_text(json.dumps(rows, indent=2), encoding="utf-8")
    for name in ("baselines", "relayrec"):
        write_report(out_dir / name)
    report = collect_report(protected_dir)
    files = write_report(protected_dir, report=report)
    result = DemoResult(out_dir, rows, report.audit, list(report.flows), files.html)
    _summary(con, result, data)
    return result


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return "∞" if math.isinf(x) else f"{x:.{digits}f}"
    return str(x)


def _summary(con: Console, r: DemoResult, data: str) -> None:
    con.rule("[bold]secrelay compliance demo: summary")
    acc = Table(title=f"accuracy on the devices' test rows ({data}; gAUC is the headline)")
    for col in ("pipeline", "gAUC", "AUC", "logloss", "protection"):
        acc.add_column(col)
    for row in r.rows:
        acc.add_row(
            row["pipeline"],
            _fmt(row["gauc"]),
            _fmt(row["auc"]),
            _fmt(row["logloss"]),
            row["protection"],
        )
    con.print(acc)

    a = r.audit
    name = a.get("accountant", "prv")
    eps = Table(
        title=f"ε spent by the protected run (δ = {a.get('delta', 0):g}, {name} accountant)"
    )
    for col in ("unit", "ε", "adjacency", "budget"):
        eps.add_column(col)
    ul, ex = a.get("user_level") or {}, a.get("example_level") or {}
    user_eps = (ul.get("epsilon") or {}).get(name) if ul.get("records") else math.inf
    eps.add_row(
        "user (a device's whole contribution; a device in every round)",
        _fmt(user_eps, 3),
        str(ul.get("adjacency") or "—"),
        _fmt(ul.get("budget"), 3),
    )
    pd = ul.get("per_device")
    if pd:
        eps.add_row(
            f"user, per device (its own rounds; {pd['devices']} devices)",
            f"{_fmt(pd['min'], 3)} – {_fmt(pd['max'], 3)}",
            str(ul.get("adjacency") or "—"),
            "",
        )
    ex_eps = (ex.get("epsilon") or {}).get(name)
    eps.add_row(
        f"example (one training example; worst of {ex.get('devices', 0)} devices)",
        _fmt(ex_eps["max"], 3) if ex_eps else "∞ (DP-SGD off)",
        str(ex.get("adjacency") or "—"),
        _fmt(ex.get("budget"), 3),
    )
    con.print(eps)
    for w in a.get("warnings", []) or []:
        con.print(f"WARNING: {w}", markup=False)

    flows = Table(title="what the server saw in the protected run, per flow")
    for col in ("flow", "content", "status", "how"):
        flows.add_column(col)
    for f in r.flows:
        status = {"plaintext": "[red]plaintext[/]", "protected": "[green]protected[/]"}.get(
            f.status, f.status
        )
        flows.add_row(f.name, f.content, status, f.protection)
    con.print(flows)
    con.print(f"report: {r.report}", markup=False)
    con.print(f"runs: {r.out_dir}/{{baselines,relayrec,protected}}", markup=False)
