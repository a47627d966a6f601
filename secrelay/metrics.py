"""CTR evaluation metrics on numpy arrays: AUC, logloss and user-level gAUC.

gAUC is the headline metric of the evaluation protocol (DESIGN.md): pooled AUC
over many users is dominated by each user's CTR level, while gAUC (per-user AUC
weighted by the user's test size) measures ranking *within* each user.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from protocols.errors import InvalidParameterError

__all__ = ["GAUCResult", "Metrics", "auc", "evaluate_predictions", "gauc", "logloss"]


def _check(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_score, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise InvalidParameterError(
            f"`y_true` and `y_score` must have the same length; got {y.size} and {p.size}"
        )
    if y.size and not np.isin(y, (0.0, 1.0)).all():
        raise InvalidParameterError("`y_true` must hold only 0 and 1")
    if not np.isfinite(p).all():
        raise InvalidParameterError("`y_score` holds NaN or infinite values")
    return y, p


def _auc_unchecked(y: np.ndarray, p: np.ndarray) -> float:
    n_pos = float(y.sum())
    n_neg = float(y.size - n_pos)
    ranks = rankdata(p)  # average ranks for ties, as the Mann-Whitney U statistic needs
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half), as scikit-learn's ``roc_auc_score``.

    Raises :class:`InvalidParameterError` when ``y_true`` holds a single class.
    """
    y, p = _check(y_true, y_score)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise InvalidParameterError("AUC is undefined when `y_true` holds only one class")
    return _auc_unchecked(y, p)


def logloss(y_true: np.ndarray, y_prob: np.ndarray, *, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy; probabilities are clipped to ``[eps, 1 - eps]``."""
    y, p = _check(y_true, y_prob)
    if y.size == 0:
        raise InvalidParameterError("logloss of an empty array is undefined")
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


@dataclass(frozen=True)
class GAUCResult:
    """User-level AUC weighted by test size.

    Attributes
    ----------
    value:
        Σ_u n_u·AUC_u / Σ_u n_u over users whose test set has both classes
        (NaN if there is none).
    users_used:
        Users that entered the average.
    users_skipped:
        Users skipped because their rows hold a single class.
    """

    value: float
    users_used: int
    users_skipped: int


def gauc(y_true: np.ndarray, y_score: np.ndarray, groups: np.ndarray) -> GAUCResult:
    """Per-user AUC weighted by each user's number of rows (gAUC).

    Users whose rows hold only one class have no AUC; they are skipped and counted.
    """
    y, p = _check(y_true, y_score)
    g = np.asarray(groups).ravel()
    if g.shape != y.shape:
        raise InvalidParameterError(
            f"`groups` must have the same length as `y_true`; got {g.size} and {y.size}"
        )
    order = np.argsort(g, kind="stable")
    g_sorted = g[order]
    _, starts = np.unique(g_sorted, return_index=True)
    bounds = [*starts[1:], len(order)]
    num = den = 0.0
    used = skipped = 0
    for s, e in zip(starts, bounds):
        idx = order[s:e]
        yu = y[idx]
        pos = yu.sum()
        if pos == 0 or pos == yu.size:
            skipped += 1
            continue
        num += yu.size * _auc_unchecked(yu, p[idx])
        den += yu.size
        used += 1
    return GAUCResult(num / den if den else float("nan"), used, skipped)


@dataclass(frozen=True)
class Metrics:
    """AUC, logloss and gAUC of one evaluation (NaN where undefined)."""

    auc: float
    logloss: float
    gauc: float
    n: int
    users_used: int = 0
    users_skipped: int = 0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "auc": self.auc,
            "logloss": self.logloss,
            "gauc": self.gauc,
            "n": self.n,
            "gauc_users": self.users_used,
            "gauc_users_skipped": self.users_skipped,
        }


def evaluate_predictions(
    y_true: np.ndarray, y_prob: np.ndarray, groups: np.ndarray | None = None
) -> Metrics:
    """All three metrics at once; AUC is NaN when the labels hold one class."""
    y, p = _check(y_true, y_prob)
    try:
        a = auc(y, p)
    except InvalidParameterError:
        a = float("nan")
    ll = logloss(y, p) if y.size else float("nan")
    if groups is None:
        return Metrics(a, ll, float("nan"), int(y.size))
    g = gauc(y, p, groups)
    return Metrics(a, ll, g.value, int(y.size), g.users_used, g.users_skipped)
