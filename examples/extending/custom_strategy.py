"""Extension point: a federated strategy.

FedAvgM (Hsu et al. 2019) — FedAvg with server momentum — as a ``Strategy``
subclass. It inherits FedAvg's ``release_spec`` (the clipped ``delta`` noised, the
uniform ``weight`` a public count), so user-level DP composes around it with no
privacy code here: the privacy plan wraps its sums when the loop is built.

Run: ``python examples/extending/custom_strategy.py``
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

import secrelay
from secrelay.federated.strategies import FedAvg

try:  # run as a script or imported by the tests
    from _tiny import TINY
except ImportError:  # pragma: no cover
    from examples.extending._tiny import TINY


class FedAvgM(FedAvg):
    """FedAvg whose server step is ``v ← β·v + mean Δ; w ← w + lr·v``."""

    name = "fedavgm"

    def __init__(self, *, momentum: float = 0.9, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        if not 0 <= momentum < 1:
            raise secrelay.InvalidParameterError(f"`momentum` must be in [0, 1); got {momentum}")
        self.momentum = float(momentum)
        self.velocity: np.ndarray | None = None

    def apply(self, round: int, sums: Mapping[str, np.ndarray]) -> dict[str, float]:
        weight = float(np.asarray(sums["weight"]).sum())
        if weight <= 0:
            return {}
        mean = np.asarray(sums["delta"], dtype=np.float64) / weight
        self.velocity = mean if self.velocity is None else self.momentum * self.velocity + mean
        key = self.keys[0]
        self._set(key, self.models[key] + self.server_lr * self.velocity)
        return {"update_norm": float(np.linalg.norm(self.velocity))}


def main() -> dict[str, float]:
    result = secrelay.simulate(
        "federated",
        strategy=FedAvgM,  # a class is registered under its name ("fedavgm") on first use
        strategy_params={"momentum": 0.5, "weighting": "uniform"},
        privacy={"user_level_dp": True, "clipping_norm": 0.5, "noise_multiplier": 1.0},
        federated={"rounds": 3, "sampling": "poisson", "sample_rate": 0.3},
        **TINY,
    )
    final = result.final["final"]
    print(f"FedAvgM under user-level DP: gAUC {final['gauc']:.4f} after 3 rounds")
    return final


if __name__ == "__main__":
    main()
