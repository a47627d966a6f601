"""The cloud's part of LCFT: the hard correction's offline table search.

The cloud simulates devices with its own users and grid-searches, per local-CTR
interval, the (α, β) whose fine-tuned models score best; the resulting
:class:`~secrelay.relay.lcft.corrections.CorrectionTable` is published on
:data:`TABLE_TOPIC` (or answers the devices' queries).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from secrelay.data.dataset import CTRDataset
from secrelay.federated.client import ModelSpec
from secrelay.methods import train_cloud_model
from secrelay.metrics import gauc
from secrelay.relay.lcft.corrections import CorrectionTable, corrected_labels
from secrelay.relay.lcft.device import fine_tune
from secrelay.training import TrainConfig, predict

__all__ = ["TABLE_TOPIC", "search_correction_table"]

TABLE_TOPIC = "lcft/correction_table"
"""Topic of the set-up download: w_g and, on the table path, the whole table."""


def search_correction_table(
    spec: ModelSpec,
    cloud: CTRDataset,
    base_train: TrainConfig,
    finetune: TrainConfig,
    *,
    edges: Sequence[float],
    alphas: Sequence[float],
    betas: Sequence[float],
    min_rows: int = 10,
    max_users: int = 40,
    seed: int = 0,
) -> tuple[CorrectionTable, dict[str, Any]]:
    """The hard correction's offline grid search on the cloud data.

    The cloud simulates devices with its own users: each cloud user with at least
    ``min_rows`` rows is split in time 80/20; a search model is trained on every
    cloud row except those held-out 20 % parts; for each local-CTR interval (by
    the user's CTR on its 80 % part) and each (α, β) on the grid, the search model
    is fine-tuned per user (at most ``max_users`` users per interval, drawn with
    ``seed``) on corrected labels and scored on the held-out rows; the pair with
    the best gAUC wins; ties go to the earliest pair in grid order
    (``alphas`` outer, ``betas`` inner), so with few held-out rows per user —
    where gAUC takes few values and ties are common — the table leans towards
    the grid's first pair. Intervals without a searchable user get (1, 0), i.e.
    no correction.

    Returns
    -------
    (CorrectionTable, dict)
        The table and per-interval statistics (users searched, best gAUC).
    """
    e = np.asarray(edges, dtype=np.float64)
    train_rows: dict[int, np.ndarray] = {}
    test_rows: dict[int, np.ndarray] = {}
    for u, idx in cloud.by_user().items():  # rows in time order
        if len(idx) >= min_rows:
            k = min(max(int(np.floor(0.8 * len(idx) + 1e-9)), 1), len(idx) - 1)
            train_rows[u], test_rows[u] = idx[:k], idx[k:]
    if not train_rows:
        n = e.size - 1
        return CorrectionTable(e, np.ones(n), np.zeros(n)), {"intervals": [{"users": 0}] * n}
    held = np.zeros(len(cloud), dtype=bool)
    held[np.concatenate(list(test_rows.values()))] = True
    base_vec = train_cloud_model(spec, cloud.subset(np.flatnonzero(~held)), base_train, seed=seed)
    train_by = {u: cloud.subset(r) for u, r in train_rows.items()}
    test_by = {u: cloud.subset(r) for u, r in test_rows.items()}
    users = sorted(train_by)
    ctr = {u: train_by[u].ctr for u in users}
    rng = np.random.default_rng(np.random.SeedSequence([seed, 23]))
    n_int = e.size - 1
    best_a, best_b = np.ones(n_int), np.zeros(n_int)
    stats: list[dict[str, Any]] = []
    probe = CorrectionTable(e, np.ones(n_int), np.zeros(n_int))
    for i in range(n_int):
        members = [u for u in users if probe.interval(ctr[u]) == i]
        if len(members) > max_users:
            members = sorted(rng.choice(members, size=max_users, replace=False).tolist())
        if not members:
            stats.append({"users": 0})
            continue
        y_all = np.concatenate([test_by[u].y for u in members])
        g_all = np.concatenate([test_by[u].user for u in members])
        best = (-np.inf, 1.0, 0.0)
        for a in alphas:
            for b in betas:
                preds = []
                for u in members:
                    labels = corrected_labels(train_by[u].y, a, b)
                    m = fine_tune(spec, base_vec, train_by[u], labels, finetune, seed=seed + u)
                    preds.append(predict(m, test_by[u]))
                score = gauc(y_all, np.concatenate(preds), g_all).value
                if np.isfinite(score) and score > best[0]:
                    best = (score, float(a), float(b))
        if np.isfinite(best[0]):
            best_a[i], best_b[i] = best[1], best[2]
        stats.append(
            {"users": len(members), "best_gauc": best[0] if np.isfinite(best[0]) else None}
        )
    return CorrectionTable(e, best_a, best_b), {"intervals": stats}
