"""CoDA, device side: bounded sample tables, model versions, Algorithms 2 and 3.

Paper: Gu et al., "On-Device Learning with Cloud-Coordinated Data Augmentation for
Extreme Model Personalization in Recommender Systems", arXiv:2201.10382 (2022).

- :class:`SampleTable` — a bounded on-device table (local samples, matched
  samples) with a lifecycle: rows expire ``ttl_days`` after insertion, and an
  insert into a full table first forces a clean-up that evicts the **oldest rows
  first** (by insertion day, then insertion order), so fresh data always fits
  and the table never exceeds its capacity.
- :class:`ModelStore` — the model versions M0 (the downloaded initial model,
  never overwritten), M (the serving model) and Mbuf (the training buffer).
  Training writes only Mbuf; :meth:`ModelStore.commit` publishes it as M by one
  reference swap under a lock, keeping the replaced M for
  :meth:`ModelStore.rollback`; inference reads an immutable snapshot, so it
  never sees a half-written model.
- :func:`filter_matched` — Algorithm 2: a personalized two-class sample
  classifier (local = 1, matched = 0) trained on the local samples and a random
  third of the matched ones; matched samples scoring ≥ σ are kept.
- :func:`gated_train` — Algorithm 3: train the CTR model on local + kept
  samples, accepting a mini-batch update only if the validation AUC on
  held-out local samples improves (ties broken by validation logloss).
- :func:`private_train` and :func:`filter_matched_private` — the same training
  steps with example-level DP-SGD (Opacus, through
  :func:`protocols.dp.local_training.make_private_local_training`) over a mix of private local
  rows and public matched rows, with a number of steps per epoch fixed in advance
  from public sizes, so that the ledger record never depends on how many matched
  rows the device received or kept (``docs/coda.md``, *Differential privacy*).
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from protocols.dp import LedgerRecord
from protocols.dp.local_training import (
    GRAD_SAMPLE_MODES,
    make_private_local_training,
    train_private_epochs,
)
from protocols.errors import InvalidParameterError
from secrelay.data.dataset import CTRDataset
from secrelay.metrics import auc, logloss
from secrelay.models.base import make_model
from secrelay.training import (
    TrainConfig,
    iterate_batches,
    make_optimizer,
    predict,
    soft_bce_with_logits,
    train_epochs,
)

__all__ = [
    "DPSGDSettings",
    "FilterResult",
    "GatedTrainResult",
    "ModelStore",
    "PrivateTrainResult",
    "SampleTable",
    "filter_matched",
    "filter_matched_private",
    "gated_train",
    "private_train",
]


# --- bounded sample tables -------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    x: np.ndarray
    y: float
    day: int


class SampleTable:
    """A bounded table of samples keyed by sample ID.

    Parameters
    ----------
    capacity:
        Maximum rows (>= 1).
    ttl_days:
        Rows older than this many days are removed by :meth:`expire` (``None``:
        no expiry).

    Examples
    --------
    >>> t = SampleTable(capacity=2)
    >>> t.insert([1, 2, 3], np.zeros((3, 1), dtype=np.int64), np.zeros(3), day=0)
    [1]
    >>> t.ids()
    [2, 3]
    """

    def __init__(self, *, capacity: int, ttl_days: int | None = None) -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise InvalidParameterError(f"`capacity` must be an int >= 1; got {capacity!r}")
        if ttl_days is not None and (not isinstance(ttl_days, int) or ttl_days < 1):
            raise InvalidParameterError(f"`ttl_days` must be an int >= 1 or None; got {ttl_days!r}")
        self.capacity = capacity
        self.ttl_days = ttl_days
        self._rows: OrderedDict[int, _Row] = OrderedDict()  # insertion order = age order
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._rows)

    def ids(self) -> list[int]:
        """Sample IDs, oldest first."""
        return list(self._rows)

    def insert(
        self, ids: list[int] | np.ndarray, x: np.ndarray, y: np.ndarray, *, day: int
    ) -> list[int]:
        """Insert (or refresh) rows; returns the IDs evicted by the forced clean-up.

        A refreshed ID moves to the young end. If the batch alone exceeds the
        capacity, only its newest ``capacity`` rows (the last ones) are kept.
        """
        ids = [int(i) for i in np.asarray(ids).ravel()]
        if len(ids) != len(x) or len(ids) != len(y):
            raise InvalidParameterError(f"ids, x and y disagree: {len(ids)}, {len(x)}, {len(y)}")
        evicted: list[int] = []
        if len(ids) > self.capacity:
            evicted.extend(ids[: len(ids) - self.capacity])
            cut = len(ids) - self.capacity
            ids, x, y = ids[cut:], x[cut:], y[cut:]
        for i in ids:
            self._rows.pop(i, None)
        overflow = len(self._rows) + len(ids) - self.capacity
        for _ in range(max(0, overflow)):
            old, _row = self._rows.popitem(last=False)
            evicted.append(old)
        for i, xi, yi in zip(ids, x, y):
            self._rows[i] = _Row(np.array(xi, dtype=np.int64), float(yi), int(day))
        self.evicted += len(evicted)
        return evicted

    def expire(self, today: int) -> list[int]:
        """Remove rows inserted more than ``ttl_days`` before ``today``."""
        if self.ttl_days is None:
            return []
        gone = [i for i, r in self._rows.items() if today - r.day > self.ttl_days]
        for i in gone:
            del self._rows[i]
        return gone

    def remove(self, ids: list[int]) -> None:
        for i in ids:
            self._rows.pop(int(i), None)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, x, y) of every row, oldest first."""
        if not self._rows:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.int64), np.zeros(0, np.float32)
        ids = np.fromiter(self._rows, dtype=np.int64)
        x = np.stack([r.x for r in self._rows.values()])
        y = np.array([r.y for r in self._rows.values()], dtype=np.float32)
        return ids, x, y


# --- model versions -----------------------------------------------------------------------------


class ModelStore:
    """M0 / M / Mbuf with atomic commit and rollback (flat parameter vectors).

    Readers call :meth:`serving` and get a read-only snapshot; the writer fills
    :meth:`buffer` (a private copy) and :meth:`commit` swaps it in under a lock.
    A reader therefore sees either the old or the new model, never a mix.
    """

    def __init__(self, initial: np.ndarray) -> None:
        m0 = np.array(initial, dtype=np.float32)
        m0.setflags(write=False)
        self._m0 = m0
        self._m = m0
        self._previous: list[np.ndarray] = []
        self._buf: np.ndarray | None = None
        self._lock = threading.Lock()
        self.version = 0

    @property
    def m0(self) -> np.ndarray:
        return self._m0

    def serving(self) -> np.ndarray:
        """The current model M (read-only; never modified after publication)."""
        with self._lock:
            return self._m

    def buffer(self) -> np.ndarray:
        """Mbuf: a writable copy of M for training (created on first call)."""
        if self._buf is None:
            self._buf = np.array(self.serving(), dtype=np.float32)
        return self._buf

    def commit(self) -> int:
        """Publish Mbuf as M; the old M becomes the rollback target. Returns the version."""
        if self._buf is None:
            raise InvalidParameterError("commit() without a buffer; call buffer() and train first")
        new = self._buf
        new.setflags(write=False)
        self._buf = None
        with self._lock:
            self._previous.append(self._m)
            self._m = new
            self.version += 1
            return self.version

    def discard(self) -> None:
        """Drop Mbuf without publishing it."""
        self._buf = None

    def rollback(self) -> np.ndarray:
        """Restore the previous M (M0 when there is none left); returns it."""
        with self._lock:
            self._m = self._previous.pop() if self._previous else self._m0
            self.version += 1
            return self._m


# --- Algorithm 2: the personalized sample classifier ---------------------------------------------


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


# --- Algorithm 3: validation-gated training ---------------------------------------------------------


@dataclass(frozen=True)
class GatedTrainResult:
    """What :func:`gated_train` did."""

    accepted: int
    rejected: int
    val_auc: float
    val_logloss: float


def _score(model: torch.nn.Module, val: CTRDataset) -> tuple[float, float]:
    p = predict(model, val)
    try:
        a = auc(val.y, p)
    except InvalidParameterError:
        a = float("nan")
    return a, logloss(val.y, p)


def _better(a: float, ll: float, best_a: float, best_ll: float) -> bool:
    if np.isnan(a) or np.isnan(best_a):
        return ll < best_ll
    return a > best_a or (a == best_a and ll < best_ll)


def _params(model: torch.nn.Module) -> Iterator[torch.Tensor]:
    return iter(model.parameters())


def gated_train(
    model: torch.nn.Module,
    train: CTRDataset,
    val: CTRDataset,
    config: TrainConfig,
    *,
    generator: torch.Generator,
) -> GatedTrainResult:
    """CoDA Algorithm 3: mini-batch SGD/Adam that keeps a step only if it helps.

    After each mini-batch step the model is scored on ``val`` (held-out local
    samples); the step is kept if the validation AUC improves (or stays equal
    with a lower validation logloss; logloss alone when ``val`` holds one class)
    and undone otherwise (parameters restored, optimizer state kept).
    """
    if len(val) == 0:
        raise InvalidParameterError("gated_train() needs a non-empty validation set")
    opt = make_optimizer(model, config)
    x_all = torch.from_numpy(np.array(train.x))
    y_all = torch.from_numpy(np.array(train.y, dtype=np.float32))
    best_a, best_ll = _score(model, val)
    accepted = rejected = 0
    for _ in range(config.epochs):
        for idx in iterate_batches(
            len(train), config.batch_size, shuffle=True, generator=generator
        ):
            saved = [p.detach().clone() for p in _params(model)]
            model.train()
            opt.zero_grad(set_to_none=True)
            loss = soft_bce_with_logits(model(x_all[idx]), y_all[idx])
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            a, ll = _score(model, val)
            if _better(a, ll, best_a, best_ll):
                best_a, best_ll = a, ll
                accepted += 1
            else:
                with torch.no_grad():
                    for p, s in zip(_params(model), saved):
                        p.copy_(s)
                rejected += 1
    return GatedTrainResult(accepted, rejected, best_a, best_ll)


# --- example-level DP-SGD (privacy.dp_sgd) ------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DPSGDSettings:
    """Example-level DP-SGD settings of one device's trainings (``privacy.*``).

    Parameters
    ----------
    max_grad_norm:
        Per-example clipping norm C in (0, inf).
    noise_multiplier:
        z in (0, inf): Gaussian noise of standard deviation z·C on each summed gradient.
    delta:
        δ in (0, 1) the ledger records are stated at.
    grad_sample_mode:
        Opacus mode; ``"ghost"`` (ghost clipping, default) or ``"hooks"``, ...
    accountant:
        ``"prv"`` or ``"rdp"`` (Opacus' own accountant; the ledger is accounted by the run).
    run_id:
        Written into the ledger records.
    secure_mode:
        Opacus secure mode (CSPRNG noise and sampling; needs ``torchcsprng``).
    """

    max_grad_norm: float
    noise_multiplier: float
    delta: float
    grad_sample_mode: str = "ghost"
    accountant: str = "prv"
    run_id: str = "run"
    secure_mode: bool = False

    def __post_init__(self) -> None:
        problems = []
        for name in ("max_grad_norm", "noise_multiplier"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
                problems.append(f"`{name}` must be a finite number > 0; got {v!r}")
        if not (isinstance(self.delta, (int, float)) and 0 < self.delta < 1):
            problems.append(f"`delta` must be in (0, 1); got {self.delta!r}")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            problems.append(
                f"`grad_sample_mode` must be one of {list(GRAD_SAMPLE_MODES)}; "
                f"got {self.grad_sample_mode!r}"
            )
        if problems:
            raise InvalidParameterError("invalid DPSGDSettings: " + "; ".join(problems))


class _FixedBatchCount(Sampler[list[int]]):
    """``k`` contiguous batches over ``n`` rows. Only its length matters to Opacus,
    which replaces it by Poisson sampling at rate 1/k (k steps per epoch)."""

    def __init__(self, n: int, k: int) -> None:
        self.n, self.k = n, k

    def __len__(self) -> int:
        return self.k

    def __iter__(self) -> Iterator[list[int]]:
        for part in np.array_split(np.arange(self.n), self.k):
            yield [int(i) for i in part]


@dataclass(frozen=True)
class PrivateTrainResult:
    """What :func:`private_train` did: optimizer steps, last epoch's mean loss, and
    the ledger record of the training."""

    steps: int
    loss: float
    record: LedgerRecord


def private_train(
    model: torch.nn.Module,
    train: CTRDataset,
    config: TrainConfig,
    *,
    steps_per_epoch: int,
    dp: DPSGDSettings,
    round: int,
    device_id: str,
    mechanism: str,
    generator: torch.Generator | None,
) -> PrivateTrainResult:
    """Train ``model`` in place with DP-SGD over ``train``; return its ledger record.

    Poisson sampling at q = 1/``steps_per_epoch`` over every row of ``train``,
    per-example clipping to ``dp.max_grad_norm``, Gaussian noise z·C on the summed
    gradient, ``config.epochs × steps_per_epoch`` steps (Abadi et al., CCS 2016;
    Opacus). The record, ``SelfComposedEvent(PoissonSampledEvent(q,
    GaussianEvent(z)), steps)``, depends on ``steps_per_epoch``, the epochs and z only,
    never on ``len(train)``: callers fix ``steps_per_epoch`` from public sizes, so a
    training set that mixes private local rows with a data-dependent number of public
    matched rows costs a planned, known amount. Privacy unit: one row of ``train``
    (the caller accounts it for the device whose private rows are in it).

    Parameters
    ----------
    steps_per_epoch:
        k in [1, len(train)] (the expected batch ``len(train)/k`` must be >= 1).
    generator:
        Seeded generator for sampling and noise; ``None`` only with ``dp.secure_mode``.
    mechanism:
        Ledger mechanism name (the record's is ``f"{mechanism}/dp_sgd[{mode}]"``).
    """
    n = len(train)
    if not isinstance(steps_per_epoch, int) or not 1 <= steps_per_epoch <= n:
        raise InvalidParameterError(
            f"`steps_per_epoch` must be an int in [1, len(train) = {n}]; got {steps_per_epoch!r}"
        )
    x = torch.from_numpy(np.array(train.x, dtype=np.int64))
    y = torch.from_numpy(np.array(train.y, dtype=np.float32))
    loader: DataLoader[tuple[torch.Tensor, ...]] = DataLoader(
        TensorDataset(x, y), batch_sampler=_FixedBatchCount(n, steps_per_epoch)
    )
    optimizer = make_optimizer(model, config)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        pt = make_private_local_training(
            model,
            optimizer,
            loader,
            target_delta=dp.delta,
            max_grad_norm=dp.max_grad_norm,
            epochs=config.epochs,
            run_id=dp.run_id,
            round=round,
            device_id=device_id,
            noise_multiplier=dp.noise_multiplier,
            criterion=nn.BCEWithLogitsLoss(),
            grad_sample_mode=dp.grad_sample_mode,
            secure_mode=dp.secure_mode,
            generator=None if dp.secure_mode else generator,
            accountant=dp.accountant,
        )
        steps, last_loss = train_private_epochs(pt, config.epochs)
    record = dataclasses.replace(pt.record, mechanism=f"{mechanism}/{pt.record.mechanism}")
    return PrivateTrainResult(steps, last_loss, record)


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
