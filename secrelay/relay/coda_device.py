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
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

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
    "GatedTrainResult",
    "ModelStore",
    "SampleTable",
    "filter_matched",
    "gated_train",
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
    if not 0 <= sigma <= 1:
        raise InvalidParameterError(f"`sigma` must be in [0, 1]; got {sigma!r}")
    if not 0 < train_fraction <= 1:
        raise InvalidParameterError(f"`train_fraction` must be in (0, 1]; got {train_fraction!r}")
    if len(matched) == 0:
        return np.zeros(0, dtype=bool), np.zeros(0)
    cfg = config or TrainConfig(epochs=5, batch_size=32, lr=0.01, optimizer="adam")
    rng = np.random.default_rng(seed)
    n_neg = max(1, round(train_fraction * len(matched)))
    neg = rng.choice(len(matched), size=n_neg, replace=False)
    x = np.concatenate([local.x, matched.x[neg]])
    x = _mask_user_fields(x, local)
    y = np.concatenate([np.ones(len(local)), np.zeros(n_neg)]).astype(np.float32)
    train = CTRDataset(local.schema, x, y, np.zeros(len(y), np.int64), np.zeros(len(y), np.int64))
    model = make_model("lr", local.schema, embedding_dim=embedding_dim, seed=seed)
    train_epochs(model, train, cfg, generator=torch.Generator().manual_seed(seed))
    scored = matched.with_x(_mask_user_fields(matched.x, matched))
    scores = predict(model, scored)
    return scores >= sigma, scores


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
