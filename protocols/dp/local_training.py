"""Example-level DP-SGD on a device: a thin wrapper over Opacus' ``PrivacyEngine``.

:func:`make_private_local_training` makes any ``torch.nn.Module`` / optimizer /
map-style ``DataLoader`` private with Poisson sampling (each example joins each
batch independently with probability q = 1 / len(data_loader)) and returns, next to
the private objects, the exact ledger record the training will spend:
``SelfComposedEvent(PoissonSampledEvent(q, GaussianEvent(z)), steps)`` with
``steps = epochs × len(private_loader)`` taken from the loader Opacus built.
Spend (or :meth:`~protocols.dp.ledger.PrivacyLedger.check`) the record *before*
training, so a device refuses to train rather than overspend; every optimizer
step the loop takes must be one of the accounted ``steps``.

Gradient-sample modes (``grad_sample_mode``):

* ``"hooks"`` (default), ``"functorch"``, ``"ew"`` — materialise per-example
  gradients; the returned ``criterion`` is the one passed in.
* ``"ghost"`` — ghost clipping (Li et al. 2022; Bu et al. 2023; Opacus >= 1.5):
  per-example gradient *norms* are computed without materialising per-example
  gradients, and the returned ``criterion`` is Opacus' ``DPLossFastGradientClipping``
  wrapper of the one passed in, whose ``loss.backward()`` runs the two backward
  passes. Training code must call the returned criterion, not its own.

Privacy unit: one training example of this device.

This is the torch side of :mod:`protocols.dp`: the only module of the package that
imports torch and Opacus at import time. ``protocols/dp/__init__.py`` does not
import it, so only torch-side code imports it, explicitly
(``from protocols.dp.local_training import make_private_local_training``).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader
from torch import nn
from torch.utils.data import DataLoader

from protocols.dp._validation import check_int, check_real
from protocols.dp.accountants import make_accountant
from protocols.dp.calibration import calibrate_noise_multiplier
from protocols.dp.events import GaussianEvent, PoissonSampledEvent, SelfComposedEvent
from protocols.dp.ledger import LedgerRecord
from protocols.errors import InvalidParameterError

__all__ = [
    "GRAD_SAMPLE_MODES",
    "PrivateTraining",
    "make_private_local_training",
    "train_private_epochs",
]

GRAD_SAMPLE_MODES: tuple[str, ...] = ("hooks", "functorch", "ew", "ghost")


@dataclass(frozen=True)
class PrivateTraining:
    """What :func:`make_private_local_training` returns.

    Attributes
    ----------
    module, optimizer, data_loader:
        The private objects to train with (Opacus' wrappers).
    criterion:
        The loss to call: Opacus' ghost-clipping wrapper in ``"ghost"`` mode,
        otherwise the criterion passed in (possibly ``None``).
    privacy_engine:
        The Opacus engine (its accountant tracks the steps actually taken).
    grad_sample_mode:
        The Opacus mode the module was wrapped in.
    noise_multiplier, sample_rate, steps:
        z, q and the number of steps the record accounts for.
    event:
        ``SelfComposedEvent(PoissonSampledEvent(q, GaussianEvent(z)), steps)``.
    record:
        The ledger record to spend before training.
    """

    module: nn.Module
    optimizer: torch.optim.Optimizer
    data_loader: DataLoader[Any]
    criterion: Callable[..., Any] | None
    privacy_engine: PrivacyEngine
    noise_multiplier: float
    sample_rate: float
    steps: int
    event: SelfComposedEvent
    record: LedgerRecord
    grad_sample_mode: str = "hooks"

    @property
    def records(self) -> tuple[LedgerRecord, ...]:
        """``(record,)``, ready for :meth:`~protocols.dp.ledger.PrivacyLedger.spend`."""
        return (self.record,)

    def steps_taken(self) -> int:
        """Optimizer steps taken so far, as counted by Opacus' accountant."""
        history = self.privacy_engine.accountant.history
        return int(sum(int(n) for _, _, n in history))


def make_private_local_training(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader[Any],
    *,
    target_delta: float,
    max_grad_norm: float,
    epochs: int,
    run_id: str,
    round: int,
    device_id: str,
    noise_multiplier: float | None = None,
    target_epsilon: float | None = None,
    criterion: Callable[..., Any] | None = None,
    grad_sample_mode: str = "hooks",
    secure_mode: bool = False,
    generator: torch.Generator | None = None,
    accountant: str = "prv",
) -> PrivateTraining:
    """Wrap a model, optimizer and loader for DP-SGD and return the record it will spend.

    Parameters
    ----------
    module, optimizer, data_loader:
        Any torch module, its optimizer, and a map-style loader over this device's data.
    target_delta:
        δ in (0, 1) the record is stated at (and calibration targets).
    max_grad_norm:
        Per-example clipping norm C in (0, inf).
    epochs:
        Passes over the data, >= 1.
    run_id, round, device_id:
        Written into the ledger record.
    noise_multiplier, target_epsilon:
        Exactly one: z directly, or a target ε that z is calibrated to with
        ``accountant`` (:func:`~protocols.dp.calibration.calibrate_noise_multiplier`).
    criterion:
        The loss; required for ``"ghost"`` (where it is wrapped).
    grad_sample_mode:
        One of :data:`GRAD_SAMPLE_MODES`.
    secure_mode:
        Use Opacus' secure mode (CSPRNG noise and sampling); needs ``torchcsprng``.
        ``generator`` must then be ``None``.
    generator:
        Seeded ``torch.Generator`` for noise and Poisson sampling; required unless
        ``secure_mode`` (the global torch RNG is never used).
    accountant:
        Accountant for calibration (``"prv"`` or ``"rdp"``).

    Raises
    ------
    InvalidParameterError
        On an invalid argument (all checked before the model is touched).
    ImportError
        ``secure_mode`` without ``torchcsprng`` installed.
    """
    delta = check_real(
        "target_delta", target_delta, low=0.0, high=1.0, low_open=True, high_open=True
    )
    clip = check_real("max_grad_norm", max_grad_norm, low=0.0, low_open=True)
    n_epochs = check_int("epochs", epochs, low=1)
    make_accountant(accountant)
    if (noise_multiplier is None) == (target_epsilon is None):
        raise InvalidParameterError(
            "exactly one of `noise_multiplier` and `target_epsilon` must be given; got "
            f"noise_multiplier={noise_multiplier!r}, target_epsilon={target_epsilon!r}"
        )
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise InvalidParameterError(
            f"`grad_sample_mode` must be one of {list(GRAD_SAMPLE_MODES)}; got {grad_sample_mode!r}"
        )
    if grad_sample_mode == "ghost" and criterion is None:
        raise InvalidParameterError("`criterion` is required when `grad_sample_mode` is 'ghost'")
    if secure_mode and generator is not None:
        raise InvalidParameterError(
            "`generator` must be None in `secure_mode` (a seeded generator is not secure)"
        )
    if not secure_mode and not isinstance(generator, torch.Generator):
        raise InvalidParameterError(
            f"`generator` must be a torch.Generator unless `secure_mode`; got {generator!r}"
        )
    if not isinstance(data_loader, DataLoader):
        raise InvalidParameterError(f"`data_loader` must be a DataLoader; got {data_loader!r}")
    if len(data_loader) < 1:
        raise InvalidParameterError("`data_loader` must have at least one batch")

    # Opacus' Poisson sampler draws from the loader's generator: give it ours, on a copy.
    loader = copy.copy(data_loader)
    if generator is not None:
        loader.generator = generator
    # Opacus sets q = 1/len(loader) and builds len(private loader) = int(1/q) batches.
    q = 1.0 / len(data_loader)
    steps_per_epoch = len(DPDataLoader.from_data_loader(loader, generator=generator))
    steps = n_epochs * steps_per_epoch

    if noise_multiplier is not None:
        z = check_real("noise_multiplier", noise_multiplier, low=0.0, low_open=True)
    else:
        eps = check_real("target_epsilon", target_epsilon, low=0.0, low_open=True)
        z = calibrate_noise_multiplier(
            target_epsilon=eps,
            target_delta=delta,
            sample_rate=q,
            steps=steps,
            accountant=accountant,
        )

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            engine = PrivacyEngine(accountant=accountant, secure_mode=secure_mode)
    except ImportError as exc:
        raise ImportError(
            "`secure_mode=True` needs Opacus' CSPRNG backend `torchcsprng`, which is not "
            "installed; install it or run with secure_mode=False and a seeded generator"
        ) from exc

    kwargs: dict[str, Any] = {
        "module": module,
        "optimizer": optimizer,
        "data_loader": loader,
        "noise_multiplier": z,
        "max_grad_norm": clip,
        "poisson_sampling": True,
        "grad_sample_mode": grad_sample_mode,
        "noise_generator": generator,
    }
    if criterion is not None:
        kwargs["criterion"] = criterion
    made = engine.make_private(**kwargs)
    if grad_sample_mode == "ghost":
        p_module, p_optimizer, p_criterion, p_loader = made
    else:
        p_module, p_optimizer, p_loader = made
        p_criterion = criterion

    actual_q = float(getattr(p_loader, "sample_rate", q))
    actual_steps = n_epochs * len(p_loader)
    if actual_q != q or actual_steps != steps:
        raise RuntimeError(
            f"Opacus built a loader with q={actual_q}, {len(p_loader)} steps/epoch; "
            f"expected q={q}, {steps_per_epoch}"
        )
    event = SelfComposedEvent(
        event=PoissonSampledEvent(sample_rate=q, event=GaussianEvent(noise_multiplier=z)),
        count=steps,
    )
    record = LedgerRecord(
        run_id=run_id,
        round=round,
        mechanism=f"dp_sgd[{grad_sample_mode}]",
        event=event,
        unit="example",
        devices=(device_id,),
        delta=delta,
        adjacency="add_remove",  # Poisson sampling of examples: add/remove one example
        noise_multiplier=z,
        sigma=z * clip,
        sensitivity=clip,
        sample_rate=q,
        steps=steps,
    )
    return PrivateTraining(
        module=p_module,
        optimizer=p_optimizer,
        data_loader=p_loader,
        criterion=p_criterion,
        privacy_engine=engine,
        noise_multiplier=z,
        sample_rate=q,
        steps=steps,
        event=event,
        record=record,
        grad_sample_mode=grad_sample_mode,
    )


def train_private_epochs(
    pt: PrivateTraining,
    epochs: int,
    *,
    after_step: Callable[[], None] | None = None,
) -> tuple[int, float]:
    """Run the ``epochs`` of DP-SGD that ``pt`` accounts for; returns (steps, last loss).

    Every batch of ``pt.data_loader`` is one optimizer step, including an empty
    Poisson batch: that is a noise-only step. Ghost clipping cannot run backward on
    zero rows, so there its clipped gradient sum (zero) is set directly and the
    optimizer adds the noise; the per-sample modes handle empty batches themselves. ``after_step`` runs after each step (e.g. a
    data-independent proximal step). Raises ``RuntimeError`` if the steps taken
    differ from ``pt.steps``, the steps the ledger record accounts for.
    """
    criterion = pt.criterion
    if criterion is None:
        raise InvalidParameterError("train_private_epochs() needs a criterion")
    params = [p for p in pt.module.parameters() if p.requires_grad]
    pt.module.train()
    steps = 0
    last_loss = float("nan")
    for _ in range(epochs):
        total, count = 0.0, 0
        for xb, yb in pt.data_loader:
            pt.optimizer.zero_grad(set_to_none=True)
            if len(yb) == 0 and pt.grad_sample_mode == "ghost":
                for p in params:
                    p.grad = torch.zeros_like(p)
            else:
                loss = criterion(pt.module(xb), yb)
                loss.backward()
                if len(yb):
                    total += float(loss.item()) * len(yb)
                    count += len(yb)
            pt.optimizer.step()
            if after_step is not None:
                after_step()
            steps += 1
        if count:
            last_loss = total / count
    pt.optimizer.zero_grad(set_to_none=True)
    close = getattr(pt.module, "_close", None)
    if callable(close):
        close()
    if steps != pt.steps:
        raise RuntimeError(
            f"DP-SGD took {steps} steps but its ledger record accounts for {pt.steps}"
        )
    return steps, last_loss
