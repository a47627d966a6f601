"""Server-side aggregation strategies, all expressed through named sums.

Every strategy here only needs *sums* of per-device contributions, so any
:class:`~secrelay.federated.aggregation.SumProtocol` (plaintext or secure
aggregation) can deliver its input, and a privacy wrapper can clip contributions
on the device and noise the sums on the server without the strategy knowing.

=================  ==========================================  =====================
strategy           device contributes                          server update
=================  ==========================================  =====================
FedAvg / FedProx   ``delta`` = w_k·Δ_k, ``weight`` = w_k       w += η·Σdelta/Σweight
FedAdagrad/FedAdam same                                        Reddi et al. 2021
FedNova            n_k·Δ_k/a_k, n_k·a_k, n_k                   Wang et al. 2020
Clustered          the above in the slot of the device's key   one FedAvg per key
Standalone         nothing                                     none (personal models)
=================  ==========================================  =====================

(w_k = n_k, the device's train size, for sample weighting, or 1 for uniform.)

The strategies live by family — the interface and contribution rules in
:mod:`~secrelay.federated.strategy_base`, the single-model FedAvg family in
:mod:`~secrelay.federated.fedavg_family`, the cluster-keyed and standalone ones in
:mod:`~secrelay.federated.clustered` — and this module gathers them: it is the
import path for every public name, and it holds the registry the runner builds
strategies from (:func:`make_strategy`), with the built-ins registered.
"""

from __future__ import annotations

from typing import Any

from protocols.errors import InvalidParameterError
from protocols.registry import Registry
from secrelay.federated.clustered import ClusteredStrategy, StandaloneStrategy, round_count
from secrelay.federated.fedavg_family import FedAdagrad, FedAdam, FedAvg, FedNova, FedProx
from secrelay.federated.strategy_base import (
    NovaRule,
    SlotRule,
    Strategy,
    WeightedDeltaRule,
    Weighting,
)

__all__ = [
    "STRATEGY_REGISTRY",
    "ClusteredStrategy",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedNova",
    "FedProx",
    "NovaRule",
    "SlotRule",
    "StandaloneStrategy",
    "Strategy",
    "WeightedDeltaRule",
    "Weighting",
    "make_strategy",
    "register_strategy",
    "round_count",
]


STRATEGY_REGISTRY: Registry[type[Strategy]] = Registry("strategy")


def register_strategy(cls: type[Strategy], *, force: bool = False) -> type[Strategy]:
    """Add a strategy class under its ``name``; refuses to replace one unless ``force``."""
    return STRATEGY_REGISTRY.register(cls.name, cls, force=force)


for _cls in (
    FedAvg,
    FedProx,
    FedAdagrad,
    FedAdam,
    FedNova,
    ClusteredStrategy,
    StandaloneStrategy,
):
    register_strategy(_cls)


def make_strategy(name: str, **params: Any) -> Strategy:
    """Build the registered strategy ``name`` with keyword ``params``."""
    cls = STRATEGY_REGISTRY.get(name)
    try:
        return cls(**params)
    except TypeError as e:
        raise InvalidParameterError(f"strategy {name!r}: {e}") from None
