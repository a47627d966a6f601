"""The :class:`Strategy` interface and the contribution rules strategies are built from.

A strategy states what each device contributes as named arrays (a
:class:`~secrelay.federated.client.ContributionRule`) and updates its models from
the *sums* of those contributions (:meth:`Strategy.apply`), so any
:class:`~secrelay.federated.aggregation.SumProtocol` can deliver them. The rules
here are the ones the built-in strategies use: :class:`WeightedDeltaRule` (FedAvg
family), :class:`NovaRule` (FedNova) and :class:`SlotRule` (cluster-keyed).

This module is the bottom of the strategy modules: the families
(:mod:`secrelay.federated.fedavg_family`, :mod:`secrelay.federated.clustered`)
import it, and :mod:`secrelay.federated.strategies` — the import path for every
public name, with the registry — imports them all.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from protocols.errors import InvalidParameterError
from secrelay.federated.aggregation import SumResult
from secrelay.federated.client import (
    ClientProgram,
    ContributionRule,
    DeviceTask,
    FixedKey,
    KeySelector,
    LocalResult,
    LocalTrainer,
    LocalTrainingProgram,
    ModelSpec,
    UpdateTransform,
)
from secrelay.federated.release import ReleaseSpec

__all__ = ["NovaRule", "SlotRule", "Strategy", "WeightedDeltaRule", "Weighting"]


Weighting = Literal["samples", "uniform"]


def _weight(result: LocalResult, weighting: Weighting) -> float:
    return float(result.num_samples) if weighting == "samples" else 1.0


@dataclass(frozen=True)
class WeightedDeltaRule(ContributionRule):
    """``delta`` = w_k·Δ_k and ``weight`` = [w_k]."""

    weighting: Weighting = "samples"

    def contribute(self, result: LocalResult, task: DeviceTask) -> dict[str, np.ndarray]:
        w = _weight(result, self.weighting)
        return {
            "delta": (w * result.delta.astype(np.float64)),
            "weight": np.array([w]),
        }


@dataclass(frozen=True)
class NovaRule(ContributionRule):
    """FedNova: normalised update n_k·Δ_k/a_k, ``tau`` = n_k·a_k and ``weight`` = n_k.

    a_k is the number of local SGD steps (the normalising factor of vanilla SGD).
    """

    weighting: Weighting = "samples"

    def contribute(self, result: LocalResult, task: DeviceTask) -> dict[str, np.ndarray]:
        w = _weight(result, self.weighting)
        a = max(result.steps, 1)
        return {
            "delta": w * result.delta.astype(np.float64) / a,
            "tau": np.array([w * a]),
            "weight": np.array([w]),
        }


@dataclass(frozen=True)
class SlotRule(ContributionRule):
    """Cluster-keyed contribution: the weighted update in the slot of the device's
    key, zeros in every other slot (so a secure sum hides which key it chose).

    Contributes ``delta`` of shape (K, d), ``weight`` (K,) and ``count`` (K,).
    """

    keys: tuple[str, ...]
    weighting: Weighting = "samples"

    def contribute(self, result: LocalResult, task: DeviceTask) -> dict[str, np.ndarray]:
        if result.key not in self.keys:
            raise InvalidParameterError(f"key {result.key!r} is not one of {self.keys}")
        k = self.keys.index(result.key)
        w = _weight(result, self.weighting)
        delta = np.zeros((len(self.keys), result.delta.size), dtype=np.float64)
        delta[k] = w * result.delta
        weight = np.zeros(len(self.keys))
        weight[k] = w
        count = np.zeros(len(self.keys))
        count[k] = 1.0
        return {"delta": delta, "weight": weight, "count": count}


class Strategy(abc.ABC):
    """A server-side aggregation strategy over one or more named models.

    Subclasses implement :meth:`contribution_rule` (what devices send) and
    :meth:`apply` (how the sums update the models). State that must survive a
    restart goes through :meth:`state_dict` / :meth:`load_state_dict`.
    """

    name: ClassVar[str] = "strategy"
    personalized: ClassVar[bool] = False

    def __init__(self) -> None:
        self.models: dict[str, np.ndarray] = {}

    # --- set-up -------------------------------------------------------------
    def initialize(self, models: Mapping[str, np.ndarray]) -> None:
        """Set the starting models (e.g. ``{"global": cloud_model_vector}``)."""
        if not models:
            raise InvalidParameterError("initialize() needs at least one model")
        self.models = {k: np.asarray(v, dtype=np.float32).copy() for k, v in models.items()}

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.models)

    # --- device side ----------------------------------------------------------
    @abc.abstractmethod
    def contribution_rule(self) -> ContributionRule:
        """The device-side rule producing this strategy's contributions."""

    def trainer(self, trainer: LocalTrainer) -> LocalTrainer:
        """Adapt the local trainer (FedProx sets μ); identity by default."""
        return trainer

    def client_program(
        self,
        model: ModelSpec,
        trainer: LocalTrainer,
        *,
        selector: KeySelector | None = None,
        transforms: Sequence[UpdateTransform] = (),
    ) -> ClientProgram:
        """The program devices run each round."""
        return LocalTrainingProgram(
            model=model,
            trainer=self.trainer(trainer),
            rule=self.contribution_rule(),
            selector=selector if selector is not None else FixedKey(self.keys[0]),
            transforms=tuple(transforms),
        )

    # --- server side ----------------------------------------------------------
    def download(self, round: int) -> dict[str, np.ndarray]:
        """The models every sampled device downloads this round (all keys)."""
        out = {}
        for k, v in self.models.items():
            v.setflags(write=False)
            out[k] = v
        return out

    def aggregate(self, round: int, result: SumResult) -> dict[str, float]:
        """Update the models from the round's sums; returns server-side statistics.

        A round nobody survived changes nothing, unless a DP sum released noise alone
        (``result.noise_only``), which is applied like any release."""
        if not result.survivors and not result.noise_only:
            return {"survivors": 0.0}
        stats = self.apply(round, result.sums)
        return {"survivors": float(len(result.survivors)), **stats}

    @abc.abstractmethod
    def apply(self, round: int, sums: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Apply the sums to :attr:`models`."""

    # --- user-level differential privacy ----------------------------------------
    def release_spec(self, clipping_norm: float) -> ReleaseSpec | None:
        """How this strategy's sums may be released under user-level DP with the
        device update clipped to ``clipping_norm`` (:mod:`secrelay.federated.release`);
        ``None`` when they cannot be as configured (the default)."""
        return None

    def set_release_noise(self, noise_std: Mapping[str, float]) -> None:
        """Told by a user-level DP wrapper the per-coordinate noise standard deviation
        of each released sum (post-processing may use it, e.g. to ignore a noisy
        count too small to divide by); no-op by default."""

    def _set(self, key: str, value: np.ndarray) -> None:
        self.models[key] = np.asarray(value, dtype=np.float32)

    # --- persistence ----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"models": {k: v.copy() for k, v in self.models.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.models = {
            k: np.asarray(v, dtype=np.float32).copy() for k, v in state["models"].items()
        }


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
        raise InvalidParameterError(f"`{name}` must be a finite number > 0; got {value!r}")


def _check_unit(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0 <= value < 1):
        raise InvalidParameterError(f"`{name}` must be in [0, 1); got {value!r}")
