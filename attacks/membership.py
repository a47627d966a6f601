"""Membership inference on released models: was this row in the training data?

Three scores, each higher for "member":

* :class:`LossThresholdAttack` — −loss (Yeom et al., CSF 2018): members of an
  overfit model have lower loss.
* :class:`ReferenceAttack` — loss under a reference model minus loss under the
  target (difficulty calibration, Watson et al., ICLR 2022): the server owns the
  model it sent down before training (the cloud model), so it can tell "easy" rows
  from memorised ones.
* :class:`LiRAAttack` — the likelihood-ratio attack of Carlini et al. (S&P 2022),
  online variant: ``n_shadows`` shadow models, each trained (with the public recipe,
  from the same start) on a random half of the candidate rows; per row, Gaussians are
  fitted to the logit-scaled confidence φ of the shadows that held it (IN) and did
  not (OUT), with the variance pooled over rows as the paper advises for few shadows,
  and the score is log N(φ; μ_in, σ_in²) − log N(φ; μ_out, σ_out²). A row no shadow
  held (or left out) falls back to the one-sided offline test.

Results are :class:`MembershipResult` objects: AUC with a bootstrap interval and
TPR at 0.1 % / 1 % FPR with Clopper–Pearson intervals (:func:`attacks.stats.roc_summary`),
plus the ROC curve for the log-scale plots of :mod:`attacks.plots`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as _st

from attacks.stats import RocSummary, roc_summary
from attacks.training import Recipe, per_example_loss, train_from, true_label_confidence
from attacks.views import ModelLayout
from secrelay.data import CTRDataset

__all__ = [
    "LiRAAttack",
    "LossThresholdAttack",
    "MembershipAttack",
    "MembershipResult",
    "ReferenceAttack",
    "ShadowTrainer",
    "membership_game",
]

ShadowTrainer = Callable[[CTRDataset, int], np.ndarray]
"""``(rows, seed) -> flat model``: how the attacker imitates training on ``rows``."""


@dataclass(frozen=True)
class MembershipResult:
    """One membership attack on one target: its ROC summary and raw scores."""

    attack: str
    target: str
    summary: RocSummary
    scores: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)

    def as_dict(self) -> dict[str, object]:
        return {"attack": self.attack, "target": self.target, **self.summary.as_dict()}


def membership_game(
    members: CTRDataset, non_members: CTRDataset, *, max_each: int | None = None, seed: int = 0
) -> tuple[CTRDataset, np.ndarray]:
    """The candidate rows (members first, subsampled to ``max_each`` of each) and labels."""
    rng = np.random.default_rng(seed)

    def take(ds: CTRDataset) -> CTRDataset:
        if max_each is None or len(ds) <= max_each:
            return ds
        return ds.subset(np.sort(rng.choice(len(ds), max_each, replace=False)))

    m, n = take(members), take(non_members)
    rows = CTRDataset.concat([m, n])
    labels = np.concatenate([np.ones(len(m), dtype=int), np.zeros(len(n), dtype=int)])
    return rows, labels


class MembershipAttack(abc.ABC):
    """A membership test: a score per row (higher = more likely a member), turned
    into ROC figures against the true membership ``labels`` by :meth:`run`."""

    name: str = "membership"

    @abc.abstractmethod
    def scores(self, layout: ModelLayout, target: np.ndarray, rows: CTRDataset) -> np.ndarray:
        """One score per row of ``rows`` against the target model's parameters."""

    def run(
        self,
        layout: ModelLayout,
        target: np.ndarray,
        rows: CTRDataset,
        labels: np.ndarray,
        *,
        target_name: str = "model",
        seed: int = 0,
    ) -> MembershipResult:
        s = self.scores(layout, target, rows)
        return MembershipResult(
            self.name, target_name, roc_summary(s, labels, seed=seed), s, labels
        )


class LossThresholdAttack(MembershipAttack):
    """Score = −loss of the target model on the row."""

    name = "loss"

    def scores(self, layout: ModelLayout, target: np.ndarray, rows: CTRDataset) -> np.ndarray:
        return -per_example_loss(layout, target, rows)


class ReferenceAttack(LossThresholdAttack):
    """Score = loss under ``reference`` − loss under the target (difficulty-calibrated)."""

    name = "reference"

    def __init__(self, reference: np.ndarray) -> None:
        self.reference = np.asarray(reference)

    def scores(self, layout: ModelLayout, target: np.ndarray, rows: CTRDataset) -> np.ndarray:
        ref = per_example_loss(layout, self.reference, rows)
        return np.asarray(ref - per_example_loss(layout, target, rows))


class LiRAAttack(MembershipAttack):
    """Online LiRA with ``n_shadows`` shadow models (module doc).

    Parameters
    ----------
    trainer:
        ``(rows, seed) -> flat model``; e.g. :meth:`local_trainer` for device models.
    n_shadows:
        Shadow models (>= 2); each candidate row is IN about half of them.
    seed:
        Which rows each shadow holds, and the shadows' training seeds.
    """

    name = "lira"

    def __init__(self, trainer: ShadowTrainer, *, n_shadows: int = 8, seed: int = 0) -> None:
        if n_shadows < 2:
            raise ValueError(f"`n_shadows` must be >= 2; got {n_shadows}")
        self.trainer = trainer
        self.n_shadows = int(n_shadows)
        self.seed = int(seed)

    @staticmethod
    def local_trainer(layout: ModelLayout, start: np.ndarray, recipe: Recipe) -> ShadowTrainer:
        """Shadows trained like a device: from ``start`` with the public recipe."""

        def train(rows: CTRDataset, seed: int) -> np.ndarray:
            return train_from(layout, start, rows, recipe, seed=seed)

        return train

    def shadow_confidences(
        self, layout: ModelLayout, rows: CTRDataset
    ) -> tuple[np.ndarray, np.ndarray]:
        """φ of every row under every shadow ``(n_shadows, n)`` and the IN mask."""
        rng = np.random.default_rng(self.seed)
        n = len(rows)
        phis = np.empty((self.n_shadows, n))
        inside = np.zeros((self.n_shadows, n), dtype=bool)
        for s in range(self.n_shadows):
            # balanced: every row is IN in exactly half of each pair of shadows
            if s % 2 == 0:
                mask = rng.random(n) < 0.5
            else:
                mask = ~inside[s - 1]
            inside[s] = mask
            if not mask.any():
                mask[rng.integers(n)] = True
                inside[s] = mask
            flat = self.trainer(rows.subset(np.flatnonzero(mask)), self.seed * 1000 + s)
            phis[s] = true_label_confidence(layout, flat, rows)
        return phis, inside

    def scores(self, layout: ModelLayout, target: np.ndarray, rows: CTRDataset) -> np.ndarray:
        phi = true_label_confidence(layout, target, rows)
        phis, inside = self.shadow_confidences(layout, rows)
        n_in = inside.sum(axis=0)
        n_out = (~inside).sum(axis=0)
        mu_in = np.where(n_in > 0, (phis * inside).sum(0) / np.maximum(n_in, 1), np.nan)
        mu_out = np.where(n_out > 0, (phis * ~inside).sum(0) / np.maximum(n_out, 1), np.nan)
        # pooled (global) variances, as LiRA recommends with few shadows
        res_in = (phis - mu_in)[inside]
        res_out = (phis - mu_out)[~inside]
        sd_in = max(float(np.sqrt(np.nanmean(res_in**2))) if res_in.size else 1.0, 1e-6)
        sd_out = max(float(np.sqrt(np.nanmean(res_out**2))) if res_out.size else 1.0, 1e-6)
        online = _st.norm.logpdf(phi, mu_in, sd_in) - _st.norm.logpdf(phi, mu_out, sd_out)
        offline = _st.norm.logcdf((phi - np.nan_to_num(mu_out)) / sd_out)
        return np.asarray(np.where(np.isfinite(online), online, offline))
