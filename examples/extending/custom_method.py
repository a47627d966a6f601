"""Extension point: a method.

"Cold start" federated learning — devices train from a randomly initialised model
instead of the cloud's — as a ``LoopMethod``: the method chooses the strategy,
the initial model and the device program; ``build_loop`` composes the run's
privacy plan (DP-SGD, clipping, the user-level DP sum, SecAgg+) around them, and
the runner does data, ledger, checkpoints and resume. The method never imports
the runner and needs no registration to run (``secrelay.register_method`` would
make it available by name in TOML configs).

Run: ``python examples/extending/custom_method.py``
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import secrelay
from secrelay.config import RunConfig
from secrelay.federated.client import PlainTrainer, flat_parameters
from secrelay.federated.strategies import make_strategy
from secrelay.methods import make_train_config
from secrelay.metrics import Metrics

try:
    from _tiny import TINY
except ImportError:  # pragma: no cover
    from examples.extending._tiny import TINY


class ColdStart(secrelay.LoopMethod):
    """Federated learning from a random model (no cloud phase)."""

    name = "cold_start"

    @classmethod
    def privacy_problems(cls, config: RunConfig) -> list[str]:
        # Stated before any data is loaded; the runner reports all problems at once.
        problems = super().privacy_problems(config)
        if config.privacy.user_level_dp and config.strategy.name != "fedavg":
            problems.append("method 'cold_start' supports user-level DP with strategy 'fedavg'")
        return problems

    def setup(self) -> None:
        cfg = self.ctx.config
        self.strategy = make_strategy(cfg.strategy.name, **cfg.strategy.params)
        model = self.ctx.model_spec.build()  # random initialisation, seeded by run.seed
        self.strategy.initialize({"global": flat_parameters(model)})
        self._build()

    def _build(self) -> None:
        program = self.strategy.client_program(
            self.ctx.model_spec, PlainTrainer(make_train_config(self.ctx.config.local))
        )
        self.loop = self.build_loop(
            self.strategy, program, config=self.round_config(), rounds=self.num_rounds()
        )

    def num_rounds(self) -> int:
        return self.ctx.config.federated.rounds

    def run_round(self, round: int) -> dict[str, Any]:
        return self.run_loop_round(round, evaluate=round == self.num_rounds()).as_dict()

    def evaluate(self) -> Metrics:
        return self.loop.evaluate()

    def state_dict(self) -> dict[str, Any]:
        return {"loop": self.loop.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        cfg = self.ctx.config
        self.strategy = make_strategy(cfg.strategy.name, **cfg.strategy.params)
        self.strategy.initialize(state["loop"]["strategy"]["models"])
        self._build()
        self.loop.load_state_dict(state["loop"])


def main() -> dict[str, float]:
    result = secrelay.simulate(
        ColdStart,
        strategy="fedavg",
        strategy_params={"weighting": "uniform"},
        privacy={
            "secure_aggregation": True,
            "user_level_dp": True,
            "clipping_norm": 0.5,
            "noise_multiplier": 1.0,
        },
        federated={"rounds": 2, "clients_per_round": 6},
        **TINY,
    )
    final = result.final["final"]
    print(f"cold start under SecAgg+ and distributed DP: gAUC {final['gauc']:.4f}")
    return final


if __name__ == "__main__":
    main()
