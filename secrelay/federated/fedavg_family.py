"""The FedAvg family: FedAvg, FedProx, FedAdagrad, FedAdam and FedNova.

Each keeps one model (``global``) and updates it from the weighted mean update
Σdelta/Σweight (FedNova: its normalised form), so all of them run under any
:class:`~secrelay.federated.aggregation.SumProtocol` and, with uniform weighting,
under user-level DP (:meth:`FedAvg.release_spec`). Import them from
:mod:`secrelay.federated.strategies`, which registers them.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from protocols.errors import InvalidParameterError
from secrelay.federated.client import ContributionRule, LocalTrainer, PlainTrainer
from secrelay.federated.release import ReleaseSpec
from secrelay.federated.strategy_base import (
    NovaRule,
    Strategy,
    WeightedDeltaRule,
    Weighting,
    _check_positive,
    _check_unit,
)

__all__ = ["FedAdagrad", "FedAdam", "FedAvg", "FedNova", "FedProx"]


def _mean_delta(sums: Mapping[str, np.ndarray]) -> np.ndarray | None:
    weight = float(np.asarray(sums["weight"]).sum())
    if weight <= 0:
        return None
    return np.asarray(sums["delta"], dtype=np.float64) / weight


class FedAvg(Strategy):
    """FedAvg (McMahan et al. 2017): the weighted mean update, times ``server_lr``.

    ``server_momentum`` β in [0, 1) turns the server step into heavy-ball momentum on
    the mean update Δ (FedAvgM, Hsu et al. 2019; the server optimizer DP-FedAvg
    uses in McMahan et al. 2018): v ← β·v + Δ, w ← w + η·v. Under DP-FTRL, whose
    released Δ's are increments of a noisy prefix sum, this equals DP-FTRLM's momentum
    on the prefix sums (:mod:`secrelay.privacy.correlated_dp`). β = 0 is plain FedAvg.
    """

    name = "fedavg"

    def __init__(
        self,
        *,
        server_lr: float = 1.0,
        weighting: Weighting = "samples",
        server_momentum: float = 0.0,
    ) -> None:
        super().__init__()
        _check_positive("server_lr", server_lr)
        _check_unit("server_momentum", server_momentum)
        if weighting not in ("samples", "uniform"):
            raise InvalidParameterError(
                f"`weighting` must be 'samples' or 'uniform'; got {weighting!r}"
            )
        self.server_lr = float(server_lr)
        self.weighting: Weighting = weighting
        self.server_momentum = float(server_momentum)
        self._server_velocity: dict[str, np.ndarray] = {}

    def contribution_rule(self) -> ContributionRule:
        return WeightedDeltaRule(self.weighting)

    def release_spec(self, clipping_norm: float) -> ReleaseSpec | None:
        """DP-FedAvg (McMahan et al. 2018): the clipped update is noised, the uniform
        weight is replaced by a public participant count. Sample weights are data
        (the device's size) and are not released: ``None`` then."""
        if self.weighting != "uniform":
            return None
        d = int(self.models[self.keys[0]].size)
        return ReleaseSpec(
            noised=(("delta", float(clipping_norm)),),
            public_counts=("weight",),
            shapes=(("delta", (d,)),),
        )

    def apply(self, round: int, sums: Mapping[str, np.ndarray]) -> dict[str, float]:
        mean = _mean_delta(sums)
        if mean is None:
            return {}
        key = self.keys[0]
        step = mean
        if self.server_momentum > 0.0:
            step = self.server_momentum * self._server_velocity.get(key, np.zeros_like(mean)) + mean
            self._server_velocity[key] = step
        self._set(key, self.models[key] + self.server_lr * step)
        return {"update_norm": float(np.linalg.norm(mean))}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self._server_velocity:
            state["server_velocity"] = {k: v.copy() for k, v in self._server_velocity.items()}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._server_velocity = {
            k: np.asarray(v).copy() for k, v in state.get("server_velocity", {}).items()
        }


class FedProx(FedAvg):
    """FedProx (Li et al. 2020): FedAvg with the proximal term μ/2‖w − w_t‖² locally."""

    name = "fedprox"

    def __init__(
        self,
        *,
        mu: float = 0.01,
        server_lr: float = 1.0,
        weighting: Weighting = "samples",
        server_momentum: float = 0.0,
    ) -> None:
        super().__init__(server_lr=server_lr, weighting=weighting, server_momentum=server_momentum)
        _check_positive("mu", mu)
        self.mu = float(mu)

    def trainer(self, trainer: LocalTrainer) -> LocalTrainer:
        if isinstance(trainer, PlainTrainer):
            return dataclasses.replace(
                trainer, config=dataclasses.replace(trainer.config, prox_mu=self.mu)
            )
        if hasattr(trainer, "with_prox_mu"):
            return trainer.with_prox_mu(self.mu)  # type: ignore[no-any-return]
        raise InvalidParameterError(
            f"FedProx cannot set the proximal term on a {type(trainer).__name__}"
        )


class _FedOpt(FedAvg):
    """Adaptive server optimizers of Reddi et al. 2021 ("Adaptive Federated
    Optimization"): the mean update Δ is a pseudo-gradient;
    m ← β1·m + (1−β1)·Δ, v ← update(v, Δ²), w ← w + η·m/(√v + τ)."""

    def __init__(
        self,
        *,
        server_lr: float = 1e-2,
        beta1: float = 0.0,
        beta2: float = 0.99,
        tau: float = 1e-3,
        weighting: Weighting = "samples",
    ) -> None:
        super().__init__(server_lr=server_lr, weighting=weighting)
        _check_unit("beta1", beta1)
        _check_unit("beta2", beta2)
        _check_positive("tau", tau)
        self.beta1, self.beta2, self.tau = float(beta1), float(beta2), float(tau)
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    @abc.abstractmethod
    def _second_moment(self, v: np.ndarray, g2: np.ndarray) -> np.ndarray: ...

    def apply(self, round: int, sums: Mapping[str, np.ndarray]) -> dict[str, float]:
        mean = _mean_delta(sums)
        if mean is None:
            return {}
        key = self.keys[0]
        m = self.m.get(key, np.zeros_like(mean))
        v = self.v.get(key, np.zeros_like(mean))
        m = self.beta1 * m + (1 - self.beta1) * mean
        v = self._second_moment(v, mean**2)
        self.m[key], self.v[key] = m, v
        step = self.server_lr * m / (np.sqrt(v) + self.tau)
        self._set(key, self.models[key] + step)
        return {"update_norm": float(np.linalg.norm(step))}

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "m": {k: v.copy() for k, v in self.m.items()},
            "v": {k: v.copy() for k, v in self.v.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.m = {k: np.asarray(v).copy() for k, v in state.get("m", {}).items()}
        self.v = {k: np.asarray(v).copy() for k, v in state.get("v", {}).items()}


class FedAdagrad(_FedOpt):
    """FedAdagrad: v ← v + Δ²."""

    name = "fedadagrad"

    def _second_moment(self, v: np.ndarray, g2: np.ndarray) -> np.ndarray:
        out: np.ndarray = v + g2
        return out


class FedAdam(_FedOpt):
    """FedAdam: v ← β2·v + (1−β2)·Δ² (β1 defaults to 0.9)."""

    name = "fedadam"

    def __init__(
        self,
        *,
        server_lr: float = 1e-2,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        weighting: Weighting = "samples",
    ) -> None:
        super().__init__(
            server_lr=server_lr, beta1=beta1, beta2=beta2, tau=tau, weighting=weighting
        )

    def _second_moment(self, v: np.ndarray, g2: np.ndarray) -> np.ndarray:
        return self.beta2 * v + (1 - self.beta2) * g2


class FedNova(FedAvg):
    """FedNova (Wang et al. 2020): Δ = τ_eff · Σ p_k Δ_k/a_k with τ_eff = Σ p_k a_k,
    p_k = w_k/Σw, removing the objective inconsistency of unequal local step counts."""

    name = "fednova"

    def contribution_rule(self) -> ContributionRule:
        return NovaRule(self.weighting)

    def release_spec(self, clipping_norm: float) -> ReleaseSpec | None:
        """``None``: FedNova's ``tau`` (local step counts) has no user-level DP release."""
        return None

    def apply(self, round: int, sums: Mapping[str, np.ndarray]) -> dict[str, float]:
        weight = float(np.asarray(sums["weight"]).sum())
        if weight <= 0:
            return {}
        tau_eff = float(np.asarray(sums["tau"]).sum()) / weight
        update = tau_eff * np.asarray(sums["delta"], dtype=np.float64) / weight
        key = self.keys[0]
        self._set(key, self.models[key] + self.server_lr * update)
        return {"update_norm": float(np.linalg.norm(update)), "tau_eff": tau_eff}
