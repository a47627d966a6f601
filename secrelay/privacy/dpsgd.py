"""Example-level DP-SGD on the device: a :class:`LocalTrainer` over Opacus.

:class:`DPSGDTrainer` is a drop-in replacement for
:class:`~secrelay.federated.client.PlainTrainer` wherever a
:class:`~secrelay.federated.client.LocalTrainer` is used (FedAvg / FedProx local
steps, personalised fine-tuning). Each round it makes the device's model private
with :func:`protocols.dp.local_training.make_private_local_training` (Abadi et al., CCS 2016:
Poisson sampling at rate q = 1 / ⌈n / batch_size⌉, per-example clipping to
``max_grad_norm``, Gaussian noise of standard deviation ``noise_multiplier ·
max_grad_norm`` on the summed gradient) and returns, through
:meth:`train_round`, the ledger record of the round:
``SelfComposedEvent(PoissonSampledEvent(q, GaussianEvent(z)), steps)`` with
``steps = epochs × len(private loader)``, exactly the steps it takes.

Privacy unit: one training example of this device. A device's example-level ε
composes the records of the rounds it trained in (``ledger.epsilon(device=...)``).

Noise. Either a fixed ``noise_multiplier`` z, or a ``target_epsilon``: z is then
calibrated *per device* (q and the steps depend on the device's data size) so that
``participations`` rounds of local training spend at most ``target_epsilon`` at
``target_delta`` under ``accountant``. Calibration depends only on the data size
and public hyper-parameters; results are cached per process.

Gradient-sample modes. ``"ghost"`` (default) is ghost clipping (Li et al. 2022; Bu
et al. 2023): per-example gradient norms without per-example gradients, so the
embedding table (the bulk of a CTR model's parameters) costs one extra backward
pass instead of a ``batch × vocabulary × dim`` tensor; ``"hooks"`` materialises
per-example gradients; ``"sparse"`` is :class:`~secrelay.privacy.dp_embedding.
SparseEmbeddingDPSGD` (ghost norms, one backward pass, sparse table updates, deferred
noise for untouched rows): its step cost does not grow with the vocabulary. Its
tables take plain SGD steps at the local learning rate (the dense layers use the
configured optimizer), and its deferred noise is flushed when local training ends —
a data-independent time before the update leaves the device — so the released
update has DP-SGD's distribution exactly (the module docstring of
:mod:`secrelay.privacy.dp_embedding`). See ``docs/privacy.md`` for measured step times.

Randomness. Under ``randomness="secure"`` (default) the Poisson batch sampling and
the noise of every training come from a fresh ``torch.Generator`` (Mersenne Twister)
seeded with 63 bits of OS entropy (:func:`os_seeded_generator`), never from the task
seed, which derives from the published ``run.seed``: whoever knows the config cannot
regenerate them. It is not a cryptographic generator and its Gaussians are not
hardened against floating-point attacks; Opacus' ``secure_mode`` (CSPRNG, hardened
noise) needs ``torchcsprng``, which is not a dependency — ``secure_mode=True`` uses it
when it is installed. ``"reproducible"`` draws both from the generator the program
passes (seeded by the task), for bit-identical reruns.

FedProx. The proximal term μ/2‖w − w_ref‖² does not touch data, so it costs no
privacy; it is applied as the exact proximal step
``w ← (w + ημ w_ref) / (1 + ημ)`` after each private step (ghost clipping needs the
per-example loss alone, so the term cannot be added to the loss as the plain
trainer does; the two agree to first order in η).
"""

from __future__ import annotations

import dataclasses
import functools
import secrets
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from opacus.data_loader import DPDataLoader
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from protocols.dp import (
    GaussianEvent,
    LedgerRecord,
    PoissonSampledEvent,
    Randomness,
    SelfComposedEvent,
    calibrate_noise_multiplier,
    check_randomness,
    make_accountant,
)
from protocols.dp.local_training import (
    GRAD_SAMPLE_MODES,
    make_private_local_training,
    train_private_epochs,
)
from protocols.errors import InvalidParameterError
from secrelay.data.dataset import CTRDataset
from secrelay.federated.client import DeviceData, DeviceTask, LocalTrainer, TrainOutcome
from secrelay.models.base import CTRModel
from secrelay.privacy.dp_embedding import SparseEmbeddingDPSGD, dense_parameters
from secrelay.training import TrainConfig, make_optimizer

__all__ = ["TRAINER_MODES", "DPSGDTrainer", "os_seeded_generator"]

TRAINER_MODES = (*GRAD_SAMPLE_MODES, "sparse")
"""Opacus' grad-sample modes and ``"sparse"`` (:mod:`secrelay.privacy.dp_embedding`)."""


def os_seeded_generator() -> torch.Generator:
    """A ``torch.Generator`` seeded with 63 bits of OS entropy (:mod:`secrets`).

    What DP-SGD samples and noises with under secure randomness: unknown to anyone who
    knows ``run.seed``, but a Mersenne Twister, not a CSPRNG (module doc).
    """
    return torch.Generator().manual_seed(secrets.randbits(63))


@functools.lru_cache(maxsize=4096)
def _calibrated(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    return calibrate_noise_multiplier(
        target_epsilon=target_epsilon,
        target_delta=delta,
        sample_rate=sample_rate,
        steps=steps,
        accountant=accountant,
    )


def _tensors(data: CTRDataset, labels: np.ndarray | None = None) -> TensorDataset:
    x = torch.from_numpy(np.array(data.x, dtype=np.int64))
    y_np = data.y if labels is None else labels
    y = torch.from_numpy(np.array(y_np, dtype=np.float32))
    if y.shape != (len(data),):
        raise InvalidParameterError(
            f"`labels` must have shape ({len(data)},); got {tuple(y.shape)}"
        )
    return TensorDataset(x, y)


@dataclass(frozen=True, kw_only=True)
class DPSGDTrainer(LocalTrainer):
    """Local training with example-level DP-SGD (Opacus, Poisson sampling).

    Parameters
    ----------
    config:
        Epochs, batch size (the *expected* batch under Poisson sampling), learning
        rate, optimizer, weight decay and the FedProx μ, as for the plain trainer.
    max_grad_norm:
        Per-example clipping norm C, in (0, inf).
    target_delta:
        δ in (0, 1) the records are stated at (and calibration targets).
    noise_multiplier:
        z in (0, inf); exactly one of ``noise_multiplier`` and ``target_epsilon``.
    target_epsilon:
        Example-level ε in (0, inf) a device may spend over ``participations``
        rounds; z is calibrated per device.
    participations:
        Rounds of local training the ``target_epsilon`` covers, >= 1.
    grad_sample_mode:
        ``"ghost"`` (default), ``"hooks"``, ``"functorch"`` or ``"ew"``.
    accountant:
        ``"prv"`` (default) or ``"rdp"``: calibration and Opacus' own accountant.
    run_id:
        Written into the ledger records.
    randomness:
        ``"secure"`` (default): sampling and noise from :func:`os_seeded_generator`,
        ignoring the program's seeded generator; ``"reproducible"``: from it.
    secure_mode:
        Opacus secure mode (CSPRNG noise and sampling; needs ``torchcsprng``).

    Examples
    --------
    >>> from secrelay.training import TrainConfig
    >>> t = DPSGDTrainer(config=TrainConfig(epochs=2, batch_size=8), max_grad_norm=1.0,
    ...                  target_delta=1e-5, noise_multiplier=1.1)
    >>> t.with_prox_mu(0.01).prox_mu
    0.01
    """

    config: TrainConfig = field(default_factory=TrainConfig)
    max_grad_norm: float
    target_delta: float
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    participations: int = 1
    grad_sample_mode: str = "ghost"
    accountant: str = "prv"
    run_id: str = "run"
    randomness: Randomness = "secure"
    secure_mode: bool = False

    def __post_init__(self) -> None:
        problems: list[str] = []
        try:
            check_randomness(self.randomness)
        except InvalidParameterError as e:
            problems.append(str(e))

        def positive(name: str, value: object) -> None:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (ok and np.isfinite(float(value)) and float(value) > 0):  # type: ignore[arg-type]
                problems.append(f"`{name}` must be a finite number > 0; got {value!r}")

        positive("max_grad_norm", self.max_grad_norm)
        if not (isinstance(self.target_delta, (int, float)) and 0 < float(self.target_delta) < 1):
            problems.append(f"`target_delta` must be in (0, 1); got {self.target_delta!r}")
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            problems.append(
                "exactly one of `noise_multiplier` and `target_epsilon` must be given; got "
                f"noise_multiplier={self.noise_multiplier!r}, "
                f"target_epsilon={self.target_epsilon!r}"
            )
        if self.noise_multiplier is not None:
            positive("noise_multiplier", self.noise_multiplier)
        if self.target_epsilon is not None:
            positive("target_epsilon", self.target_epsilon)
        if not isinstance(self.participations, int) or self.participations < 1:
            problems.append(f"`participations` must be an int >= 1; got {self.participations!r}")
        if self.grad_sample_mode not in TRAINER_MODES:
            problems.append(
                f"`grad_sample_mode` must be one of {list(TRAINER_MODES)}; "
                f"got {self.grad_sample_mode!r}"
            )
        if self.config.epochs < 1:
            problems.append(f"`config.epochs` must be >= 1 for DP-SGD; got {self.config.epochs}")
        if not isinstance(self.run_id, str) or not self.run_id:
            problems.append(f"`run_id` must be a non-empty string; got {self.run_id!r}")
        try:
            make_accountant(self.accountant)
        except InvalidParameterError as e:
            problems.append(str(e))
        if problems:
            raise InvalidParameterError("invalid DPSGDTrainer: " + "; ".join(problems))

    # --- LocalTrainer ----------------------------------------------------------
    @property
    def prox_mu(self) -> float:
        return self.config.prox_mu

    def with_prox_mu(self, mu: float) -> DPSGDTrainer:
        """A copy with the FedProx μ set (used by :class:`~secrelay.federated.strategies.FedProx`)."""
        return dataclasses.replace(self, config=dataclasses.replace(self.config, prox_mu=mu))

    def train(
        self,
        model: CTRModel,
        data: DeviceData,
        *,
        generator: torch.Generator,
        reference: list[torch.Tensor] | None,
    ) -> tuple[int, float]:
        """Refused: DP-SGD must run through :meth:`train_round`, which returns the
        ledger record; training here would spend privacy off the books."""
        raise InvalidParameterError(
            "DPSGDTrainer spends privacy and must be driven through train_round(..., task=...), "
            "which returns its ledger record; call train_round instead of train"
        )

    # --- accounting --------------------------------------------------------------
    def _loader(self, data: DeviceData, labels: np.ndarray | None = None) -> DataLoader[Any]:
        if data.num_train < 1:
            raise InvalidParameterError(f"device {data.device_id} has no training rows")
        return DataLoader(_tensors(data.train, labels), batch_size=self.config.batch_size)

    def _shape(self, loader: DataLoader[Any]) -> tuple[float, int]:
        """(q, steps) exactly as :func:`make_private_local_training` computes them."""
        q = 1.0 / len(loader)
        per_epoch = len(DPDataLoader.from_data_loader(loader, generator=torch.Generator()))
        return q, self.config.epochs * per_epoch

    def noise_multiplier_for(self, data: DeviceData) -> float:
        """z this device uses: the fixed one, or the one calibrated to ``target_epsilon``."""
        if self.noise_multiplier is not None:
            return float(self.noise_multiplier)
        assert self.target_epsilon is not None
        q, steps = self._shape(self._loader(data))
        return _calibrated(
            float(self.target_epsilon),
            float(self.target_delta),
            q,
            steps * self.participations,
            self.accountant,
        )

    def planned_record(self, data: DeviceData, *, round: int) -> LedgerRecord:
        """The record :meth:`train_round` will spend for ``data`` in ``round``, without
        training (a dry run for budget checks). Depends only on the data size and
        public hyper-parameters."""
        q, steps = self._shape(self._loader(data))
        z = self.noise_multiplier_for(data)
        c = float(self.max_grad_norm)
        return LedgerRecord(
            run_id=self.run_id,
            round=round,
            mechanism=f"dp_sgd[{self.grad_sample_mode}]",
            event=SelfComposedEvent(
                event=PoissonSampledEvent(sample_rate=q, event=GaussianEvent(noise_multiplier=z)),
                count=steps,
            ),
            unit="example",
            devices=(str(data.device_id),),
            delta=float(self.target_delta),
            adjacency="add_remove",
            noise_multiplier=z,
            sigma=z * c,
            sensitivity=c,
            sample_rate=q,
            steps=steps,
        )

    # --- training ------------------------------------------------------------------
    def _generator(self, given: torch.Generator | None) -> torch.Generator | None:
        """What DP-SGD samples and noises with: ``given`` (the task's seeded generator)
        under reproducible randomness, a fresh OS-seeded one under secure randomness."""
        return given if self.randomness == "reproducible" else os_seeded_generator()

    def train_round(
        self,
        model: CTRModel,
        data: DeviceData,
        *,
        generator: torch.Generator,
        reference: list[torch.Tensor] | None,
        task: DeviceTask,
        labels: np.ndarray | None = None,
    ) -> TrainOutcome:
        """Train ``model`` in place with DP-SGD; return steps, loss and the ledger record.

        ``labels`` replaces the train rows' labels (LCFT's soft labels; linear-in-target
        BCE, so any real label works); the record does not depend on them.
        """
        mu = self.config.prox_mu
        if mu > 0 and reference is None:
            raise InvalidParameterError("`reference` weights are required when prox_mu > 0")
        loader = self._loader(data, labels)
        z = self.noise_multiplier_for(data)
        model.train()  # Opacus validates a module in training mode (callers may have evaluated)
        if self.grad_sample_mode == "sparse":
            return self._train_sparse(model, data, loader, z, generator, reference, task)
        return self.train_private(
            model,
            loader,
            noise_multiplier=z,
            round=task.round,
            device_id=str(data.device_id),
            generator=generator,
            reference=reference,
        )

    def train_private(
        self,
        model: nn.Module,
        loader: DataLoader[Any],
        *,
        noise_multiplier: float,
        round: int,
        device_id: str,
        generator: torch.Generator | None,
        reference: list[torch.Tensor] | None = None,
    ) -> TrainOutcome:
        """The one DP-SGD training path over Opacus (every ``grad_sample_mode`` but
        ``"sparse"``): Poisson sampling over ``loader``'s batches, per-example clipping,
        noise ``noise_multiplier``·C, ``config.epochs`` epochs, FedProx's proximal step
        after each step when ``prox_mu > 0``. Returns steps, loss and the ledger record.

        :meth:`train_round` calls it with a device's rows; CoDA calls it with loaders
        whose steps per epoch are fixed from public sizes.
        """
        mu = self.config.prox_mu
        optimizer = make_optimizer(model, self.config)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning)
            pt = make_private_local_training(
                model,
                optimizer,
                loader,
                target_delta=float(self.target_delta),
                max_grad_norm=float(self.max_grad_norm),
                epochs=self.config.epochs,
                run_id=self.run_id,
                round=round,
                device_id=device_id,
                noise_multiplier=noise_multiplier,
                criterion=nn.BCEWithLogitsLoss(),
                grad_sample_mode=self.grad_sample_mode,
                secure_mode=self.secure_mode,
                generator=None if self.secure_mode else self._generator(generator),
                accountant=self.accountant,
            )
            params = list(model.parameters())
            shrink = 1.0 / (1.0 + self.config.lr * mu)

            def proximal() -> None:
                if mu > 0 and reference is not None:
                    with torch.no_grad():
                        for p, r in zip(params, reference):
                            p.mul_(shrink).add_(r, alpha=1.0 - shrink)

            steps, last_loss = train_private_epochs(pt, self.config.epochs, after_step=proximal)
        return TrainOutcome(steps, last_loss, pt.records)

    def _train_sparse(
        self,
        model: CTRModel,
        data: DeviceData,
        loader: DataLoader[Any],
        z: float,
        generator: torch.Generator,
        reference: list[torch.Tensor] | None,
        task: DeviceTask,
    ) -> TrainOutcome:
        """DP-SGD with :class:`SparseEmbeddingDPSGD` (``grad_sample_mode="sparse"``):
        the same sampling, clipping, noise and record as the Opacus path."""
        record = self.planned_record(data, round=task.round)
        assert record.sample_rate is not None and record.steps is not None
        generator = self._generator(generator) or generator
        private_loader = DPDataLoader.from_data_loader(loader, generator=generator)
        dense = dense_parameters(model)
        optimizer = make_optimizer(_Holder(dense), self.config) if dense else None
        expected = max(1, int(len(loader.dataset) * record.sample_rate))  # type: ignore[arg-type]
        dp = SparseEmbeddingDPSGD(
            model,
            optimizer,
            loss_fn=lambda out, y: nn.functional.binary_cross_entropy_with_logits(
                out, y, reduction="none"
            ),
            embedding_lr=self.config.lr,
            noise_multiplier=z,
            max_grad_norm=float(self.max_grad_norm),
            expected_batch_size=expected,
            generator=generator,
            noise="lazy",
        )
        mu = self.config.prox_mu
        params = list(model.parameters())
        shrink = 1.0 / (1.0 + self.config.lr * mu)
        steps = 0
        last_loss = float("nan")
        try:
            for _ in range(self.config.epochs):
                total, count = 0.0, 0
                for xb, yb in private_loader:
                    loss = dp.step(xb, yb)
                    if mu > 0 and reference is not None:
                        dp.flush()  # the proximal step reads every row
                        with torch.no_grad():
                            for p, r in zip(params, reference):
                                p.mul_(shrink).add_(r, alpha=1.0 - shrink)
                    steps += 1
                    if len(yb):
                        total += float(loss) * len(yb)
                        count += len(yb)
                if count:
                    last_loss = total / count
        finally:
            dp.close()  # flushes the deferred noise before anything leaves the device
        if steps != record.steps:
            raise RuntimeError(
                f"DP-SGD took {steps} steps but its ledger record accounts for {record.steps}"
            )
        return TrainOutcome(steps, last_loss, (record,))


class _Holder(nn.Module):
    """Lets :func:`make_optimizer` build the configured optimizer over a parameter list."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        super().__init__()
        self.held = nn.ParameterList(params)
