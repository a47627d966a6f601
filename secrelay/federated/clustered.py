"""Strategies that keep more than one model: one per cluster key, or one per device.

:class:`ClusteredStrategy` runs one FedAvg (or FedProx) per model key, each device
contributing into the slot of the key it chose (so a secure sum hides the choice);
:class:`StandaloneStrategy` does not collaborate at all and leaves each device its
own model. Import them from :mod:`secrelay.federated.strategies`, which registers
them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from protocols.errors import InvalidParameterError
from secrelay.federated.client import (
    ClientProgram,
    ContributionRule,
    DeviceTask,
    KeySelector,
    LocalResult,
    LocalTrainer,
    LocalTrainingProgram,
    ModelSpec,
    PersonalizedProgram,
    UpdateTransform,
)
from secrelay.federated.fedavg_family import FedProx
from secrelay.federated.release import ReleaseSpec
from secrelay.federated.strategy_base import (
    SlotRule,
    Strategy,
    Weighting,
    _check_positive,
    _check_unit,
)

__all__ = ["ClusteredStrategy", "StandaloneStrategy", "round_count"]


class ClusteredStrategy(Strategy):
    """One FedAvg (or FedProx, with ``mu`` > 0) per model key; devices choose their
    key on the device (e.g. a RelayRec selector or a cloud-assigned group) and
    contribute into that key's slot only — clusters never mix.

    ``server_optimizer = "adagrad"`` makes each key's server step FedAdagrad's
    (Reddi et al. 2021): the key's mean update Δ is a pseudo-gradient,
    v ← v + Δ², w ← w + η·Δ/(√v + τ), with one v per key, advanced only in rounds
    where the key is updated. ``server_momentum`` β > 0 (SGD only) makes it heavy-ball
    momentum per key, m ← β·m + Δ, w ← w + η·m (DP-FedAvgM, McMahan et al. 2018): under
    DP the noise of successive releases is averaged; η = 1 − β keeps the long-run step
    of a constant Δ equal to FedAvg's."""

    name = "clustered"

    def __init__(
        self,
        *,
        mu: float = 0.0,
        server_lr: float = 1.0,
        weighting: Weighting = "samples",
        count_share: float = 0.25,
        server_optimizer: Literal["sgd", "adagrad"] = "sgd",
        tau: float = 1e-3,
        server_momentum: float = 0.0,
    ) -> None:
        super().__init__()
        _check_positive("server_lr", server_lr)
        _check_positive("tau", tau)
        _check_unit("server_momentum", server_momentum)
        if mu < 0:
            raise InvalidParameterError(f"`mu` must be >= 0; got {mu!r}")
        if not (isinstance(count_share, (int, float)) and 0 < count_share <= 1):
            raise InvalidParameterError(f"`count_share` must be in (0, 1]; got {count_share!r}")
        if server_optimizer not in ("sgd", "adagrad"):
            raise InvalidParameterError(
                f"`server_optimizer` must be 'sgd' or 'adagrad'; got {server_optimizer!r}"
            )
        if server_momentum > 0 and server_optimizer != "sgd":
            raise InvalidParameterError(
                "`server_momentum` applies to the 'sgd' server step only; "
                f"got server_optimizer = {server_optimizer!r}"
            )
        self.server_optimizer = server_optimizer
        self.tau = float(tau)
        self.server_momentum = float(server_momentum)
        self.v: dict[str, np.ndarray] = {}  # Adagrad's accumulator, or the momentum
        self.mu = float(mu)
        self.server_lr = float(server_lr)
        self.weighting: Weighting = weighting
        self.count_share = float(count_share)
        # A key's model is updated only when its (possibly noisy) device count
        # reaches this; 0.5 = at least one device after rounding (set_release_noise).
        self.min_count = 0.5

    def contribution_rule(self) -> ContributionRule:
        return SlotRule(self.keys, self.weighting)

    def release_spec(self, clipping_norm: float) -> ReleaseSpec | None:
        """Cluster-keyed DP-FedAvg. A device's ``delta`` (K, d) is its clipped update in
        one slot and zeros elsewhere (L2 norm <= C); its ``count`` (K,) is one-hot (norm
        1). Both are noised — which cluster a device chose is data (its preference
        vector), so per-key counts cannot be public — and the uniform ``weight`` is a
        copy of the noisy count. The counts take share ``count_share`` w of the
        sensitivity C·√(1 + w²). ``None`` for sample weighting."""
        if self.weighting != "uniform":
            return None
        k, d = len(self.keys), int(self.models[self.keys[0]].size)
        return ReleaseSpec(
            noised=(("delta", float(clipping_norm)), ("count", 1.0)),
            copies=(("weight", "count"),),
            shapes=(("delta", (k, d)), ("count", (k,))),
            weights=(("count", self.count_share),),
        )

    def set_release_noise(self, noise_std: Mapping[str, float]) -> None:
        """Update a key only if its noisy count is at least 3 noise standard deviations
        (and 0.5): dividing the noisy update sum of a (nearly) empty cluster by a
        noisy count near 0 would throw that cluster's model away."""
        if "count" in noise_std:
            self.min_count = max(0.5, 3.0 * float(noise_std["count"]))

    def trainer(self, trainer: LocalTrainer) -> LocalTrainer:
        if self.mu > 0:
            return FedProx(mu=self.mu).trainer(trainer)
        return trainer

    def apply(self, round: int, sums: Mapping[str, np.ndarray]) -> dict[str, float]:
        delta = np.asarray(sums["delta"], dtype=np.float64)
        weight = np.asarray(sums["weight"], dtype=np.float64)
        count = np.asarray(sums["count"], dtype=np.float64)
        stats: dict[str, float] = {}
        for i, key in enumerate(self.keys):
            n_devices = round_count(count[i])
            stats[f"count/{key}"] = float(n_devices)
            # Under secure aggregation an empty slot sums to quantisation noise, not
            # exactly zero: decide emptiness on the (integer) device count, never on
            # the noisy weight, or an empty cluster's model would be divided by ~0.
            # Under user-level DP the count itself is noisy: min_count is 3 σ.
            if count[i] < self.min_count or weight[i] <= 0:  # min_count >= 0.5: none
                continue
            mean = delta[i] / weight[i]
            if self.server_optimizer == "adagrad":
                v = self.v.get(key, np.zeros_like(mean)) + mean**2
                self.v[key] = v
                step = self.server_lr * mean / (np.sqrt(v) + self.tau)
            elif self.server_momentum > 0:
                m = self.server_momentum * self.v.get(key, np.zeros_like(mean)) + mean
                self.v[key] = m
                step = self.server_lr * m
            else:
                step = self.server_lr * mean
            self._set(key, self.models[key] + step)
        return stats

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "v": {k: v.copy() for k, v in self.v.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.v = {k: np.asarray(v).copy() for k, v in state.get("v", {}).items()}


def round_count(x: float) -> int:
    """A device count recovered from a (possibly quantised) sum."""
    return int(np.rint(x))


class StandaloneStrategy(Strategy):
    """No collaboration: every device trains its own copy of the start model and
    keeps it; nothing is uploaded."""

    name = "standalone"
    personalized = True

    def contribution_rule(self) -> ContributionRule:
        return _NoContribution()

    def client_program(
        self,
        model: ModelSpec,
        trainer: LocalTrainer,
        *,
        selector: KeySelector | None = None,
        transforms: Sequence[UpdateTransform] = (),
    ) -> ClientProgram:
        inner = super().client_program(model, trainer, selector=selector, transforms=transforms)
        assert isinstance(inner, LocalTrainingProgram)
        return PersonalizedProgram(inner)

    def apply(self, round: int, sums: Mapping[str, np.ndarray]) -> dict[str, float]:
        return {}


@dataclass(frozen=True)
class _NoContribution(ContributionRule):
    def contribute(self, result: LocalResult, task: DeviceTask) -> dict[str, np.ndarray]:
        return {}
