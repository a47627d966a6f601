"""RelayRec's collaboration strategies: how the K models learn from the devices.

``method.options.collaboration`` picks one (:func:`_make_strategy`):
``clustered_fedprox`` / ``clustered_fedavg`` aggregate each model over the devices
that chose it (:class:`~secrelay.federated.strategies.ClusteredStrategy`, RelayRec's
Algorithm 3); ``fedprox`` / ``fedavg`` average every device's update into all K
models (:class:`SharedUpdateStrategy`, the paper's ablation); ``standalone`` never
aggregates (:class:`~secrelay.federated.strategies.StandaloneStrategy`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from protocols.errors import InvalidParameterError
from secrelay.federated.strategies import (
    ClusteredStrategy,
    FedAvg,
    FedProx,
    StandaloneStrategy,
    Strategy,
)
from secrelay.relay.relayrec.options import RelayRecOptions

__all__ = ["SharedUpdateStrategy"]


class SharedUpdateStrategy(FedAvg):
    """The ``fedavg`` / ``fedprox`` collaboration ablation with K initial models:
    every device trains from its chosen model, the server averages *all* devices'
    updates (sample-weighted, or uniform) and applies the mean to every model. With one
    initial model (or K identical ones) this is plain FedAvg / FedProx."""

    name = "relayrec_shared"

    def __init__(
        self,
        *,
        mu: float = 0.0,
        server_lr: float = 1.0,
        weighting: Literal["samples", "uniform"] = "samples",
    ) -> None:
        super().__init__(server_lr=server_lr, weighting=weighting)
        if mu < 0:
            raise InvalidParameterError(f"`mu` must be >= 0; got {mu!r}")
        self.mu = float(mu)

    def trainer(self, trainer: Any) -> Any:
        return FedProx(mu=self.mu).trainer(trainer) if self.mu > 0 else trainer

    def apply(self, round: int, sums: Mapping[str, np.ndarray]) -> dict[str, float]:
        weight = float(np.asarray(sums["weight"]).sum())
        if weight <= 0:
            return {}
        mean = np.asarray(sums["delta"], dtype=np.float64) / weight
        for key in self.keys:
            self._set(key, self.models[key] + self.server_lr * mean)
        return {"update_norm": float(np.linalg.norm(mean))}


def _make_strategy(opts: RelayRecOptions, *, uniform: bool = False) -> Strategy:
    """The collaboration strategy; ``uniform`` (user-level DP) weights each device 1."""
    c = opts.collaboration
    weighting: Literal["samples", "uniform"] = "uniform" if uniform else "samples"
    share = opts.dp_count_share
    if c in ("clustered_fedprox", "clustered_fedavg"):
        return ClusteredStrategy(
            mu=opts.mu if c == "clustered_fedprox" else 0.0,
            weighting=weighting,
            count_share=share,
            server_optimizer=opts.server_optimizer,
            server_lr=opts.effective_server_lr,
            tau=opts.server_tau,
            server_momentum=opts.server_momentum,
        )
    if c == "fedprox":
        return SharedUpdateStrategy(mu=opts.mu, weighting=weighting)
    if c == "fedavg":
        return SharedUpdateStrategy(mu=0.0, weighting=weighting)
    return StandaloneStrategy()
