"""Plain federated learning from the cloud-trained model (``method.name = "federated"``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from protocols.errors import InvalidParameterError
from secrelay.config import RunConfig
from secrelay.federated.client import PlainTrainer, load_flat_parameters
from secrelay.federated.strategies import make_strategy
from secrelay.methods.cloud import make_train_config, train_cloud_model
from secrelay.methods.loop import LoopMethod
from secrelay.metrics import Metrics
from secrelay.privacy.plan import PrivacyPlan
from secrelay.training import evaluate_model

__all__ = ["FederatedMethod"]


class FederatedMethod(LoopMethod):
    """Plain federated learning starting from the cloud-trained model.

    ``strategy.name`` picks FedAvg, FedProx, FedAdagrad, FedAdam, FedNova or
    Standalone (each device fine-tunes the cloud model alone, once), or any strategy
    registered with :func:`~secrelay.federated.strategies.register_strategy`. Under
    ``privacy.user_level_dp`` the strategy must state a ``release_spec`` covering its
    sums (the FedAvg family with ``weighting = "uniform"`` does).
    """

    name = "federated"

    @classmethod
    def privacy_problems(cls, config: RunConfig) -> list[str]:
        return [*super().privacy_problems(config), *cls.strategy_problems(config)]

    @classmethod
    def strategy_problems(cls, config: RunConfig) -> list[str]:
        """Why ``[strategy]`` cannot run under ``[privacy]``: under user-level DP, the
        configured strategy must state a release covering its sums. Probed on a
        one-coordinate model (whether it has one does not depend on the model's size)."""
        if not config.privacy.user_level_dp:
            return []
        try:
            strategy = make_strategy(config.strategy.name, **config.strategy.params)
            strategy.initialize({"global": np.zeros(1, np.float32)})
        except InvalidParameterError as exc:
            return [str(exc)]
        return PrivacyPlan.from_config(config).strategy_problems(strategy)

    def setup(self) -> None:
        cfg = self.ctx.config
        self.strategy = make_strategy(cfg.strategy.name, **cfg.strategy.params)
        cloud_vec = train_cloud_model(
            self.ctx.model_spec,
            self.ctx.data.cloud,
            make_train_config(cfg.cloud),
            seed=self.ctx.seed,
        )
        self.strategy.initialize({"global": cloud_vec})
        self._build()

    def _build(self) -> None:
        personal = self.strategy.personalized
        rc = self.round_config(
            clients_per_round=(
                len(self.ctx.data.devices)
                if personal
                else self.ctx.config.federated.clients_per_round
            ),
            sampling="fixed" if personal else self.ctx.config.federated.sampling,
        )
        program = self.strategy.client_program(
            self.ctx.model_spec, PlainTrainer(self.local_train_config())
        )
        self.loop = self.build_loop(self.strategy, program, config=rc, rounds=self.num_rounds())

    def num_rounds(self) -> int:
        return 1 if self.strategy.personalized else self.ctx.config.federated.rounds

    def run_round(self, round: int) -> dict[str, Any]:
        last = round == self.num_rounds()
        return self.run_loop_round(round, evaluate=True if last else None).as_dict()

    def evaluate(self) -> Metrics:
        if self.strategy.personalized and not self.loop.personal_predictions:
            # Before any round: every device still holds the cloud model.
            model = self.ctx.model_spec.build()
            load_flat_parameters(model, self.strategy.models["global"])
            return evaluate_model(model, self.ctx.data.device_test)
        return self.loop.evaluate()

    def state_dict(self) -> dict[str, Any]:
        return {"loop": self.loop.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        cfg = self.ctx.config
        self.strategy = make_strategy(cfg.strategy.name, **cfg.strategy.params)
        self.strategy.initialize(state["loop"]["strategy"]["models"])
        self._build()
        self.loop.load_state_dict(state["loop"])
