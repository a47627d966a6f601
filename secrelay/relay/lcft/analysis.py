"""LCFT's improvement analysis: the gain of each correction by local-CTR drift
(the paper's Figure 2), written into ``lcft_report.json``."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from secrelay.federated.client import DeviceData
from secrelay.metrics import auc

__all__ = ["improvement_by_drift"]


def improvement_by_drift(
    devices: Mapping[int, DeviceData],
    local_ctr: Mapping[int, float],
    predictions: Mapping[str, Mapping[int, np.ndarray]],
    global_ctr: float,
    edges: Sequence[float],
) -> list[dict[str, Any]]:
    """Per |w_i − w_g| bucket: devices, and each correction's user-AUC gain over the
    cloud model (test-size weighted mean of AUC_u(fine-tuned) − AUC_u(cloud))
    (the paper's Figure 2)."""
    e = np.asarray(edges, dtype=np.float64)
    out = []
    for lo, hi in itertools.pairwise(e):
        row: dict[str, Any] = {"lo": float(lo), "hi": float(hi), "devices": 0}
        gains: dict[str, list[tuple[float, int]]] = {c: [] for c in predictions if c != "cloud"}
        for d, dd in devices.items():
            if d not in local_ctr or len(dd.test) == 0:
                continue
            drift = abs(local_ctr[d] - global_ctr)
            if not (lo <= drift < hi or (hi == e[-1] and drift == hi)):
                continue
            y = dd.test.y
            if y.min() == y.max():
                continue
            row["devices"] += 1
            base = auc(y, predictions["cloud"][d])
            for c in gains:
                gains[c].append((auc(y, predictions[c][d]) - base, len(y)))
        for c, g in gains.items():
            if g:
                v = np.array([x for x, _ in g])
                w = np.array([n for _, n in g], dtype=np.float64)
                row[f"{c}/auc_gain"] = float((v * w).sum() / w.sum())
        out.append(row)
    return out
