"""CoDA's two ways of fine-tuning on a device: gated and DP-SGD training.

- :func:`gated_train` — Algorithm 3: train the CTR model on local + kept
  samples, accepting a mini-batch update only if the validation AUC on
  held-out local samples improves (ties broken by validation logloss).
- :func:`private_train` — example-level DP-SGD (Opacus, through
  :func:`protocols.dp.local_training.make_private_local_training`) over a mix of
  private local rows and public matched rows, with a number of steps per epoch
  fixed in advance from public sizes, so that the ledger record never depends on
  how many matched rows the device received or kept (``docs/coda.md``,
  *Differential privacy*).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

from protocols.dp import LedgerRecord, Randomness
from protocols.dp.local_training import (
    GRAD_SAMPLE_MODES,
)
from protocols.errors import InvalidParameterError
from secrelay.data.dataset import CTRDataset
from secrelay.metrics import auc, logloss
from secrelay.privacy.dpsgd import DPSGDTrainer
from secrelay.training import (
    TrainConfig,
    iterate_batches,
    make_optimizer,
    predict,
    soft_bce_with_logits,
)

__all__ = [
    "DPSGDSettings",
    "GatedTrainResult",
    "PrivateTrainResult",
    "gated_train",
    "private_train",
]


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
    randomness:
        ``"secure"`` (default): DP-SGD samples and noises from OS entropy, ignoring the
        seeded generator it is given; ``"reproducible"``: from that generator
        (:class:`~secrelay.privacy.dpsgd.DPSGDTrainer`).
    secure_mode:
        Opacus secure mode (CSPRNG noise and sampling; needs ``torchcsprng``).
    """

    max_grad_norm: float
    noise_multiplier: float
    delta: float
    grad_sample_mode: str = "ghost"
    accountant: str = "prv"
    run_id: str = "run"
    randomness: Randomness = "secure"
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
    trainer = DPSGDTrainer(
        config=config,
        max_grad_norm=dp.max_grad_norm,
        target_delta=dp.delta,
        noise_multiplier=dp.noise_multiplier,
        grad_sample_mode=dp.grad_sample_mode,
        accountant=dp.accountant,
        run_id=dp.run_id,
        randomness=dp.randomness,
        secure_mode=dp.secure_mode,
    )
    out = trainer.train_private(
        model,
        loader,
        noise_multiplier=dp.noise_multiplier,
        round=round,
        device_id=device_id,
        generator=generator,
    )
    (record,) = out.privacy_records
    record = dataclasses.replace(record, mechanism=f"{mechanism}/{record.mechanism}")
    return PrivateTrainResult(out.steps, out.loss, record)
