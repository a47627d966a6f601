"""Tutorial: train, protect, audit, attack — on small synthetic data, in about a minute.

Run from the repository root: ``python examples/tutorial.py [OUT_DIR]`` (default
``runs/tutorial``). Each step prints what it shows; ``docs/tutorial.md`` walks
through it. The same steps from the command line are ``secrelay run``,
``secrelay audit``, ``secrelay report`` and ``secrelay-attack``.

1. **Train**: relay learning in the clear. Devices start from the cloud model and
   send their model updates to the server as they are (FedAvg).
2. **Protect**: the same run with every update summed under SecAgg+ (the server
   decodes only the sum) and user-level differential privacy (clipped updates,
   discrete Gaussian noise inside the secure sum, ε stated per user).
3. **Audit**: what the privacy ledger says was spent, per unit and adjacency, and the
   self-contained run report (HTML and Markdown).
4. **Attack**: the server tries to read each device's interacted items from what it
   received. Against plaintext updates it succeeds; against the secure sums it gets
   only the union of a round's items.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import secrelay
from attacks import InteractedItemAttack, ServerView
from attacks.truth import item_sets, load_truth
from secrelay.audit import audit
from secrelay.report import write_report

# Small enough for a laptop minute: 80 users x 30 interactions of 100 items.
DATA = {"n_users": 80, "samples_per_user": 30, "n_items": 100, "exposure": 1.0}
COMMON: dict[str, dict[str, Any]] = {
    "run": {"seed": 0, "progress": False, "record_transcript": True},
    "data": {"name": "synthetic", "options": DATA},
    "split": {"mode": "temporal", "alpha": 0.3},
    "model": {"name": "dnn", "embedding_dim": 8, "options": {"hidden_units": [16]}},
    "cloud": {"epochs": 2},
    "local": {"epochs": 2, "lr": 0.01},
    "federated": {"rounds": 3, "clients_per_round": 20},
    # DP needs one weight per device (sample counts are device data): uniform weights.
    "strategy": {"name": "fedavg", "params": {"weighting": "uniform"}},
}
PROTECTED = {
    "secure_aggregation": True,
    "user_level_dp": True,
    "clipping_norm": 0.5,
    "target_epsilon": 8.0,  # calibrate the noise to ε = 8 over the planned rounds
    "user_epsilon": 8.0,  # and refuse any round that would spend more
}


def main(out: Path) -> dict[str, float]:
    """Run the four steps into ``out``; returns the figures the tutorial prints."""
    figures: dict[str, float] = {}

    # 1. Train -------------------------------------------------------------------------
    plain_cfg = secrelay.load_config(None, **{**COMMON, "run": {**COMMON["run"], "name": "plain"}})
    plain = secrelay.run(
        plain_cfg, out / "plain", overwrite=True, progress=False, log=lambda _: None
    )
    figures["cloud_gauc"] = plain.records[0]["gauc"]
    figures["plain_gauc"] = plain.final["final"]["gauc"]
    print(
        f"1. train: cloud model gAUC {figures['cloud_gauc']:.3f} -> "
        f"relay learning in the clear {figures['plain_gauc']:.3f}"
    )

    # 2. Protect -----------------------------------------------------------------------
    prot_cfg = plain_cfg.replace(run={"name": "protected"}, privacy=PROTECTED)
    prot = secrelay.run(
        prot_cfg, out / "protected", overwrite=True, progress=False, log=lambda _: None
    )
    figures["protected_gauc"] = prot.final["final"]["gauc"]
    figures["epsilon"] = float(prot.epsilon["user_epsilon"]) if prot.epsilon else float("inf")
    print(
        f"2. protect: SecAgg+ and user-level DP, gAUC {figures['protected_gauc']:.3f} "
        f"at user-level ε = {figures['epsilon']:.2f}"
    )

    # 3. Audit -------------------------------------------------------------------------
    report = audit(out / "protected")  # a typed AuditReport; .to_dict() is its JSON
    user = report.user
    eps = user.figures[0].epsilon  # the run's own accountant comes first
    print(
        f"3. audit: user-level ε = {eps:.2f} ({report.accountant}, δ = {report.delta:g}, "
        f"adjacency {user.adjacency}), budget {user.budget:g}"
    )
    files = write_report(out / "protected")
    print(f"   report: {files.html}")

    # 4. Attack ------------------------------------------------------------------------
    truth = item_sets(load_truth(plain_cfg))  # the experimenter's ground truth
    attack = InteractedItemAttack()
    view = ServerView.from_run(out / "plain", load_truth(plain_cfg).full.schema)
    figures["attack_plain_f1"] = attack.run_plain(view, truth).f1.value
    view = ServerView.from_run(out / "protected", load_truth(prot_cfg).full.schema)
    figures["attack_protected_f1"] = attack.run_aggregate(
        view, view.release_view(), truth, mode="union"
    ).f1.value
    print(
        f"4. attack: item-set F1 from plaintext updates {figures['attack_plain_f1']:.2f}, "
        f"from the secure sums {figures['attack_protected_f1']:.2f}"
    )
    return figures


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/tutorial"))
