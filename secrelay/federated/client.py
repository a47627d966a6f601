"""Device-side programs: what runs *on* a device in a federated round.

A device holds its own data (:class:`DeviceData`) and private state that never
leaves it. In each round it receives a :class:`DeviceTask` (the downloaded models
and a seed), runs a :class:`ClientProgram`, and returns a :class:`DeviceOutput`
whose ``contribution`` is the only thing that will cross to the server (through a
:class:`~secrelay.federated.aggregation.SumProtocol`).

Programs are small frozen dataclasses, so an executor can ship them to worker
processes (or, later, Ray actors) cheaply. They are composed of parts that privacy
layers replace or extend without rewriting the methods: a :class:`KeySelector`
(which downloaded model to start from), a :class:`LocalTrainer` (plain SGD/Adam, or
DP-SGD), update transforms (e.g. clipping) and a :class:`ContributionRule` (which
sums the strategy needs).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from protocols.dp.ledger import LedgerRecord
from protocols.errors import InvalidParameterError
from secrelay.data.dataset import CTRDataset
from secrelay.data.schema import Schema
from secrelay.models.base import CTRModel, make_model
from secrelay.models.utils import flatten_parameters
from secrelay.models.utils import load_flat_parameters as _load_flat
from secrelay.training import TrainConfig, predict, train_epochs

__all__ = [
    "ClientProgram",
    "ContributionRule",
    "DeviceData",
    "DeviceOutput",
    "DeviceTask",
    "FixedKey",
    "KeySelector",
    "LocalResult",
    "LocalTrainer",
    "LocalTrainingProgram",
    "ModelSpec",
    "PersonalizedProgram",
    "PlainTrainer",
    "PrivateKey",
    "TrainOutcome",
    "UpdateTransform",
    "flat_parameters",
    "load_flat_parameters",
    "single_thread",
]


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block.

    Local training is tiny per device; one thread makes results bit-identical
    between sequential and parallel execution and avoids oversubscription.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def flat_parameters(model: torch.nn.Module) -> np.ndarray:
    """All floating parameters as one float32 numpy vector (the layout of
    :func:`secrelay.models.utils.flatten_parameters`)."""
    return flatten_parameters(model).detach().numpy().astype(np.float32, copy=True)


def load_flat_parameters(model: torch.nn.Module, vector: np.ndarray) -> None:
    """Inverse of :func:`flat_parameters`; validates length and finiteness first."""
    _load_flat(model, np.array(vector, dtype=np.float32, copy=True))


@dataclass(frozen=True)
class ModelSpec:
    """How to build a device model: registry name, schema and keyword arguments."""

    name: str
    schema: Schema
    kwargs: tuple[tuple[str, Any], ...] = ()

    def build(self) -> CTRModel:
        return make_model(self.name, self.schema, **dict(self.kwargs))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.build().parameters())


@dataclass(frozen=True, eq=False)
class DeviceData:
    """A device's own data: train and test splits plus named extra splits."""

    device_id: int
    train: CTRDataset
    test: CTRDataset
    extra: Mapping[str, CTRDataset] = field(default_factory=dict)

    @property
    def num_train(self) -> int:
        return len(self.train)


@dataclass(frozen=True)
class DeviceTask:
    """What the device receives for one round (public) plus its private state.

    ``models`` and ``config`` are the downloaded (public) content; ``private`` is
    the device's own state from earlier rounds (never seen by the server); ``seed``
    drives every random choice the device makes this round.
    """

    device_id: int
    round: int
    models: Mapping[str, np.ndarray]
    seed: int
    config: Mapping[str, float] = field(default_factory=dict)
    private: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeviceOutput:
    """A device's result for one round.

    Attributes
    ----------
    contribution:
        Named arrays for the round's sums; the only part sent to the server.
    private:
        Updated device-private state (stays on the device).
    stats:
        Simulation bookkeeping for the experimenter (loss, steps); never sent.
    privacy_records:
        Ledger records of the DP mechanisms the device ran this round (e.g.
        example-level DP-SGD); the loop collects them for the run's privacy
        ledger. They describe the mechanism (noise, sampling rate, steps), not
        the data.
    """

    contribution: dict[str, np.ndarray]
    private: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    privacy_records: tuple[LedgerRecord, ...] = ()


@dataclass(frozen=True)
class LocalResult:
    """The outcome of local training on a device (device-side only)."""

    key: str
    start: np.ndarray
    delta: np.ndarray
    num_samples: int
    steps: int
    loss: float
    privacy_records: tuple[LedgerRecord, ...] = ()


@dataclass(frozen=True)
class TrainOutcome:
    """What :meth:`LocalTrainer.train_round` returns: steps, loss and the ledger
    records of any DP mechanism the training ran (empty for non-private trainers)."""

    steps: int
    loss: float
    privacy_records: tuple[LedgerRecord, ...] = ()


class KeySelector(abc.ABC):
    """Chooses, on the device, which downloaded model to start from."""

    @abc.abstractmethod
    def select(self, data: DeviceData, task: DeviceTask) -> str: ...


@dataclass(frozen=True)
class FixedKey(KeySelector):
    """Always the model ``key`` (``"global"`` for single-model strategies)."""

    key: str = "global"

    def select(self, data: DeviceData, task: DeviceTask) -> str:
        if self.key not in task.models:
            raise InvalidParameterError(
                f"model key {self.key!r} was not downloaded; got {sorted(task.models)}"
            )
        return self.key


@dataclass(frozen=True)
class PrivateKey(KeySelector):
    """The key stored in the device's private state under ``state_name``
    (e.g. a cluster chosen once by RelayRec's selector)."""

    state_name: str = "model_key"

    def select(self, data: DeviceData, task: DeviceTask) -> str:
        if self.state_name not in task.private:
            raise InvalidParameterError(
                f"device {task.device_id} has no private {self.state_name!r} to select a model"
            )
        key = str(task.private[self.state_name])
        if key not in task.models:
            raise InvalidParameterError(
                f"device {task.device_id} selected {key!r}, which was not downloaded"
            )
        return key


class LocalTrainer(abc.ABC):
    """Trains a model on the device's train split; returns the number of steps and loss."""

    @abc.abstractmethod
    def train(
        self,
        model: CTRModel,
        data: DeviceData,
        *,
        generator: torch.Generator,
        reference: list[torch.Tensor] | None,
    ) -> tuple[int, float]: ...

    @property
    @abc.abstractmethod
    def prox_mu(self) -> float: ...

    def train_round(
        self,
        model: CTRModel,
        data: DeviceData,
        *,
        generator: torch.Generator,
        reference: list[torch.Tensor] | None,
        task: DeviceTask,
    ) -> TrainOutcome:
        """Train for the round of ``task``; what :class:`LocalTrainingProgram` calls.

        Trainers that spend privacy (DP-SGD) override this to return the ledger
        records of the round; the default runs :meth:`train` and spends nothing.
        """
        steps, loss = self.train(model, data, generator=generator, reference=reference)
        return TrainOutcome(int(steps), float(loss))


@dataclass(frozen=True)
class PlainTrainer(LocalTrainer):
    """Non-private local training with :func:`secrelay.training.train_epochs`."""

    config: TrainConfig = field(default_factory=TrainConfig)

    @property
    def prox_mu(self) -> float:
        return self.config.prox_mu

    def train(
        self,
        model: CTRModel,
        data: DeviceData,
        *,
        generator: torch.Generator,
        reference: list[torch.Tensor] | None,
    ) -> tuple[int, float]:
        out = train_epochs(model, data.train, self.config, generator=generator, reference=reference)
        return int(out["steps"]), float(out["loss"])


class UpdateTransform(abc.ABC):
    """Transforms a model update on the device before it is contributed (e.g. clipping)."""

    @abc.abstractmethod
    def apply(self, delta: np.ndarray, *, rng: np.random.Generator) -> np.ndarray: ...


class ContributionRule(abc.ABC):
    """Which named arrays a device contributes to the round's sums."""

    @abc.abstractmethod
    def contribute(self, result: LocalResult, task: DeviceTask) -> dict[str, np.ndarray]: ...


class ClientProgram(abc.ABC):
    """Everything a device does in one round."""

    @abc.abstractmethod
    def run(self, data: DeviceData, task: DeviceTask) -> DeviceOutput: ...


@dataclass(frozen=True)
class LocalTrainingProgram(ClientProgram):
    """Select a start model, train locally, transform the update, contribute.

    The FedProx term (if the trainer's μ > 0) pulls towards the selected start
    model. Each round's randomness comes from ``task.seed`` only.
    """

    model: ModelSpec
    trainer: LocalTrainer
    rule: ContributionRule
    selector: KeySelector = field(default_factory=FixedKey)
    transforms: tuple[UpdateTransform, ...] = ()

    def local_update(self, data: DeviceData, task: DeviceTask) -> LocalResult:
        key = self.selector.select(data, task)
        start = np.asarray(task.models[key], dtype=np.float32)
        with single_thread():
            torch.manual_seed(task.seed)  # dropout layers etc. inside the model
            generator = torch.Generator().manual_seed(task.seed)
            model = self.model.build()
            load_flat_parameters(model, start)
            reference = None
            if self.trainer.prox_mu > 0:
                reference = [p.detach().clone() for p in model.parameters()]
            outcome = self.trainer.train_round(
                model, data, generator=generator, reference=reference, task=task
            )
            delta = flat_parameters(model) - start
        rng = np.random.default_rng(np.random.SeedSequence([task.seed, 1]))
        for t in self.transforms:
            delta = t.apply(delta, rng=rng)
        return LocalResult(
            key,
            start,
            delta.astype(np.float32),
            data.num_train,
            outcome.steps,
            outcome.loss,
            outcome.privacy_records,
        )

    def run(self, data: DeviceData, task: DeviceTask) -> DeviceOutput:
        result = self.local_update(data, task)
        contribution = self.rule.contribute(result, task)
        return DeviceOutput(
            contribution,
            private={"model_key": result.key},
            stats={"loss": result.loss, "steps": float(result.steps)},
            privacy_records=result.privacy_records,
        )


@dataclass(frozen=True)
class PersonalizedProgram(ClientProgram):
    """Local training that keeps the result on the device (Standalone, fine-tuning).

    The device evaluates its own fine-tuned model on its own test split; the
    predictions stay in its private state (the experimenter reads them to score the
    run). Nothing is contributed.
    """

    inner: LocalTrainingProgram

    def run(self, data: DeviceData, task: DeviceTask) -> DeviceOutput:
        result = self.inner.local_update(data, task)
        with single_thread():
            model = self.inner.model.build()
            load_flat_parameters(model, result.start + result.delta)
            preds = predict(model, data.test) if len(data.test) else np.zeros(0)
        return DeviceOutput(
            {},
            private={"model_key": result.key, "predictions": preds},
            stats={"loss": result.loss, "steps": float(result.steps)},
            privacy_records=result.privacy_records,
        )
