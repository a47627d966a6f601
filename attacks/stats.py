"""Statistics every attack reports with: estimates with confidence intervals, ROC
summaries, and the ε lower bounds of privacy auditing.

* :class:`Estimate` — a value with its two-sided interval, the method that made it
  and the number of independent units behind it.
* :func:`clopper_pearson` — the exact binomial interval (beta quantiles).
* :func:`mean_estimate` — a mean over units (devices, seeds) with a percentile
  bootstrap interval.
* :func:`roc_summary` — AUC with a stratified bootstrap interval, and the TPR at
  fixed low FPRs (0.1 %, 1 %) with Clopper–Pearson intervals over the members: the
  reporting convention of LiRA (Carlini et al., S&P 2022) and ML Privacy Meter.
* :func:`epsilon_lower_bound` — Jagielski et al. (NeurIPS 2020) / Nasr et al.
  (S&P 2021): from the counts of a membership test on many independent trials,
  ε ≥ log((1 − δ − FNR⁺) / FPR⁺) with one-sided Clopper–Pearson upper bounds.
* :func:`one_run_epsilon_lower_bound` — Steinke, Nasr & Jagielski (NeurIPS 2023):
  from one run with ``m`` canaries each included with probability 1/2, ``r``
  guesses and ``v`` correct ones.

Everything here is numpy/scipy only, deterministic given its ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as _st
from sklearn.metrics import roc_auc_score, roc_curve

__all__ = [
    "Estimate",
    "RocSummary",
    "clopper_pearson",
    "epsilon_lower_bound",
    "mean_estimate",
    "one_run_epsilon_ceiling",
    "one_run_epsilon_lower_bound",
    "one_run_p_value",
    "roc_summary",
]


def _check_confidence(confidence: float) -> float:
    if not (isinstance(confidence, (int, float)) and 0 < confidence < 1):
        raise ValueError(f"`confidence` must be in (0, 1); got {confidence!r}")
    return float(confidence)


@dataclass(frozen=True)
class Estimate:
    """A measured value with its two-sided confidence interval.

    Attributes
    ----------
    value:
        The point estimate (``nan`` when nothing was measured).
    low, high:
        The interval at ``confidence``.
    method:
        How the interval was made (``"clopper-pearson"``, ``"bootstrap"``, ...).
    n:
        Independent units behind the estimate (trials, devices, examples).
    """

    value: float
    low: float
    high: float
    confidence: float = 0.95
    method: str = ""
    n: int = 0

    def as_dict(self) -> dict[str, float | str | int | None]:
        def clean(x: float) -> float | None:
            return None if not math.isfinite(x) else float(x)

        return {
            "value": clean(self.value),
            "ci_low": clean(self.low),
            "ci_high": clean(self.high),
            "confidence": self.confidence,
            "ci_method": self.method,
            "n": int(self.n),
        }

    def __str__(self) -> str:
        if not math.isfinite(self.value):
            return "n/a"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"

    @classmethod
    def missing(cls, method: str = "") -> Estimate:
        return cls(float("nan"), float("nan"), float("nan"), method=method, n=0)


def clopper_pearson(successes: int, trials: int, *, confidence: float = 0.95) -> Estimate:
    """The exact (Clopper–Pearson) two-sided interval of a binomial proportion.

    Parameters
    ----------
    successes, trials:
        Counts, ``0 <= successes <= trials``.
    confidence:
        In (0, 1).

    Examples
    --------
    >>> e = clopper_pearson(0, 10)
    >>> (e.value, e.low, round(e.high, 4))
    (0.0, 0.0, 0.3085)
    """
    c = _check_confidence(confidence)
    k, n = int(successes), int(trials)
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= successes <= trials; got {k} of {n}")
    if n == 0:
        return Estimate(float("nan"), 0.0, 1.0, c, "clopper-pearson", 0)
    a = 1.0 - c
    low = 0.0 if k == 0 else float(_st.beta.ppf(a / 2, k, n - k + 1))
    high = 1.0 if k == n else float(_st.beta.ppf(1 - a / 2, k + 1, n - k))
    return Estimate(k / n, low, high, c, "clopper-pearson", n)


def _cp_upper(k: int, n: int, alpha: float) -> float:
    """One-sided Clopper–Pearson upper bound at level 1 − ``alpha``."""
    if n == 0:
        return 1.0
    return 1.0 if k >= n else float(_st.beta.ppf(1 - alpha, k + 1, n - k))


def mean_estimate(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> Estimate:
    """The mean of per-unit values with a percentile-bootstrap interval.

    ``nan`` values (a unit where the metric is undefined) are dropped first.

    Examples
    --------
    >>> mean_estimate([1.0, 1.0, 1.0]).as_dict()["ci_low"]
    1.0
    """
    c = _check_confidence(confidence)
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return Estimate.missing("bootstrap")
    if x.size == 1 or np.all(x == x[0]):
        return Estimate(float(x.mean()), float(x.min()), float(x.max()), c, "bootstrap", x.size)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    a = 1.0 - c
    lo, hi = np.quantile(means, [a / 2, 1 - a / 2])
    return Estimate(float(x.mean()), float(lo), float(hi), c, "bootstrap", int(x.size))


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann–Whitney AUC (ties count one half)."""
    ranks = _st.rankdata(np.concatenate([pos, neg]))
    return float((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


@dataclass(frozen=True)
class RocSummary:
    """A membership-style test summarised as LiRA reports it.

    Attributes
    ----------
    auc:
        Area under the ROC curve, with a stratified-bootstrap interval.
    tpr_at_fpr:
        TPR at each fixed FPR (keys 0.001 and 0.01 by default): the threshold is the
        lowest whose empirical FPR on the non-members is at most the target, and the
        interval is Clopper–Pearson over the members.
    fpr, tpr:
        The ROC curve (for plots).
    balanced_accuracy:
        Best (TPR + TNR)/2 over thresholds (the "membership advantage" view).
    members, non_members:
        How many of each were scored.
    """

    auc: Estimate
    tpr_at_fpr: dict[float, Estimate]
    fpr: np.ndarray = field(repr=False)
    tpr: np.ndarray = field(repr=False)
    balanced_accuracy: float
    members: int
    non_members: int

    def as_dict(self) -> dict[str, object]:
        return {
            "auc": self.auc.as_dict(),
            "tpr_at_fpr": {f"{k:g}": v.as_dict() for k, v in self.tpr_at_fpr.items()},
            "balanced_accuracy": self.balanced_accuracy,
            "members": self.members,
            "non_members": self.non_members,
        }


def roc_summary(
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    *,
    fprs: Sequence[float] = (0.001, 0.01),
    confidence: float = 0.95,
    n_boot: int = 500,
    seed: int = 0,
) -> RocSummary:
    """Summarise scores (higher = "member") against labels (1 = member).

    Raises
    ------
    ValueError
        Without both classes, or when ``scores`` and ``labels`` differ in length.
    """
    c = _check_confidence(confidence)
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(
            f"`scores` and `labels` must be 1-D of one length; got {s.shape}, {y.shape}"
        )
    if y.all() or not y.any():
        raise ValueError("roc_summary needs both members and non-members")
    s = np.where(np.isfinite(s), s, np.nanmin(s[np.isfinite(s)]) if np.isfinite(s).any() else 0.0)
    auc = float(roc_auc_score(y, s))
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    boot = np.empty(n_boot)
    for b in range(n_boot):
        boot[b] = _auc(s[rng.choice(pos, pos.size)], s[rng.choice(neg, neg.size)])
    a = 1.0 - c
    lo, hi = np.quantile(boot, [a / 2, 1 - a / 2])
    fpr, tpr, _ = roc_curve(y, s)
    tpr_at: dict[float, Estimate] = {}
    neg_scores = np.sort(s[~y])[::-1]
    for target in fprs:
        # the strictest threshold: allow at most floor(target * n_neg) false positives
        allowed = math.floor(target * neg.size)
        thr = neg_scores[allowed] if allowed < neg.size else -np.inf
        k = int((s[y] > thr).sum())
        tpr_at[float(target)] = clopper_pearson(k, int(pos.size), confidence=c)
    bal = float(np.max((tpr + 1 - fpr) / 2))
    return RocSummary(
        Estimate(auc, float(lo), float(hi), c, "stratified-bootstrap", int(s.size)),
        tpr_at,
        fpr,
        tpr,
        bal,
        int(pos.size),
        int(neg.size),
    )


# --- ε lower bounds ----------------------------------------------------------------------


def epsilon_lower_bound(
    *,
    true_positives: int,
    false_negatives: int,
    false_positives: int,
    true_negatives: int,
    delta: float,
    confidence: float = 0.95,
) -> float:
    """ε lower bound from a membership test run on independent trials.

    Jagielski et al. 2020 / Nasr et al. 2021: any (ε, δ)-DP mechanism satisfies
    FPR + e^ε·FNR ≥ 1 − δ and FNR + e^ε·FPR ≥ 1 − δ. With one-sided Clopper–Pearson
    upper bounds FPR⁺, FNR⁺ (each at level 1 − (1 − confidence)/2, so both hold
    jointly at ``confidence``),

        ε ≥ max(log((1 − δ − FNR⁺) / FPR⁺), log((1 − δ − FPR⁺) / FNR⁺)),

    floored at 0. Positives are trials where the target was included.

    Examples
    --------
    >>> round(epsilon_lower_bound(true_positives=500, false_negatives=0,
    ...     false_positives=0, true_negatives=500, delta=1e-5), 2)
    4.91
    """
    c = _check_confidence(confidence)
    if not 0 <= delta < 1:
        raise ValueError(f"`delta` must be in [0, 1); got {delta!r}")
    tp, fn, fp, tn = (
        int(x) for x in (true_positives, false_negatives, false_positives, true_negatives)
    )
    if min(tp, fn, fp, tn) < 0:
        raise ValueError("counts must be >= 0")
    alpha = (1.0 - c) / 2
    fpr_hi = _cp_upper(fp, fp + tn, alpha)
    fnr_hi = _cp_upper(fn, tp + fn, alpha)
    best = 0.0
    for num, den in ((1 - delta - fnr_hi, fpr_hi), (1 - delta - fpr_hi, fnr_hi)):
        if num > 0 and den > 0:
            best = max(best, math.log(num / den))
    return best


def one_run_p_value(
    *, canaries: int, guesses: int, correct: int, epsilon: float, delta: float = 0.0
) -> float:
    """P[≥ ``correct`` right guesses] under an (ε, δ)-DP null (Steinke et al. 2023).

    With ``m`` canaries, each included independently with probability 1/2, and ``r``
    guesses (abstentions excluded), the number of correct guesses of any attacker
    against an ε-DP algorithm is dominated by Binomial(r, e^ε/(1 + e^ε)); δ adds
    ``2mδ·α`` with the paper's α (Appendix D).
    """
    m, r, v = int(canaries), int(guesses), int(correct)
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= correct <= guesses <= canaries; got {v}, {r}, {m}")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1]; got {epsilon}, {delta}")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    beta = float(_st.binom.sf(v - 1, r, q))
    if delta == 0:
        return min(beta, 1.0)
    # α = max_i P[v > Bin(r, q) >= v − i] / i  (the paper's bound on the δ term)
    pmf = _st.binom.pmf(np.arange(v - 1, -1, -1), r, q) if v > 0 else np.zeros(0)
    cums = np.cumsum(pmf)
    alpha = float(np.max(cums / np.arange(1, v + 1))) if v > 0 else 0.0
    return min(beta + alpha * delta * 2 * m, 1.0)


def one_run_epsilon_lower_bound(
    *,
    canaries: int,
    guesses: int,
    correct: int,
    delta: float = 0.0,
    confidence: float = 0.95,
    epsilon_max: float = 50.0,
) -> float:
    """The largest ε the one-run audit rejects at ``confidence`` (0 if none).

    Examples
    --------
    The ceiling: 1,000 canaries, all guessed, 95 % confidence (5.78 at δ = 1e-5;
    10,000 canaries give 8.11, or 7.83 at δ = 1e-5).

    >>> round(one_run_epsilon_lower_bound(canaries=1000, guesses=1000, correct=1000), 2)
    5.81
    """
    c = _check_confidence(confidence)
    p = 1.0 - c

    def rejected(eps: float) -> bool:
        return (
            one_run_p_value(
                canaries=canaries, guesses=guesses, correct=correct, epsilon=eps, delta=delta
            )
            < p
        )

    if guesses == 0 or not rejected(0.0):
        return 0.0
    lo, hi = 0.0, epsilon_max
    if rejected(hi):
        return hi
    for _ in range(60):
        mid = (lo + hi) / 2
        if rejected(mid):
            lo = mid
        else:
            hi = mid
    return lo


def one_run_epsilon_ceiling(
    *, canaries: int, guesses: int | None = None, delta: float = 0.0, confidence: float = 0.95
) -> float:
    """The most a one-run audit with these sizes can certify (every guess right)."""
    r = canaries if guesses is None else guesses
    return one_run_epsilon_lower_bound(
        canaries=canaries, guesses=r, correct=r, delta=delta, confidence=confidence
    )
