"""CoDA Algorithm 2: the personalized sample classifier that filters matched rows.

A two-class classifier (local = 1, matched = 0) is trained on the local samples and
a random third of the matched ones; matched samples scoring ≥ σ are kept.
:func:`filter_matched_private` trains the same classifier with example-level DP-SGD
(:func:`secrelay.relay.coda.training.private_train`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from protocols.dp import LedgerRecord
from protocols.errors import InvalidParameterError
from secrelay.data.dataset import CTRDataset
from secrelay.models.base import make_model
from secrelay.relay.coda.training import DPSGDSettings, private_train
from secrelay.training import TrainConfig, predict, train_epochs

__all__ = [
    "CLASSIFIER_BATCH_SIZE",
    "FilterResult",
    "classifier_negatives",
    "filter_matched",
    "filter_matched_private",
]

# Expected mini-batch of the sample classifier (Algorithm 2).
CLASSIFIER_BATCH_SIZE = 32


def _mask_user_fields(x: np.ndarray, ds: CTRDataset) -> np.ndarray:
    out = np.array(x)
    for f in ds.schema.fields_with_role("user"):
        out[:, ds.schema.column_slice(f.name)] = 0
    return out


def filter_matched(
    local: CTRDataset,
    matched: CTRDataset,
    *,
    sigma: float = 0.2,
    train_fraction: float = 1 / 3,
    config: TrainConfig | None = None,
    embedding_dim: int = 8,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """CoDA Algorithm 2: score the matched samples with a local-vs-matched classifier.

    A logistic-regression classifier (over the item and context fields: the user
    fields are masked, since the local rows share one user-id/profile and would
    separate the classes trivially) is trained on every local sample (label 1)
    and a random ``train_fraction`` of the matched samples (label 0). Every
    matched sample gets ``p(local | x)``; those with ``p ≥ sigma`` are kept.

    Returns
    -------
    (keep_mask, scores)
        Over the rows of ``matched``.
    """
    _check_filter_args(sigma, train_fraction)
    if len(matched) == 0:
        return np.zeros(0, dtype=bool), np.zeros(0)
    cfg = config or TrainConfig(epochs=5, batch_size=32, lr=0.01, optimizer="adam")
    train = _classifier_train_set(local, matched, train_fraction, seed)
    model = make_model("lr", local.schema, embedding_dim=embedding_dim, seed=seed)
    train_epochs(model, train, cfg, generator=torch.Generator().manual_seed(seed))
    scores = _score_matched(model, matched)
    return scores >= sigma, scores


def classifier_negatives(n_matched: int, train_fraction: float) -> int:
    """How many matched rows :func:`filter_matched` trains on as negatives (0 if none)."""
    return max(1, round(train_fraction * n_matched)) if n_matched else 0


def _check_filter_args(sigma: float, train_fraction: float) -> None:
    if not 0 <= sigma <= 1:
        raise InvalidParameterError(f"`sigma` must be in [0, 1]; got {sigma!r}")
    if not 0 < train_fraction <= 1:
        raise InvalidParameterError(f"`train_fraction` must be in (0, 1]; got {train_fraction!r}")


def _classifier_train_set(
    local: CTRDataset, matched: CTRDataset, train_fraction: float, seed: int
) -> CTRDataset:
    """Every local row (label 1) + a random ``train_fraction`` of the matched rows
    (label 0), user fields masked."""
    rng = np.random.default_rng(seed)
    n_neg = classifier_negatives(len(matched), train_fraction)
    neg = rng.choice(len(matched), size=n_neg, replace=False)
    x = np.concatenate([local.x, matched.x[neg]])
    x = _mask_user_fields(x, local)
    y = np.concatenate([np.ones(len(local)), np.zeros(n_neg)]).astype(np.float32)
    return CTRDataset(local.schema, x, y, np.zeros(len(y), np.int64), np.zeros(len(y), np.int64))


def _score_matched(model: torch.nn.Module, matched: CTRDataset) -> np.ndarray:
    scores: np.ndarray = predict(model, matched.with_x(_mask_user_fields(matched.x, matched)))
    return scores


@dataclass(frozen=True)
class FilterResult:
    """What :func:`filter_matched_private` returns: keep mask and scores over the
    matched rows, and the ledger record of the classifier's training."""

    keep: np.ndarray
    scores: np.ndarray
    record: LedgerRecord


def filter_matched_private(
    local: CTRDataset,
    matched: CTRDataset,
    *,
    steps_per_epoch: int,
    dp: DPSGDSettings,
    round: int,
    device_id: str,
    sigma: float = 0.2,
    train_fraction: float = 1 / 3,
    config: TrainConfig | None = None,
    embedding_dim: int = 8,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> FilterResult:
    """CoDA Algorithm 2 with the classifier trained by DP-SGD (:func:`private_train`).

    The classifier's training set mixes the private local rows (label 1) with public
    matched rows (label 0); Poisson sampling and per-example clipping run over the
    whole mix, which covers every local row. Scoring the *matched* (cloud) rows with
    the private classifier, and keeping those ≥ σ, is post-processing: it costs no
    further privacy. ``steps_per_epoch`` must be fixed from public sizes (see
    :func:`private_train`); ``matched`` must be non-empty.
    """
    _check_filter_args(sigma, train_fraction)
    if len(matched) == 0:
        raise InvalidParameterError("filter_matched_private() needs matched rows")
    cfg = config or TrainConfig(epochs=5, batch_size=32, lr=0.01, optimizer="adam")
    train = _classifier_train_set(local, matched, train_fraction, seed)
    model = make_model("lr", local.schema, embedding_dim=embedding_dim, seed=seed)
    res = private_train(
        model,
        train,
        cfg,
        steps_per_epoch=steps_per_epoch,
        dp=dp,
        round=round,
        device_id=device_id,
        mechanism="coda_classifier",
        generator=generator,
    )
    model.eval()
    scores = _score_matched(model, matched)
    return FilterResult(scores >= sigma, scores, res.record)
