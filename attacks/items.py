"""Interacted-item inference from embedding-row updates, and its multi-round
(difference) variant against secure sums.

An update of a CTR model's embedding table is non-zero exactly in the rows of the
feature values the device trained on: plain SGD/Adam leave an untouched row's
gradient, moments and value at exactly zero change. A server that reads a plain
update therefore reads off the device's item set. The attack scores each value of
the item field by the L2 norm of its row(s) in the update and declares the rows
above a noise floor:

* if most rows are exactly zero (a plain update), the floor is 0;
* otherwise (DP noise, SecAgg quantisation) it assumes most rows carry only noise,
  estimates the per-coordinate noise scale σ from the median row norm (rows of
  noise have norm σ·χ_w for w coordinates per row) and thresholds at the
  ``1 − α/V`` quantile of σ·χ_w (a Bonferroni-style false-positive control over the
  V rows).

Against a secure sum the server sees only Σ_k Δ_k per round (the difference of two
released models); :class:`InteractedItemAttack` then reports, for each participant,

* ``union`` — the rows of its (first) round's sum: the union of all participants'
  items (recall ≈ 1, precision ≈ |S_k| / |∪ S|);
* ``intersection`` — the rows present in *every* round it took part in;
* ``difference`` — the rows present in every round it took part in and rare in
  the rounds it did not: an item is declared when its posterior
  π / (π + (1 − π)·p̂_i^n) exceeds 1/2, with p̂_i the item's detection rate over the
  other rounds (add-one smoothed), n the device's rounds and π the prior share of
  items a user holds (from the cloud data the server owns).

Each device is one unit: precision and recall are averaged over devices with a
bootstrap interval; the average precision of the row scores (threshold-free) is
reported alongside.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import stats as _st
from sklearn.metrics import average_precision_score

from attacks.stats import Estimate, mean_estimate
from attacks.views import ModelLayout, ReleaseView, ServerView

__all__ = [
    "AggregateMode",
    "DeviceItemScore",
    "InteractedItemAttack",
    "ItemInferenceResult",
    "detect_rows",
]

AggregateMode = Literal["union", "intersection", "difference"]


def detect_rows(norms: np.ndarray, *, width: int, alpha: float = 0.05) -> np.ndarray:
    """Which rows of an update carry signal, from their L2 norms (see the module doc).

    Parameters
    ----------
    norms:
        Row norms, one per field value (row 0, the padding value, included).
    width:
        Coordinates per row (the χ distribution's degrees of freedom).
    alpha:
        Target chance of any false detection among the rows, in (0, 1).

    Examples
    --------
    >>> detect_rows(np.array([0.0, 0.0, 0.3, 0.0]), width=4).tolist()
    [False, False, True, False]
    """
    x = np.asarray(norms, dtype=np.float64)
    if x.size == 0:
        return np.zeros(0, dtype=bool)
    if np.mean(x == 0) >= 0.5:
        return np.asarray(x > 0)
    sigma = np.median(x) / np.sqrt(_st.chi2.ppf(0.5, width))
    thr = sigma * np.sqrt(_st.chi2.ppf(1 - alpha / x.size, width))
    return np.asarray(x > thr)


@dataclass(frozen=True)
class DeviceItemScore:
    """One device's outcome: precision/recall of the declared set, and the average
    precision of the row scores."""

    device: int
    true_items: int
    declared: int
    hits: int
    average_precision: float
    rounds: int = 1

    @property
    def precision(self) -> float:
        return self.hits / self.declared if self.declared else float("nan")

    @property
    def recall(self) -> float:
        return self.hits / self.true_items if self.true_items else float("nan")

    @property
    def f1(self) -> float:
        """2PR/(P + R); 0 when nothing right was declared."""
        if not self.true_items:
            return float("nan")
        return 2 * self.hits / (self.declared + self.true_items)


@dataclass(frozen=True)
class ItemInferenceResult:
    """Precision and recall of the recovered item sets, one unit per device."""

    view: str
    mode: str
    precision: Estimate
    recall: Estimate
    f1: Estimate
    average_precision: Estimate
    devices: tuple[DeviceItemScore, ...] = field(repr=False)

    def as_dict(self) -> dict[str, object]:
        return {
            "view": self.view,
            "mode": self.mode,
            "precision": self.precision.as_dict(),
            "recall": self.recall.as_dict(),
            "f1": self.f1.as_dict(),
            "average_precision": self.average_precision.as_dict(),
            "devices": len(self.devices),
            "precision_empty_sets": sum(1 for d in self.devices if d.declared == 0),
        }


class InteractedItemAttack:
    """Recover each device's item set from what the server saw.

    Parameters
    ----------
    field:
        The item field (default: the schema's ``item_id_field``).
    alpha:
        False-detection control of :func:`detect_rows`.
    seed:
        Seed of the bootstrap intervals.
    """

    name = "items"

    def __init__(self, *, field: str | None = None, alpha: float = 0.05, seed: int = 0) -> None:
        if not 0 < alpha < 1:
            raise ValueError(f"`alpha` must be in (0, 1); got {alpha!r}")
        self.field = field
        self.alpha = float(alpha)
        self.seed = int(seed)

    def _field(self, layout: ModelLayout) -> str:
        f = self.field or layout.schema.item_id_field
        if not f:
            raise ValueError("the schema has no item_id_field; pass `field`")
        return f

    def scores(self, update: np.ndarray, layout: ModelLayout) -> np.ndarray:
        """Row norm of every item value (index = item code; 0 = padding)."""
        return layout.row_norms(update, self._field(layout))

    def declare(self, update: np.ndarray, layout: ModelLayout) -> tuple[np.ndarray, np.ndarray]:
        """The declared item codes of one update, and every code's score."""
        f = self._field(layout)
        s = layout.row_norms(update, f)
        hit = detect_rows(s, width=layout.row_width(f), alpha=self.alpha)
        hit[0] = False  # padding
        return np.flatnonzero(hit), s

    def _score(
        self, device: int, declared: np.ndarray, scores: np.ndarray, truth: set[int], rounds: int
    ) -> DeviceItemScore:
        labels = np.zeros(scores.size, dtype=bool)
        labels[list(truth)] = True
        labels[0] = False
        s = scores[1:]
        ap = (
            float(average_precision_score(labels[1:], s))
            if labels[1:].any() and np.isfinite(s).all()
            else float("nan")
        )
        hits = len(set(declared.tolist()) & truth)
        return DeviceItemScore(device, len(truth), int(declared.size), hits, ap, rounds)

    def _result(self, view: str, mode: str, per: list[DeviceItemScore]) -> ItemInferenceResult:
        return ItemInferenceResult(
            view,
            mode,
            mean_estimate([d.precision for d in per], seed=self.seed),
            mean_estimate([d.recall for d in per], seed=self.seed),
            mean_estimate([d.f1 for d in per], seed=self.seed),
            mean_estimate([d.average_precision for d in per], seed=self.seed),
            tuple(per),
        )

    # --- per-device updates (plaintext uploads) -------------------------------------------
    def run_plain(
        self, view: ServerView, truth: Mapping[int, set[int]], *, max_devices: int | None = None
    ) -> ItemInferenceResult:
        """Against each device's own plaintext update (its first round).

        ``truth`` maps a device to the item codes of its training rows (the
        experimenter's ground truth, used only for scoring).

        Raises
        ------
        ValueError
            When the view holds no plaintext update (secure aggregation).
        """
        first: dict[int, int] = {}
        for t, d in sorted(view.uploads):
            first.setdefault(d, t)
        if not first:
            raise ValueError("the server view holds no plaintext update (the sum is secure)")
        per = []
        for d in sorted(first)[: max_devices or None]:
            upd = view.device_update(first[d], d)
            if upd is None or d not in truth:
                continue
            declared, s = self.declare(upd, view.layout)
            per.append(self._score(d, declared, s, truth[d], 1))
        return self._result("server: plaintext updates", "per-device", per)

    # --- secure sums: per-round aggregates ---------------------------------------------------
    def run_aggregate(
        self,
        view: ServerView,
        release: ReleaseView,
        truth: Mapping[int, set[int]],
        *,
        mode: AggregateMode = "union",
        prior: float = 0.05,
        key: str | None = None,
        max_devices: int | None = None,
    ) -> ItemInferenceResult:
        """Against the per-round sums, with the participant lists the server knows.

        Parameters
        ----------
        view:
            Gives who took part in each round.
        release:
            The released models; round t's sum is read as w_{t+1} − w_t.
        mode:
            ``"union"``, ``"intersection"`` or ``"difference"`` (module doc).
        prior:
            π of the ``difference`` rule, in (0, 1).
        key:
            Read one model's sums; default: every released model together (a
            cluster-keyed run releases one per cluster and the server sees them all).
        """
        if not 0 < prior < 1:
            raise ValueError(f"`prior` must be in (0, 1); got {prior!r}")
        f = self._field(view.layout)
        width = view.layout.row_width(f)
        detected: dict[int, np.ndarray] = {}
        norms: dict[int, np.ndarray] = {}
        for t in release.rounds:
            aggs = release.aggregate_updates(t)
            if key is not None:
                aggs = {k: v for k, v in aggs.items() if k == key}
            if not aggs or t not in view.participants:
                continue
            s = np.sqrt(sum(view.layout.row_norms(a, f) ** 2 for a in aggs.values()))
            hit = detect_rows(s, width=width * len(aggs), alpha=self.alpha)
            hit[0] = False
            detected[t], norms[t] = hit, s
        if not detected:
            raise ValueError("no round has both a released sum and a participant list")
        rounds_of: dict[int, list[int]] = {}
        for t in sorted(detected):
            for d in view.participants[t]:
                rounds_of.setdefault(d, []).append(t)
        all_rounds = sorted(detected)
        per = []
        for d in sorted(rounds_of)[: max_devices or None]:
            if d not in truth:
                continue
            mine = rounds_of[d]
            others = [t for t in all_rounds if t not in mine]
            inter = np.logical_and.reduce([detected[t] for t in mine])
            if mode == "union":
                hit = detected[mine[0]]
                score = norms[mine[0]]
            elif mode == "intersection":
                hit = inter
                score = np.min([norms[t] for t in mine], axis=0)
            else:
                rate = (np.sum([detected[t] for t in others], axis=0) + 1.0) / (len(others) + 2.0)
                log_like = len(mine) * np.log(rate)  # log P[in every round | not held]
                posterior = prior / (prior + (1 - prior) * np.exp(log_like))
                hit = inter & (posterior > 0.5)
                score = np.where(inter, -log_like, -np.inf)
                finite = np.isfinite(score)
                score = np.where(finite, score, (score[finite].min() - 1) if finite.any() else 0.0)
            per.append(self._score(d, np.flatnonzero(hit), score, truth[d], len(mine)))
        return self._result("server: secure per-round sums", mode, per)
